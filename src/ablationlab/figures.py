"""Stage ``figures``: every plot of the report, drawn from the run files (matplotlib, Agg).

:func:`figures` draws the files :func:`ablationlab.figure_plan.plan` lists into ``out_dir`` and
writes ``figures.json``, the manifest the report reads::

    {"best_experiment": id, "dataset": str, "classes": [...],
     "figures": [{"file", "group", "kind", "caption", "experiments": [ids], "width_in"}]}

Per group: ``curves`` (train/val loss and accuracy per epoch: mean over seeds, band =
min–max over seeds), ``test_acc`` (mean test accuracy with 95 % t-interval, seeds as
dots), ``forest`` (Δ test accuracy vs the reference with its CI, coloured by verdict,
Holm p-value at the side), ``sweep`` (test accuracy over the swept value; log x for learning rates and
wide positive ranges), ``early_stopping`` (monitored curve, stop and best epoch of each
seed over the full-length run), ``augment`` (each new augmentation on the same train
images). For the baseline: ``curves``, ``params`` (a CSV table: per-layer parameters
and formula), ``filters`` (first conv layer before/after training) and ``activations``
(first conv layer's maps for test image 0). For the study: ``comparison`` (every
experiment ranked), and for the best experiment ``filters``, ``confusion`` (summed over
seeds, row-normalised colours) and ``misclassified`` (first seed's sample).
"""

from __future__ import annotations

import argparse
import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ablationlab import defaults, io, layout
from ablationlab.figure_plan import FigureError, by_id, caption_file, groups, new_augmentations, plan
from ablationlab.formats import diverged, missing, pct, percent, pvalue, value_text
from ablationlab.keypath import lookup

if TYPE_CHECKING:  # imported lazily: the command line imports this module for --help too
    import pandas as pd
    import torch

# matplotlib, pandas, torch and the model/augmentation/data modules are imported where they are used.


@functools.cache
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


DPI = 160
WIDTH = 6.4  # inches: the A4 text width at 2 cm margins is 6.7 in
STYLE = {
    "font.size": 8,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.05,
    "image.interpolation": "nearest",
}
REFERENCE_COLOR = "0.25"
DIVERGED_COLOR = "#c0392b"


# --------------------------------------------------------------------------- inputs


class _Runs:
    """Lazy, cached access to the run files of a study."""

    def __init__(self, study: dict[str, Any], runs_dir: Path):
        self.study, self.runs_dir = study, Path(runs_dir)

    def seeds(self, exp_id: str) -> list[int]:
        """The experiment's seeds (its own with adaptive seeding, else the study's)."""
        from ablationlab.summarize import experiment_seeds

        return experiment_seeds(self.study, next(e for e in self.study["experiments"] if e["id"] == exp_id))

    def dir(self, exp_id: str, seed: int) -> Path:
        return layout.run_dir(self.runs_dir, exp_id, seed)

    def histories(self, exp_id: str) -> list[pd.DataFrame]:
        import pandas as pd

        out = []
        for seed in self.seeds(exp_id):
            path = self.dir(exp_id, seed) / "history.csv"
            if path.exists():
                frame = pd.read_csv(path).replace([np.inf, -np.inf], np.nan)
                if len(frame):
                    out.append(frame)
        return out

    def train_json(self, exp_id: str) -> list[dict[str, Any]]:
        out = []
        for seed in self.seeds(exp_id):
            path = self.dir(exp_id, seed) / "train.json"
            if path.exists():
                out.append({"seed": seed, **io.read_json(path)})
        return out

    def first_run_with(self, exp_id: str, *names: str) -> tuple[int, Path]:
        """(seed, folder) of the experiment's first run that has every file in ``names``."""
        for seed in self.seeds(exp_id):
            d = self.dir(exp_id, seed)
            if all((d / n).exists() for n in names):
                return seed, d
        raise FigureError(f"{self.runs_dir}: no run of {exp_id!r} has {' and '.join(names)}")


def _label(text: Any) -> str:
    """Text safe for matplotlib (no mathtext from user-chosen names)."""
    return str(text).replace("$", r"\$")


def _variant_label(exp: dict[str, Any]) -> str:
    sweep = exp.get("sweep")
    if sweep:
        return f"{sweep['key'].split('.')[-1]}={value_text(sweep['value'])}"
    return exp["variant"]


@functools.cache
def _caption_template(kind: str):
    """(template, the names of the values it reads) of a figure kind's caption."""
    import jinja2
    import jinja2.meta

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    source = caption_file(kind).read_text(encoding="utf-8")
    return env.from_string(source), frozenset(jinja2.meta.find_undeclared_variables(env.parse(source)))


def figure_caption(kind: str, **values: Any) -> str:
    """The caption of a ``kind`` figure: its template (:func:`ablationlab.figure_plan.caption_file`)
    rendered with every value it reads (those Snakemake's report renders it without)."""
    template, names = _caption_template(kind)
    if set(values) != names:
        raise ValueError(f"caption {kind!r} reads {sorted(names)}, given {sorted(values)}")
    return template.render(**values)


def _save(fig, path: Path) -> None:
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    _plt().close(fig)


def _colors(n: int) -> list:
    cmap = _plt().get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


# --------------------------------------------------------------------------- drawing


def _mean_band(frames: list[pd.DataFrame], column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Epochs, mean, min and max of ``column`` over seeds (seeds that reached each epoch)."""
    import pandas as pd

    table = pd.concat([f.set_index("epoch")[column].rename(i) for i, f in enumerate(frames)], axis=1)
    table = table.sort_index()
    return (
        table.index.to_numpy(),
        table.mean(axis=1).to_numpy(),
        table.min(axis=1).to_numpy(),
        table.max(axis=1).to_numpy(),
    )


def draw_curves(series: list[dict[str, Any]]):
    """Loss and accuracy per epoch. ``series``: dicts with ``label``, ``histories`` (one frame per seed),
    ``reference`` and ``diverged`` (bool)."""
    fig, axes = _plt().subplots(1, 2, figsize=(WIDTH, 2.7))
    colors = _colors(len(series))
    tops = {True: [], False: []}
    for s, color in zip(series, colors):
        frames = s["histories"]
        if not frames:
            continue
        color = REFERENCE_COLOR if s["reference"] else color
        for ax, metric, scale in ((axes[0], "loss", 1.0), (axes[1], "acc", 100.0)):
            for split, style in (("train", "--"), ("val", "-")):
                epochs, mean, low, high = _mean_band(frames, f"{split}_{metric}")
                ax.plot(
                    epochs,
                    mean * scale,
                    style,
                    color=color,
                    lw=1.2,
                    marker="o" if len(epochs) <= 3 else None,
                    ms=3,
                    label=f"{_label(s['label'])} ({split})" if metric == "loss" else None,
                )
                if len(frames) > 1:
                    ax.fill_between(epochs, low * scale, high * scale, color=color, alpha=0.15, lw=0)
                if metric == "loss" and np.isfinite(high).any():
                    tops[bool(s["diverged"])].append(float(np.nanmax(high)))
    if tops[True] and tops[False] and max(tops[True]) > 1.2 * max(tops[False]):
        axes[0].set_ylim(0, 1.2 * max(tops[False]))  # a diverging run must not flatten the others
    axes[0].set(xlabel="epoch", ylabel="loss", title="Loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes[0].get_legend_handles_labels()
    ncol = 2 if len(labels) <= 4 else 4
    rows = math.ceil(len(labels) / ncol)
    fig.set_figheight(2.7 + 0.16 * rows)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
    fig.tight_layout(rect=(0, (0.06 + 0.16 * rows) / fig.get_figheight(), 1, 1))
    return fig


def _points(
    ax,
    rows: pd.DataFrame,
    per_seed: dict[str, list[float]],
    labels: dict[str, str],
    reference: str | None,
    colors: dict[str, Any] | None = None,
) -> None:
    """Horizontal point chart: mean ± 95 % CI per experiment, seeds as dots (top = first row)."""
    n = len(rows)
    for i, (_, row) in enumerate(rows.iterrows()):
        y = n - 1 - i
        color = DIVERGED_COLOR if diverged(row) else (colors or {}).get(row["experiment"], "C0")
        if row["experiment"] == reference:
            color = REFERENCE_COLOR
        mean = row["test_acc_mean"] * 100
        if not np.isnan(row["test_acc_ci_low"]):
            ax.errorbar(
                mean,
                y,
                xerr=[[mean - row["test_acc_ci_low"] * 100], [row["test_acc_ci_high"] * 100 - mean]],
                fmt="o",
                color=color,
                ms=5,
                capsize=3,
                lw=1.2,
                zorder=3,
            )
        else:
            ax.plot(mean, y, "o", color=color, ms=5, zorder=3)
        seeds = per_seed.get(row["experiment"], [])
        ax.plot(np.asarray(seeds) * 100, [y] * len(seeds), "o", mfc="none", mec=color, ms=3.5, alpha=0.8, zorder=2)
        if diverged(row):
            ax.annotate(
                _label(row["status"]),
                (mean, y),
                xytext=(6, 4),
                textcoords="offset points",
                color=DIVERGED_COLOR,
                fontsize=7,
            )
    if reference is not None and reference in set(rows["experiment"]):
        ref = rows.loc[rows["experiment"] == reference, "test_acc_mean"].iloc[0] * 100
        ax.axvline(ref, color=REFERENCE_COLOR, ls=":", lw=1)
    values = [v for r in rows.itertuples() for v in (r.test_acc_mean, r.test_acc_ci_low, r.test_acc_ci_high)]
    values += [v for e in rows["experiment"] for v in per_seed.get(e, [])]
    ax.set_xlim(*_acc_limits(values))
    ax.set_yticks(range(n))
    ax.set_yticklabels([_label(labels[e]) for e in rows["experiment"]][::-1])
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("test accuracy (%)")
    ax.grid(axis="y", visible=False)


def _acc_limits(values: list[float]) -> tuple[float, float]:
    """Axis limits (percent) around accuracies (fractions), never beyond 0–100 % (a wide t-interval of
    two seeds may be; its bar is then cut at the edge)."""
    finite = [v * 100 for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return 0.0, 100.0
    lo, hi = max(min(finite), 0.0), min(max(finite), 100.0)
    pad = max(1.0, 0.06 * (hi - lo))
    return max(lo - pad, -1.0), min(hi + pad, 101.0)


def draw_test_acc(rows: pd.DataFrame, per_seed: dict[str, list[float]], labels: dict[str, str], reference: str | None):
    fig, ax = _plt().subplots(figsize=(WIDTH, 0.9 + 0.3 * len(rows)))
    _points(ax, rows, per_seed, labels, reference)
    fig.tight_layout()
    return fig


VERDICT_COLORS = {"significant": "#1e7b34", "no_effect": "0.45", "undecided": "#d68910", "": "0.65"}


def _verdict_note(row: pd.Series) -> str:
    """The right-hand annotation of a forest row: Holm p and verdict."""
    if diverged(row):
        return _label(row["status"])
    verdict = row.get("verdict")
    text = "" if missing(verdict) else str(verdict).replace("_", " ")
    return f"Holm p {pvalue(row.get('p_value_holm'))}" + (f" · {text}" if text else "")


def draw_forest(rows: pd.DataFrame, labels: dict[str, str], min_effect: float | None = None):
    """Δ test accuracy (pp) vs the reference with its confidence interval, one row per experiment (top =
    first), colour = verdict (red: diverged, drawn at the edge when far outside, so that it does not
    flatten the others), a band of ± ``min_effect`` around 0; Holm p and verdict at the right. Rows
    without a Δ say "no test"."""
    n = len(rows)
    fig, ax = _plt().subplots(figsize=(WIDTH, 0.9 + 0.32 * n))
    shown, outliers = [0.0, *([-min_effect * 100, min_effect * 100] if min_effect else [])], []
    for i, (_, row) in enumerate(rows.iterrows()):
        y, delta = n - 1 - i, row.get("delta_acc")
        if missing(delta):
            continue
        if diverged(row):
            outliers.append((y, delta * 100))
            continue
        color = VERDICT_COLORS.get(str(row.get("verdict") or ""), "0.65")
        low, high = row.get("delta_ci_low"), row.get("delta_ci_high")
        if not (missing(low) or missing(high)):
            ax.errorbar(
                delta * 100,
                y,
                xerr=[[(delta - low) * 100], [(high - delta) * 100]],
                fmt="none",
                ecolor=color,
                capsize=3,
                lw=1.4,
                zorder=2,
            )
            shown += [low * 100, high * 100]
        filled = row.get("verdict") == "significant"
        ax.plot(delta * 100, y, "o", ms=6, color=color, mfc=color if filled else "white", mew=1.4, zorder=3)
        shown.append(delta * 100)
    lo, hi = min(shown), max(shown)
    pad = max(0.5, 0.08 * (hi - lo))
    lo, hi = lo - pad, hi + pad
    for y, x in outliers:
        inside = min(max(x, lo), hi)
        ax.plot(inside, y, "<" if x < lo else ">" if x > hi else "o", ms=6, color=DIVERGED_COLOR, zorder=3)
        if inside != x:
            ax.annotate(
                f"{x:+.1f}",
                (inside, y),
                xytext=(8 if x < lo else -8, 4),
                textcoords="offset points",
                ha="left" if x < lo else "right",
                color=DIVERGED_COLOR,
                fontsize=7,
            )
    if min_effect:
        ax.axvspan(-min_effect * 100, min_effect * 100, color="0.85", alpha=0.6, lw=0, zorder=0)
    ax.axvline(0, color=REFERENCE_COLOR, ls=":", lw=1)
    ax.set_xlim(lo, hi)
    ax.set_yticks(range(n))
    ax.set_yticklabels([_label(labels[e]) for e in rows["experiment"]][::-1])
    ax.set_ylim(-0.7, n - 0.3)
    right = ax.secondary_yaxis("right")
    right.set_yticks(range(n))
    right.set_yticklabels(
        [_verdict_note(r) if not missing(r.get("delta_acc")) else "no test" for _, r in rows.iterrows()][::-1]
    )
    right.tick_params(length=0)
    right.spines["right"].set_visible(False)
    ax.set_xlabel("Δ test accuracy vs the reference (pp)")
    ax.grid(axis="y", visible=False)
    fig.tight_layout()
    return fig


def _is_log(key: str, values: list[float]) -> bool:
    positive = all(v > 0 for v in values)
    leaf = key.split(".")[-1]
    return positive and (leaf in ("lr", "weight_decay") or (len(values) > 1 and max(values) / min(values) >= 100))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def draw_sweep(key: str, points: list[tuple[Any, Any, list[float]]], reference: tuple[Any, Any, list[float]] | None):
    """Test accuracy over a swept value. ``points`` and ``reference``: (value, experiments.csv row,
    per-seed accuracies). A numeric reference is drawn at its own value (grey); any reference also
    as a dotted horizontal line."""
    fig, ax = _plt().subplots(figsize=(WIDTH * 0.7, 2.6))
    values = [p[0] for p in points]
    numeric = all(_is_number(v) for v in values)
    xs = values if numeric else list(range(len(values)))
    shown = []

    def draw(xs, rows, seeds, color, fmt, label):
        means = np.array([r["test_acc_mean"] for r in rows]) * 100
        bounds = np.array([[r["test_acc_ci_low"], r["test_acc_ci_high"]] for r in rows], dtype=float) * 100
        err = np.nan_to_num(np.abs(bounds.T - means), nan=0.0)
        ax.errorbar(xs, means, yerr=err, fmt=fmt, color=color, capsize=3, lw=1.2, ms=5, label=label)
        for x, row, acc in zip(xs, rows, seeds):
            ax.plot([x] * len(acc), np.asarray(acc) * 100, "o", mfc="none", mec=color, ms=3.5, alpha=0.7)
            if diverged(row):
                ax.annotate(
                    _label(row["status"]),
                    (x, row["test_acc_mean"] * 100),
                    xytext=(4, -10),
                    textcoords="offset points",
                    color=DIVERGED_COLOR,
                    fontsize=7,
                )
        shown.extend([*means / 100, *bounds.ravel() / 100, *(v for acc in seeds for v in acc)])

    draw(xs, [p[1] for p in points], [p[2] for p in points], "C0", "o-", "mean ± 95% CI")
    ticks = list(values)
    if reference is not None:
        ref_value, ref_row, ref_seeds = reference
        label = f"reference ({_label(value_text(ref_value))})"
        ax.axhline(ref_row["test_acc_mean"] * 100, color=REFERENCE_COLOR, ls=":", lw=1)
        if numeric and _is_number(ref_value):
            draw([ref_value], [ref_row], [ref_seeds], REFERENCE_COLOR, "s", label)
            ticks = sorted(set(ticks) | {ref_value})
        else:
            ax.plot([], [], ls=":", color=REFERENCE_COLOR, label=label)
            shown.append(ref_row["test_acc_mean"])
    ax.set_ylim(*_acc_limits(shown))
    if numeric and _is_log(key, [float(v) for v in ticks]):
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(xs)
        ax.set_xticklabels([_label(value_text(v)) for v in values])
    elif len(ticks) <= 8:
        ax.set_xticks(ticks)
        ax.set_xticklabels([value_text(v) for v in ticks])
        ax.minorticks_off()
    ax.set(xlabel=_label(key), ylabel="test accuracy (%)")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def draw_early_stopping(panels: list[dict[str, Any]]):
    """Per early-stopping experiment: its seeds' monitored curve, where each stopped and its best epoch,
    over the full-length run (grey)."""
    n = len(panels)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = _plt().subplots(rows, cols, figsize=(WIDTH, 2.5 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        metric, scale = panel["monitor"], (100.0 if panel["monitor"].endswith("acc") else 1.0)
        if panel["full"]:
            epochs, mean, low, high = _mean_band(panel["full"], metric)
            ax.plot(epochs, mean * scale, color="0.6", lw=1.2, label=f"{_label(panel['full_label'])} (mean)")
            if len(panel["full"]) > 1:
                ax.fill_between(epochs, low * scale, high * scale, color="0.6", alpha=0.2, lw=0)
        for i, (frame, info) in enumerate(zip(panel["histories"], panel["train"])):
            color = f"C{i % 10}"
            ax.plot(frame["epoch"], frame[metric] * scale, color=color, lw=1.2, label=f"seed {info['seed']}")
            stop, best = info.get("epochs_run"), info.get("best_epoch")
            if stop:
                ax.axvline(stop, color=color, ls="--", lw=1)
            if best and best in set(frame["epoch"]):
                ax.plot(best, frame.loc[frame["epoch"] == best, metric].iloc[0] * scale, "*", color=color, ms=8)
        ax.set(
            title=_label(panel["title"]),
            xlabel="epoch",
            ylabel=metric.replace("_", " ") + (" (%)" if scale == 100 else ""),
        )
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(frameon=False, fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def _mosaic(maps: np.ndarray, cols: int) -> np.ndarray:
    """Tile K×H×W (or K×H×W×3) maps, each min–max normalised, into one image (NaN gaps)."""
    k, h, w = maps.shape[:3]
    rows = math.ceil(k / cols)
    shape = (rows * (h + 1) - 1, cols * (w + 1) - 1) + maps.shape[3:]
    out = np.full(shape, np.nan)
    for i, m in enumerate(maps):
        lo, hi = np.nanmin(m), np.nanmax(m)
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        r, c = divmod(i, cols)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = m
    return out


def _filter_maps(weight: torch.Tensor) -> np.ndarray:
    """K×C×kh×kw conv weights as K×kh×kw (gray) or K×kh×kw×3 (RGB) arrays."""
    w = weight.detach().float().cpu().numpy()
    if w.shape[1] == 3:
        return w.transpose(0, 2, 3, 1)
    return w.mean(axis=1)


def _show(ax, image: np.ndarray, title: str) -> None:
    if image.ndim == 3:
        ax.imshow(np.nan_to_num(image, nan=1.0))
    else:
        cmap = _plt().get_cmap("gray").with_extremes(bad="white")
        ax.imshow(np.ma.masked_invalid(image), cmap=cmap)
    ax.set_title(_label(title))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def draw_filters(before: torch.Tensor, after: torch.Tensor):
    """First conv layer's filters before and after training, each normalised on its own."""
    k = before.shape[0]
    cols = 8 if k <= 64 else 16
    shown = min(k, 128)
    rows = math.ceil(shown / cols)
    fig, axes = _plt().subplots(1, 2, figsize=(WIDTH, 0.5 + (WIDTH / 2) * rows / cols))
    _show(axes[0], _mosaic(_filter_maps(before[:shown]), cols), "before training")
    _show(axes[1], _mosaic(_filter_maps(after[:shown]), cols), "after training")
    fig.tight_layout()
    return fig


MAX_MAPS = 32  # feature maps drawn per activation figure (the caption says how many of how many)


def draw_activations(image: np.ndarray, maps: np.ndarray, max_maps: int = MAX_MAPS):
    """Input image (after preprocessing) and the first conv layer's feature maps for it."""
    maps = maps[:max_maps]
    cols = 8
    fig, axes = _plt().subplots(1, 2, figsize=(WIDTH, 2.8), gridspec_kw={"width_ratios": [1, 2.6]})
    img = image.transpose(1, 2, 0) if image.shape[0] == 3 else image.mean(axis=0)
    if img.ndim == 3:
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if hi > lo else img * 0
    _show(axes[0], img, "input (preprocessed)")
    _show(axes[1], _mosaic(maps, cols), f"first conv layer: {len(maps)} feature maps")
    fig.tight_layout()
    return fig


def draw_confusion(matrix: np.ndarray, classes: list[str], title: str):
    """Confusion matrix (counts summed over seeds); colour = share of the true class."""
    k = len(classes)
    size = min(WIDTH - 1.0, 1.6 + 0.26 * k)
    fig, ax = _plt().subplots(figsize=(size + 1.0, size))
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(matrix[i, j])),
                        ha="center",
                        va="center",
                        fontsize=6 if k > 10 else 7,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels([_label(c) for c in classes], rotation=45, ha="right")
        ax.set_yticklabels([_label(c) for c in classes])
    ax.set(xlabel="predicted class", ylabel="true class", title=_label(title))
    ax.grid(False)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.tight_layout()
    return fig


def draw_misclassified(images: torch.Tensor, rows: pd.DataFrame, classes: list[str]):
    """Misclassified test images with true → predicted class and the model's confidence."""
    n = len(rows)
    cols = min(8, max(n, 1))
    nrows = max(1, math.ceil(n / cols))
    fig, axes = _plt().subplots(nrows, cols, figsize=(WIDTH, 1.05 * nrows + 0.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, row) in zip(axes.flat, rows.iterrows()):
        img = images[int(row["index"])].float().numpy() / 255
        if img.shape[0] == 3:
            ax.imshow(img.transpose(1, 2, 0))
        else:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=1)
        ax.set_title(
            f"{_label(classes[int(row['label'])])} → {_label(classes[int(row['pred'])])}\n"
            f"({pct(row['confidence'], 0)}%)",
            fontsize=6.5,
        )
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- stage


def _per_seed_acc(runs: pd.DataFrame) -> dict[str, list[float]]:
    tested = runs[runs["test_acc"].notna()]
    return {exp: list(frame["test_acc"]) for exp, frame in tested.groupby("experiment", sort=False)}


def best_experiment(experiments: pd.DataFrame) -> str:
    """Highest mean test accuracy among experiments not entirely diverged (first in study order on ties)."""
    alive = np.array([not diverged(row, every=True) for row in experiments.to_dict("records")], dtype=bool)
    ok = experiments[experiments["test_acc_mean"].notna() & alive]
    if ok.empty:
        ok = experiments[experiments["test_acc_mean"].notna()]
    if ok.empty:
        raise FigureError("no experiment has a test result; evaluate the runs first")
    return str(ok.loc[ok["test_acc_mean"].idxmax(), "experiment"])


def params_table(recipe: dict[str, Any], meta: dict[str, Any]) -> pd.DataFrame:
    """Per-layer parameters of ``recipe``'s model (``models.summary`` columns)."""
    from ablationlab import models
    from ablationlab.runtime import build_network, input_size

    model = build_network(recipe, meta, pretrained=False)
    return models.summary(model, meta["channels"], input_size(recipe, meta))


class _Stage:
    """What every figure of one :func:`figures` call reads: the study, its summary, data and runs."""

    def __init__(self, study, runs_table, experiments, meta, data_dir, runs_dir):
        self.study, self.meta, self.data_dir = study, meta, Path(data_dir)
        self.classes = [str(c) for c in meta["classes"]]
        self.runs = _Runs(study, Path(runs_dir))
        self.index = by_id(study)
        self.groups = groups(study)
        self.experiments = experiments
        self.rows = experiments.set_index("experiment", drop=False)
        self.per_seed = _per_seed_acc(runs_table)
        self.labels = {e["id"]: _variant_label(e) for e in study["experiments"]}
        self.best = best_experiment(experiments)
        statistics = defaults.statistics(study.get("statistics"))
        self.alpha, self.looks, self.min_effect = statistics["alpha"], statistics["looks"], statistics["min_effect"]

    def members(self, group: str) -> tuple[str | None, list[str], list[str]]:
        """(reference, the group's experiment ids, reference + ids as plotted)."""
        ids = [e["id"] for e in self.groups.get(group, [])]
        ref = next((self.index[i]["reference"] for i in ids if self.index[i]["reference"]), None)
        return ref, ids, ([ref] if ref and ref not in ids else []) + ids

    def label(self, exp_id: str, ids: list[str]) -> str:
        return self.labels[exp_id] if exp_id in ids else f"{exp_id} (reference)"

    def split(self, name: str):
        from ablationlab import data

        return data.load_split(self.data_dir, name)


def _fig_curves(st: _Stage, group: str):
    ref, ids, members = st.members(group)
    series = [
        {
            "label": st.label(i, ids),
            "histories": st.runs.histories(i),
            "reference": i == ref,
            "diverged": diverged(st.rows.loc[i]),
        }
        for i in members
    ]
    counts = sorted({len(st.runs.seeds(i)) for i in members})
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return draw_curves(series), figure_caption("curves", n=n), members


def _fig_test_acc(st: _Stage, group: str):
    ref, ids, members = st.members(group)
    fig = draw_test_acc(st.rows.loc[members], st.per_seed, {i: st.label(i, ids) for i in members}, ref)
    return fig, figure_caption("test_acc"), members


def _fig_forest(st: _Stage, group: str):
    ref, ids, _ = st.members(group)
    compared = [i for i in ids if i != ref]
    level = 1 - st.alpha / st.looks
    fig = draw_forest(st.rows.loc[compared], {i: st.labels[i] for i in compared}, st.min_effect)
    return fig, figure_caption("forest", reference=ref, level=percent(level)), compared


def _fig_sweep(st: _Stage, group: str):
    ref, _, _ = st.members(group)
    swept = [e for e in st.groups[group] if e.get("sweep")]
    key = swept[0]["sweep"]["key"]
    points = [(e["sweep"]["value"], st.rows.loc[e["id"]], st.per_seed.get(e["id"], [])) for e in swept]
    reference = None
    if ref and ref not in [e["id"] for e in swept]:
        found, ref_value = lookup(st.index[ref]["recipe"], key)
        ref_value = ref_value if found else ref
        reference = (ref_value, st.rows.loc[ref], st.per_seed.get(ref, []))
    return (
        draw_sweep(key, points, reference),
        figure_caption("sweep", key=key),
        [e["id"] for e in swept],
    )


def _es(exp: dict[str, Any]) -> dict[str, Any]:
    return exp["recipe"].get("early_stopping") or {}


def _fig_early_stopping(st: _Stage, group: str):
    _, _, members = st.members(group)
    stopped = [e for e in st.groups[group] if _es(e).get("enabled")]
    full = max(
        (st.index[i] for i in members if not _es(st.index[i]).get("enabled")),
        key=lambda e: e["recipe"].get("epochs", 0),
        default=None,
    )
    panels, stops = [], []
    for e in stopped:
        trained = st.runs.train_json(e["id"])
        panels.append(
            {
                "title": f"{st.labels[e['id']]}: patience {_es(e).get('patience')}, "
                f"max {e['recipe'].get('epochs')} epochs",
                "monitor": _es(e).get("monitor", "val_loss"),
                "histories": st.runs.histories(e["id"]),
                "train": trained,
                "full": st.runs.histories(full["id"]) if full else [],
                "full_label": full["id"] if full else "",
            }
        )
        stops.append(
            f"{st.labels[e['id']]}: stopped at epoch "
            + ", ".join(str(t.get("epochs_run")) for t in trained)
            + " (best "
            + ", ".join(str(t.get("best_epoch")) for t in trained)
            + ")"
        )
    text = figure_caption("early_stopping", full=full["id"] if full else None, stops=stops)
    return draw_early_stopping(panels), text, [e["id"] for e in stopped] + ([full["id"]] if full else [])


def _fig_augment(st: _Stage, group: str):
    import torch

    from ablationlab import augment

    x, y = st.split("train")
    picks = [int(torch.nonzero(y == c)[0]) for c in range(st.meta["num_classes"]) if (y == c).any()][:6]
    fig = augment.preview(x[picks], new_augmentations(st.groups[group], st.study), seed=0)
    return (
        fig,
        figure_caption("augment"),
        [e["id"] for e in st.groups[group]],
    )


def _first_conv_weights(st: _Stage, exp_id: str) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(seed, weights before, after training) of the first conv layer of the experiment's first seed."""
    from ablationlab import models
    from ablationlab.runtime import build_network

    seed, d = st.runs.first_run_with(exp_id, "weights_init.pt", "weights.pt")
    out = []
    for name in ("weights_init.pt", "weights.pt"):
        model = build_network(st.index[exp_id]["recipe"], st.meta, pretrained=False)
        try:
            model.load_state_dict(io.load_torch(d / name))
        except RuntimeError as exc:
            raise FigureError(f"{d / name} does not match the recipe of {exp_id!r}: {exc}") from exc
        out.append(models.first_conv(model).weight.detach().clone())
    return seed, out[0], out[1]


def _filters(st: _Stage, exp_id: str, kind: str):
    seed, before, after = _first_conv_weights(st, exp_id)
    size = f"{before.shape[2]}×{before.shape[3]}"
    text = figure_caption(kind, experiment=exp_id, seed=seed, filters=before.shape[0], size=size)
    return draw_filters(before, after), text, [exp_id]


def _fig_filters(st: _Stage, group: str):
    return _filters(st, st.groups[group][0]["id"], "filters")


def _fig_best_filters(st: _Stage, group: str):
    return _filters(st, st.best, "best_filters")


def _fig_activations(st: _Stage, group: str):
    exp_id = st.groups[group][0]["id"]
    seed, d = st.runs.first_run_with(exp_id, "activations.npz")
    with np.load(d / "activations.npz") as npz:
        image, conv1 = npz["image"], npz["conv1"]
    shown = min(len(conv1), MAX_MAPS)
    text = figure_caption("activations", experiment=exp_id, seed=seed, shown=shown, total=len(conv1))
    return draw_activations(image, conv1), text, [exp_id]


def _fig_comparison(st: _Stage, group: str):
    exps = st.experiments
    ranked = exps[exps["test_acc_mean"].notna()].sort_values("test_acc_mean", ascending=False, kind="stable")
    names = list(dict.fromkeys(exps["group"]))
    palette = dict(zip(names, _colors(len(names))))
    fig, ax = _plt().subplots(figsize=(WIDTH, min(9.0, 0.9 + 0.24 * len(ranked))))
    _points(
        ax,
        ranked,
        st.per_seed,
        {e: e for e in ranked["experiment"]},
        "baseline" if "baseline" in st.index else None,
        {r.experiment: palette[r.group] for r in ranked.itertuples()},
    )
    fig.tight_layout()
    return fig, figure_caption("comparison"), list(ranked["experiment"])


def _fig_confusion(st: _Stage, group: str):
    import pandas as pd

    total, used = None, []
    for seed in st.runs.seeds(st.best):
        path = st.runs.dir(st.best, seed) / "confusion.csv"
        if path.exists():
            counts = pd.read_csv(path).set_index("true").to_numpy()
            total = counts if total is None else total + counts
            used.append(seed)
    if total is None:
        raise FigureError(f"{st.runs.runs_dir}: no run of {st.best!r} has confusion.csv")
    return (
        draw_confusion(total, st.classes, f"{st.best}: {len(used)} seed(s)"),
        figure_caption("confusion", experiment=st.best, seeds=", ".join(map(str, used))),
        [st.best],
    )


def _fig_misclassified(st: _Stage, group: str):
    import pandas as pd

    seed, d = st.runs.first_run_with(st.best, "misclassified.csv")
    wrong = pd.read_csv(d / "misclassified.csv")
    x, _ = st.split("test")
    return (
        draw_misclassified(x, wrong, st.classes),
        figure_caption("misclassified", experiment=st.best, seed=seed, n=len(wrong)),
        [st.best],
    )


_DRAW = {
    "curves": _fig_curves,
    "test_acc": _fig_test_acc,
    "forest": _fig_forest,
    "sweep": _fig_sweep,
    "early_stopping": _fig_early_stopping,
    "augment": _fig_augment,
    "filters": _fig_filters,
    "activations": _fig_activations,
    "comparison": _fig_comparison,
    "best_filters": _fig_best_filters,
    "confusion": _fig_confusion,
    "misclassified": _fig_misclassified,
}


def _draw_item(st: _Stage, item: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Draw (or write) one item of the plan into ``out_dir``; return its manifest entry."""
    if item["kind"] == "params":
        table = params_table(st.groups[item["group"]][0]["recipe"], st.meta)
        with io.atomic_path(out_dir / item["file"]) as tmp:
            table.to_csv(tmp, index=False)
        return {
            **item,
            "caption": figure_caption("params"),
            "experiments": [st.groups[item["group"]][0]["id"]],
            "width_in": WIDTH,
        }
    with _plt().rc_context(STYLE):
        fig, caption, exps = _DRAW[item["kind"]](st, item["group"])
        width = round(min(WIDTH, fig.get_figwidth()), 2)
        _save(fig, out_dir / item["file"])
    return {**item, "caption": caption, "experiments": exps, "width_in": width}


def _stage(study: dict[str, Any], summary_dir: str | Path, data_dir: str | Path, runs_dir: str | Path) -> _Stage:
    from ablationlab import data
    from ablationlab.summarize import SummaryError, read_summary

    runs_table, experiments = read_summary(summary_dir)
    missing = [e["id"] for e in study["experiments"] if e["id"] not in set(experiments["experiment"])]
    if missing:
        raise SummaryError(f"{Path(summary_dir) / 'experiments.csv'} lacks experiments {missing}: re-run summarize")
    return _Stage(study, runs_table, experiments, data.load_meta(data_dir), data_dir, runs_dir)


_WORKER: dict[str, Any] = {}  # a pool worker's stage, read once per process


def _worker_init(inputs: tuple) -> None:
    _WORKER["stage"] = _stage(*inputs)


def _worker_draw(item: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    return _draw_item(_WORKER["stage"], item, out_dir)


def _pool(jobs: int, inputs: tuple):
    """A pool of ``jobs`` processes, each with its own stage: forked where the platform can
    (the parent's imports come along), else spawned."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(
        jobs, mp_context=multiprocessing.get_context(method), initializer=_worker_init, initargs=(inputs,)
    )


def figures(
    study: str | Path | dict[str, Any],
    summary_dir: str | Path,
    data_dir: str | Path,
    runs_dir: str | Path,
    out_dir: str | Path,
    seed_plan: str | Path | None = None,
    jobs: int = 1,
) -> dict[str, Any]:
    """Draw every figure of :func:`plan` into ``out_dir``; write and return ``figures.json``.
    ``jobs`` > 1 draws them in that many processes (each figure drawn alone: the same files)."""
    from ablationlab.summarize import load_study

    if not isinstance(study, dict):
        study = load_study(study, seed_plan)
    out_dir = Path(out_dir)
    inputs = (study, summary_dir, data_dir, runs_dir)
    st = _stage(*inputs)
    items = plan(study)
    jobs = max(1, min(jobs, len(items)))
    if jobs == 1:
        manifest = [_draw_item(st, item, out_dir) for item in items]
    else:
        with _pool(jobs, inputs) as pool:
            manifest = list(pool.map(_worker_draw, items, [out_dir] * len(items)))
    result = {"best_experiment": st.best, "dataset": st.meta.get("dataset"), "classes": st.classes, "figures": manifest}
    io.write_json(out_dir / "figures.json", result)
    return result


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablationlab figures", description=__doc__.split("\n")[0])
    parser.add_argument("--study", required=True, help="results/study/experiments.json")
    parser.add_argument("--summary", required=True, help="folder with runs.csv and experiments.csv")
    parser.add_argument("--data", required=True, help="prepared data folder (results/data/<dataset>)")
    parser.add_argument("--runs", required=True, help="results/runs")
    parser.add_argument("--out", required=True, help="output folder (results/figures)")
    parser.add_argument("--seeds", help="adaptive seeding's results/adaptive/seeds.json: each experiment's seeds")
    parser.add_argument("--jobs", type=int, default=1, help="processes drawing figures (default 1)")
    args = parser.parse_args(argv)
    result = figures(args.study, args.summary, args.data, args.runs, args.out, args.seeds, jobs=args.jobs)
    print(f"drew {len(result['figures'])} figures into {args.out}")
    return 0
