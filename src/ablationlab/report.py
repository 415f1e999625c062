"""Stage ``report``: the study as one self-contained HTML file and a PDF of it.

Reads ``results/study/report.json`` (title, groups, notes, resolved config),
``results/study/experiments.json`` (recipes, for what each variant changes), the
summary CSVs, the figure manifest (``figures.json``) and, optionally, the prepared
data's ``meta.json`` and Snakemake benchmark files. Renders the Jinja2 templates in
``ablationlab/templates`` (autoescape on) into ``report.html`` — images embedded as
``data:`` URIs, CSS inline, no external reference — and the same HTML through
WeasyPrint into ``report.pdf`` (A4, page numbers, table of contents with pages). The PDF's
HTML names each figure ``figure:<file>`` instead of embedding it, and WeasyPrint is given
exactly the manifest's figure files (parsing megabytes of base64 cost it a second or more).

User text (titles, notes, experiment names) is escaped; notes are CommonMark rendered
by markdown-it-py with raw HTML disabled (escaped), images disabled and unsafe link
schemes (``javascript:``, ``vbscript:``, ``file:``, ``data:``) refused.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import math
import os
import platform
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
import pandas as pd
import yaml
from markdown_it import MarkdownIt
from markupsafe import Markup

from ablationlab import defaults, io
from ablationlab.credentials import redact
from ablationlab.formats import (
    VERDICT_NAMES,
    diverged,
    integer,
    number,
    number_text,
    pct,
    percent,
    plural,
    pp,
    pvalue,
    seconds,
    value_text,
)
from ablationlab.formats import missing as _missing
from ablationlab.keypath import flatten
from ablationlab.provenance import git_commit, package_versions
from ablationlab.summarize import SummaryError, load_study, read_summary

MLFLOW_UI = "http://127.0.0.1:5000/"
# how the PDF's HTML names a figure of the manifest (write_pdf serves exactly those files)
FIGURE_SCHEME = "figure:"


class ReportError(ValueError):
    """An input of the report is missing or malformed."""


# --------------------------------------------------------------------------- formatting


def formula(text: Any) -> str:
    return "" if _missing(text) else str(text).replace("*", "×")


# --------------------------------------------------------------------------- safe markdown


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False})
    md.disable("image")  # an external image would make the report fetch from the network
    return md


_MD = _markdown()


def markdown(text: str | None, shift: int = 3) -> Markup:
    """Render user markdown safely: raw HTML escaped, no images, unsafe links refused,
    headings shifted down by ``shift`` levels so notes never outrank the report's sections."""
    if not text:
        return Markup("")
    tokens = _MD.parse(str(text))
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + shift)}"
    return Markup(_MD.renderer.render(tokens, _MD.options, {}))


def _safe_link(url: Any) -> str | None:
    """Only http(s) links leave the report."""
    if _missing(url) or not url:
        return None
    url = str(url)
    if url.startswith("#"):
        return MLFLOW_UI + url
    return url if urlsplit(url).scheme in ("http", "https") else None


# --------------------------------------------------------------------------- inputs


_ABSENT = object()


def changes(recipe: dict[str, Any], reference: dict[str, Any] | None) -> list[dict[str, str]]:
    """Recipe keys whose value differs from the reference: ``[{key, before, after}]``."""
    if reference is None:
        return []
    new, old = flatten(recipe), flatten(reference)
    return [
        {"key": k, "before": value_text(old[k]) if k in old else "—", "after": value_text(new[k]) if k in new else "—"}
        for k in sorted(set(new) | set(old))
        if new.get(k, _ABSENT) != old.get(k, _ABSENT)
    ]


def read_benchmarks(bench_dir: str | Path | None, files: Iterable[str | Path] | None = None) -> list[dict[str, Any]]:
    """Snakemake ``benchmark:`` TSV files under ``bench_dir`` (those of ``files``, the study's jobs, when
    given: a file a former plan left there is not one of them): job (relative path), seconds, max RSS (MB)."""
    if bench_dir is None or not Path(bench_dir).is_dir():
        return []
    paths = sorted(Path(bench_dir).rglob("*.tsv")) if files is None else sorted(map(Path, files))
    rows = []
    for path in paths:
        try:
            frame = pd.read_csv(path, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
            continue
        if "s" not in frame.columns or frame.empty:
            continue
        rows.append(
            {
                "job": str(path.relative_to(bench_dir).with_suffix("")),
                "seconds": float(frame["s"].iloc[-1]),
                "max_rss": float(frame["max_rss"].iloc[-1]) if "max_rss" in frame else math.nan,
            }
        )
    return rows


def read_manifest(figures_dir: str | Path) -> dict[str, Any]:
    """``figures.json`` of the figures stage."""
    path = Path(figures_dir) / "figures.json"
    if not path.exists():
        raise ReportError(f"{path}: figure manifest not found (run `python -m ablationlab figures` first)")
    return io.read_json(path)


def read_diagnostics(summary_dir: str | Path) -> pd.DataFrame:
    """``diagnostics.csv`` of the summary (the curves' reading per experiment)."""
    path = Path(summary_dir) / "diagnostics.csv"
    if not path.exists():
        raise ReportError(f"{path}: not found (re-run `python -m ablationlab summarize`)")
    return pd.read_csv(
        path, dtype={"experiment": str, "flags": str, "reading": str}, keep_default_na=False, na_values=[""]
    )


def _mime(path: Path) -> str:
    mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(
        path.suffix.lower()
    )
    if mime is None:
        raise ReportError(f"{path}: unsupported figure format {path.suffix!r}")
    return mime


def _image_uri(path: Path) -> str:
    return f"data:{_mime(path)};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: (None if _missing(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


# --------------------------------------------------------------------------- findings


TEST_NAMES = {"paired_t": "paired t", "welch": "Welch t"}
EFFECT_KINDS = {"d_z": "d_z", "hedges_g": "Hedges' g"}


def statistics_settings(study: dict[str, Any]) -> dict[str, Any]:
    """The study's ``statistics`` block (defaults filled in) with ``per_look`` = alpha / looks and ``ci``,
    the confidence level (%) of the Δ intervals."""
    out = defaults.statistics(study.get("statistics"))
    out["per_look"] = out["alpha"] / out["looks"]
    out["ci"] = percent(1 - out["per_look"])
    return out


def _p_equals(p: float) -> str:
    """``= 0.012`` or ``< 0.001``."""
    return "< 0.001" if p < 0.001 else f"= {pvalue(p)}"


def seeds_text(row: dict[str, Any], reference: dict[str, Any] | None) -> str:
    """How many seeds a comparison used: ``3 seeds`` (paired, or equal n) or ``4 vs 3 seeds``."""
    if row.get("test") == "paired_t" and not _missing(row.get("n_pairs")):
        return plural(row["n_pairs"], "seed")
    n, m = row.get("n") or 0, (reference or {}).get("n")
    return plural(n, "seed") if reference is None or n == m else f"{n} vs {m} seeds"


def verdict_text(row: dict[str, Any], settings: dict[str, Any]) -> str:
    """What a tested row's verdict means: significant; no effect larger than the MDE; or undecided and how
    many seeds would be needed to tell."""
    verdict = row.get("verdict")
    if verdict == "significant":
        return "significant"
    if verdict == "no_effect":
        mde = pp(row.get("mde_acc"), signed=False)
        return f"no effect larger than {mde} pp (MDE at {percent(settings['power'])} % power)"
    needed = row.get("seeds_needed")
    if _missing(needed) or not math.isfinite(float(needed)):  # |Δ| below min_effect (summarize)
        return (
            f"undecided: too few seeds to rule out {pct(settings['min_effect'])} pp, the smallest effect worth "
            f"detecting (MDE {pct(row.get('mde_acc'))} pp), and the observed Δ is smaller"
        )
    return f"undecided: too few seeds, {integer(needed)} would be needed to tell"


def finding(
    row: dict[str, Any],
    reference: dict[str, Any] | None,
    label: str,
    ref_label: str,
    settings: dict[str, Any] | None = None,
) -> str:
    """One sentence: the effect vs the reference, its interval, the test and the Holm-adjusted p-value it is
    judged by, and the verdict (significant / no effect above the MDE / undecided)."""
    settings = settings or statistics_settings({})
    n = row.get("n") or 0
    if diverged(row):
        return (
            f"{label}: diverged in {row.get('n_diverged')} of {row.get('n_seeds')} seeds; "
            f"mean test accuracy {pct(row.get('test_acc_mean'))} %."
        )
    if reference is None or _missing(row.get("delta_acc")):
        return f"{label}: {pct(row.get('test_acc_mean'))} % test accuracy ({plural(n, 'seed')})."
    seeds = seeds_text(row, reference)
    head = f"{label}: {pp(row['delta_acc'])} pp vs {ref_label}"
    if _missing(row.get("p_value")) or _missing(row.get("p_value_holm")):
        few = min(n, reference.get("n") or 0) < 2 and (_missing(row.get("n_pairs")) or row["n_pairs"] < 2)
        reason = "too few seeds for a test" if few else "no spread between seeds for a test"
        return f"{head} ({seeds}; {reason})" + (" — undecided." if row.get("verdict") == "undecided" else ".")
    level = f", level {settings['per_look']:.3g} per look" if settings["looks"] > 1 else ""
    return (
        f"{head} ({settings['ci']} % CI {pp(row['delta_ci_low'])}…{pp(row['delta_ci_high'])}, "
        f"{TEST_NAMES.get(row.get('test'), row.get('test'))} over {seeds}, Holm p {_p_equals(row['p_value_holm'])}"
        f" of {plural(row.get('holm_family'), 'comparison')}{level}) — {verdict_text(row, settings)}."
    )


def group_findings(
    ids: list[str],
    ref: str | None,
    rows: dict[str, dict[str, Any]],
    recipes: dict[str, Any],
    label: Any,
    settings: dict[str, Any],
) -> list[dict[str, Any]]:
    """The findings of a group: one verdict sentence per experiment (plus model size and early stopping)."""
    findings = []
    for e in ids:
        if e == ref:
            continue
        exp_ref = recipes[e]["reference"]
        text = finding(rows[e], rows.get(exp_ref) if exp_ref else None, label(e), exp_ref or "", settings)
        p_rows = [rows[e].get("params"), rows[exp_ref].get("params") if exp_ref else None]
        if exp_ref and not any(_missing(p) for p in p_rows) and p_rows[0] != p_rows[1]:
            text += f" Model size {integer(p_rows[1])} → {integer(p_rows[0])} parameters."
        es = recipes[e]["recipe"].get("early_stopping") or {}
        if es.get("enabled") and not _missing(rows[e].get("epochs_mean")):
            text += (
                f" Training ran {number_text(rows[e]['epochs_mean'])} of {recipes[e]['recipe'].get('epochs')}"
                f" epochs on average (best epoch {number_text(rows[e].get('best_epoch_mean'))})."
            )
        findings.append(
            {
                "text": text,
                "significant": rows[e].get("verdict") == "significant" and not diverged(rows[e]),
            }
        )
    return findings


def _outside(x: Any, low: Any, high: Any) -> bool:
    """Whether ``x`` lies outside the interval [low, high] (False when any is undefined)."""
    return not any(_missing(v) for v in (x, low, high)) and not low <= x <= high


def verdict_rows(ids: list[str], ref: str | None, rows: dict[str, dict[str, Any]], label: Any) -> list[dict[str, Any]]:
    """The group's verdict table: one row per compared experiment (every value present, None if undefined)."""
    out = []
    for e in ids:
        r = rows[e]
        if e == ref or _missing(r.get("reference")):
            continue
        verdict = "diverged" if diverged(r) else VERDICT_NAMES.get(r.get("verdict"), "no test")
        out.append(
            {
                "label": label(e),
                "verdict": verdict,
                "verdict_class": verdict.replace(" ", "-"),
                "delta": r.get("delta_acc"),
                "ci_low": r.get("delta_ci_low"),
                "ci_high": r.get("delta_ci_high"),
                "delta_best": r.get("delta_acc_best"),
                "best_outside": _outside(r.get("delta_acc_best"), r.get("delta_ci_low"), r.get("delta_ci_high")),
                "test": TEST_NAMES.get(r.get("test"), "–"),
                "p_holm": r.get("p_value_holm"),
                "family": r.get("holm_family"),
                "effect_size": r.get("effect_size"),
                "effect_kind": EFFECT_KINDS.get(r.get("effect_size_kind"), ""),
                "prob": r.get("prob_improvement"),
                "prob_low": r.get("prob_improvement_ci_low"),
                "prob_high": r.get("prob_improvement_ci_high"),
                "mde": r.get("mde_acc"),
                "seeds": seeds_text(r, rows.get(r["reference"])),
                "seeds_needed": r.get("seeds_needed"),
                "p_wilcoxon": r.get("p_value_wilcoxon"),
            }
        )
    return out


def diagnostic_notes(ids: list[str], diagnostics: dict[str, dict[str, Any]], label: Any) -> list[dict[str, Any]]:
    """The curves' reading of those of ``ids`` with a diagnostics flag."""
    out = []
    for e in ids:
        d = diagnostics.get(e) or {}
        if d.get("flags"):
            out.append({"label": label(e), "flags": str(d["flags"]).split(";"), "reading": d.get("reading") or ""})
    return out


def significance_overview(experiments: list[dict[str, Any]], settings: dict[str, Any]) -> dict[str, Any]:
    """Every comparison of the study (each experiment with a reference), sorted by its BH q-value (untested
    last), with the number below the level."""
    compared = [r for r in experiments if not _missing(r.get("reference"))]
    ranked = sorted(compared, key=lambda r: (_missing(r.get("q_value")), r.get("q_value") or 0.0))
    rows = [
        {
            "experiment": r["experiment"],
            "reference": r["reference"],
            "delta": r.get("delta_acc"),
            "test": TEST_NAMES.get(r.get("test"), "–"),
            "p": r.get("p_value"),
            "p_holm": r.get("p_value_holm"),
            "q": r.get("q_value"),
            "below": not _missing(r.get("q_value")) and r["q_value"] < settings["alpha"],
            "verdict": "diverged" if diverged(r) else VERDICT_NAMES.get(r.get("verdict"), "no test"),
        }
        for r in ranked
    ]
    return {
        "rows": rows,
        "n": len(rows),
        "n_tested": sum(not _missing(r["q"]) for r in rows),
        "n_below": sum(r["below"] for r in rows),
    }


# --------------------------------------------------------------------------- context


class _Sections:
    """Builds the report's sections in document order; figures and tables are numbered as they are built."""

    def __init__(
        self,
        study: dict[str, Any],
        runs: pd.DataFrame,
        experiments: pd.DataFrame,
        manifest: dict[str, Any],
        figures_dir: Path,
        diagnostics: pd.DataFrame | None,
    ):
        self.settings = statistics_settings(study)
        self.diag = {r["experiment"]: r for r in _records(diagnostics)} if diagnostics is not None else {}
        self.recipes = {e["id"]: e for e in study["experiments"]}
        self.experiments = experiments
        self.rows = {r["experiment"]: r for r in _records(experiments)}
        missing = [e for e in self.recipes if e not in self.rows]
        if missing:
            raise ReportError(f"experiments.csv lacks experiments {missing}: re-run summarize")
        self.study, self.runs, self.manifest = study, runs, manifest
        self.figures, self.params_table = _read_figures(manifest, figures_dir)
        self.n_figures = self.n_tables = 0

    def next_figure(self) -> int:
        self.n_figures += 1
        return self.n_figures

    def next_table(self) -> int:
        self.n_tables += 1
        return self.n_tables

    def figures_for(self, group: str, kinds: Iterable[str] | None = None) -> list[dict[str, Any]]:
        out = []
        for fig in self.figures.get(group, []):
            wanted = fig["kind"] in kinds if kinds is not None else fig["kind"] != "forest"  # forest: by its table
            if wanted:
                out.append({**fig, "number": self.next_figure()})
        return out

    def label(self, exp_id: str) -> str:
        exp = self.recipes[exp_id]
        if exp.get("sweep"):
            return f"{exp['sweep']['key']} = {value_text(exp['sweep']['value'])}"
        return exp["variant"] if exp["group"] != "baseline" else exp_id

    def table_rows(self, ids: list[str], reference: str | None) -> list[dict[str, Any]]:
        rows = self.rows
        candidates = [i for i in ids if not diverged(rows[i], every=True) and rows[i]["test_acc_mean"] is not None]
        best = max(candidates, key=lambda i: rows[i]["test_acc_mean"], default=None)
        return [
            {
                **rows[i],
                "label": self.label(i),
                "is_reference": i == reference,
                "is_best": i == best and len(ids) > 1,
                "diverged": diverged(rows[i]),
            }
            for i in ids
        ]

    def setup(self, study_report: dict[str, Any], meta: dict[str, Any] | None) -> dict[str, Any]:
        baseline = self.recipes.get("baseline")
        runs = self.runs
        splits = {
            k: (meta or {}).get("splits", {})[k]
            for k in ("train", "val", "test")
            if k in (meta or {}).get("splits", {})
        }
        return {
            "anchor": "sec-setup",
            "title": "Setup",
            "dataset": study_report.get("dataset") or self.study.get("dataset"),
            "meta": meta,
            "splits": splits,
            "classes": (meta or {}).get("classes") or self.manifest.get("classes") or [],
            "recipe": (
                [{"key": k, "value": value_text(v)} for k, v in flatten(baseline["recipe"]).items()] if baseline else []
            ),
            "data_table_number": self.next_table() if splits else None,
            "recipe_table_number": self.next_table() if baseline else None,
            "seeds": study_report.get("seeds") or self.study.get("seeds"),
            "seed_plan": seed_plan_table(self.study, self.next_table()) if self.study.get("seed_plan") else None,
            "devices": sorted({str(d) for d in runs["device"].dropna()}),
            "torch_versions": (
                sorted({str(v) for v in runs["torch_version"].dropna()}) if "torch_version" in runs else []
            ),
            "n_experiments": len(self.recipes),
            "n_runs": len(runs),
        }

    def baseline(self, groups: list[dict[str, Any]]) -> dict[str, Any] | None:
        if "baseline" not in self.recipes:
            return None
        info = next((g for g in groups if g["id"] == "baseline"), {})
        section = {
            "anchor": "sec-baseline",
            "title": info.get("title") or "Baseline",
            "notes": markdown(info.get("notes")),
            "table_number": self.next_table(),
            "rows": self.table_rows(["baseline"], None),
            "params": self.params_table,
            "params_table_number": self.next_table() if self.params_table else None,
            "figures": self.figures_for("baseline"),
            "finding": None,
            "diagnostics": diagnostic_notes(["baseline"], self.diag, self.label),
        }
        row = self.rows["baseline"]
        section["finding"] = (
            f"Baseline: {pct(row['test_acc_mean'])} % ± {pct(row['test_acc_std'])} test accuracy "
            f"(95% CI {pct(row['test_acc_ci_low'])}–{pct(row['test_acc_ci_high'])} %, {row['n']} seeds), "
            f"{integer(row['params'])} trainable parameters."
        )
        return section

    def group(self, g: dict[str, Any]) -> dict[str, Any]:
        rows, recipes = self.rows, self.recipes
        unknown = [e for e in g.get("experiments", []) if e not in rows]
        if unknown:
            raise ReportError(f"report.json group {g['id']!r} lists unknown experiments {unknown}")
        ids = list(g.get("experiments", []))
        ref = g.get("reference") or next((recipes[e]["reference"] for e in ids if recipes[e]["reference"]), None)
        shown = ([ref] if ref and ref not in ids and ref in rows else []) + ids
        trows = self.table_rows(shown, ref)
        return {
            "anchor": f"sec-{re.sub(r'[^A-Za-z0-9_-]+', '-', g['id'])}",
            "id": g["id"],
            "title": g.get("title") or g["id"],
            "notes": markdown(g.get("notes")),
            "reference": ref,
            "sweep_key": g.get("sweep_key"),
            "changes": [
                {
                    "label": self.label(e),
                    "changes": changes(
                        recipes[e]["recipe"],
                        recipes[recipes[e]["reference"]]["recipe"] if recipes[e]["reference"] in recipes else None,
                    ),
                }
                for e in ids
                if e != ref
            ],
            "table_number": self.next_table(),
            "rows": trows,
            "findings": group_findings(ids, ref, rows, recipes, self.label, self.settings),
            "verdict_table_number": self.next_table(),
            "verdicts": verdict_rows(ids, ref, rows, self.label),
            "forest": self.figures_for(g["id"], ["forest"]),
            "diagnostics": diagnostic_notes(ids, self.diag, self.label),
            "best": next((r for r in trows if r["is_best"]), None),
            "figures": self.figures_for(g["id"]),
        }

    def comparison(self) -> dict[str, Any]:
        ranked = sorted(
            [r for r in _records(self.experiments) if r["test_acc_mean"] is not None], key=lambda r: -r["test_acc_mean"]
        )
        base_mean = self.rows.get("baseline", {}).get("test_acc_mean")
        for i, r in enumerate(ranked, 1):
            r["rank"] = i
            r["delta_baseline"] = (
                None if base_mean is None or r["experiment"] == "baseline" else r["test_acc_mean"] - base_mean
            )
            r["diverged"] = diverged(r)
        best_id = self.manifest.get("best_experiment")
        return {
            "anchor": "sec-comparison",
            "title": "Comparison of all experiments",
            "table_number": self.next_table(),
            "rows": ranked,
            "untested": [r for r in _records(self.experiments) if r["test_acc_mean"] is None],
            "figures": self.figures_for("study", ["comparison"]),
            "significance": significance_overview(_records(self.experiments), self.settings),
            "significance_table_number": self.next_table(),
            "best": self.rows.get(best_id),
            "best_label": best_id,
            "best_figures": self.figures_for("study", ["best_filters", "confusion", "misclassified"]),
        }


def seed_plan_table(study: dict[str, Any], table_number: int) -> dict[str, Any] | None:
    """Adaptive seeding: per experiment, the seeds it got and why (None without a seed plan)."""
    plan = study.get("seed_plan")
    if not plan:
        return None
    verdicts = plan.get("verdicts", {})
    rows = [
        {
            "experiment": e["id"],
            "n": len(e["seeds"]),
            "seeds": ", ".join(map(str, e["seeds"])),
            "reasons": e.get("seed_reasons", []),
            "verdict": verdicts.get(e["id"], {}).get("verdict", ""),
        }
        for e in study["experiments"]
    ]
    return {
        "table_number": table_number,
        "procedure": plan.get("procedure"),
        "looks": plan.get("looks"),
        "looks_run": plan.get("look"),
        "per_look_alpha": plan.get("per_look_alpha"),
        "rows": rows,
        "initial": study.get("seeds"),
        **study.get("adaptive", {}),
    }


def _read_figures(manifest: dict[str, Any], figures_dir: Path) -> tuple[dict[str, list[dict[str, Any]]], Any]:
    """The manifest's figures by group (each with its ``path``) and the parameter table (or None)."""
    by_group: dict[str, list[dict[str, Any]]] = {}
    params_table = None
    for item in manifest.get("figures", []):
        path = figures_dir / item["file"]
        if not path.exists():
            raise ReportError(f"{path}: listed in figures.json but missing (re-run figures)")
        if item["kind"] == "params":
            frame = pd.read_csv(path, keep_default_na=False)
            params_table = {
                "rows": frame.to_dict("records"),
                "caption": item["caption"],
                "trainable": int(frame["trainable"].sum()),
                "total": int(frame["params"].sum()),
            }
            continue
        _mime(path)  # an unsupported format fails here, before anything is written
        by_group.setdefault(item["group"], []).append({**item, "path": path})
    return by_group, params_table


def _appendix(
    study_report: dict[str, Any], runs: pd.DataFrame, benchmarks: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """Reproducibility: config, packages, platform, tracking (URIs redacted), runs and benchmarks."""
    tracking = dict(study_report.get("tracking") or {})
    for key in list(tracking):
        if "uri" in key.lower() or "url" in key.lower():
            tracking[key] = None if _missing(tracking[key]) or not tracking[key] else redact(tracking[key])
    run_rows = _records(runs)
    for r in run_rows:
        r["link"] = _safe_link(r.get("mlflow_url"))
    return {
        "config_yaml": config_yaml(study_report.get("config", {})),
        "config_hash": study_report.get("config_hash"),
        "packages": package_versions(),
        "platform": platform.platform(),
        "tracking": tracking,
        "runs": run_rows,
        "benchmarks": benchmarks or [],
        "has_mlflow": any(r.get("mlflow_run_id") for r in run_rows),
        "local_ui": any((r.get("link") or "").startswith(MLFLOW_UI) for r in run_rows),
    }


def _number_and_list(chapters: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    """Number the chapters (None: absent) 1, 2, … in order, then the appendix A: the table of contents."""
    present = [c for c in chapters if c is not None]
    for n, chapter in enumerate(present, 1):
        chapter["number"] = n
    return [{"anchor": c["anchor"], "number": c["number"], "title": c["title"]} for c in present] + [
        {"anchor": "sec-appendix", "number": "A", "title": "Reproducibility"}
    ]


def build_context(
    study_report: dict[str, Any],
    study: dict[str, Any],
    runs: pd.DataFrame,
    experiments: pd.DataFrame,
    manifest: dict[str, Any],
    figures_dir: str | Path,
    *,
    meta: dict[str, Any] | None = None,
    benchmarks: list[dict[str, Any]] | None = None,
    commit: str | None = None,
    date: str | None = None,
    diagnostics: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Everything the template shows, as plain data (numbers still raw; the template formats them)."""
    build = _Sections(study, runs, experiments, manifest, Path(figures_dir), diagnostics)
    groups = study_report.get("groups", [])
    setup = build.setup(study_report, meta)
    baseline = build.baseline(groups)
    sections = [build.group(g) for g in groups if g["id"] != "baseline"]
    comparison = build.comparison()
    return {
        "title": study_report.get("title") or study_report.get("name") or "Ablation study",
        "name": study_report.get("name"),
        "author": study_report.get("author"),
        "date": date or _today(),
        "commit": commit,
        "setup": setup,
        "baseline": baseline,
        "sections": sections,
        "comparison": comparison,
        "toc": _number_and_list([setup, baseline, *sections, comparison]),
        "diverged_runs": [r for r in _records(runs) if diverged(r)],
        "appendix": _appendix(study_report, runs, benchmarks),
        "alpha": build.settings["alpha"],
        "statistics": build.settings,
    }


CONFIG_ORDER = (
    "study",
    "data",
    "seeds",
    "device",
    "threads",
    "compile",
    "tracking",
    "report",
    "resources",
    "baseline",
    "ablations",
)


def config_yaml(config: dict[str, Any]) -> str:
    """The resolved config as YAML, top-level keys in config.yaml's order (the rest after)."""
    ordered = {k: config[k] for k in CONFIG_ORDER if k in config} | {k: v for k, v in config.items()}
    return yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100)


def _today() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch else dt.datetime.now(dt.UTC)
    return when.strftime("%Y-%m-%d")


# --------------------------------------------------------------------------- rendering


def environment() -> jinja2.Environment:
    """The report's Jinja2 environment: package templates, autoescape on, strict undefined."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ablationlab", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        pct=pct,
        pp=pp,
        pvalue=pvalue,
        integer=integer,
        number=number,
        seconds=seconds,
        formula=formula,
        value_text=value_text,
    )
    env.tests["diverged"] = diverged
    return env


def render_html(context: dict[str, Any], *, embed: bool = True) -> str:
    """The report's HTML: figures embedded as ``data:`` URIs, or named ``figure:<file>`` (``embed``
    false: the PDF's HTML, for :func:`write_pdf`)."""
    css = resources.files("ablationlab").joinpath("templates/report.css").read_text(encoding="utf-8")

    def image_src(fig: dict[str, Any]) -> str:
        return _image_uri(fig["path"]) if embed else FIGURE_SCHEME + fig["file"]

    return environment().get_template("report.html.j2").render(**context, css=Markup(css), image_src=image_src)


def write_pdf(html: str, path: str | Path, figures: dict[str, Path] | None = None) -> None:
    """Render ``html`` with WeasyPrint into ``path`` (atomically). The HTML fetches nothing but
    ``data:`` URIs and, as ``figure:<file>``, the ``figures`` (``{file: path}``); anything else is an error."""
    import weasyprint
    from weasyprint.urls import FatalURLFetchingError, URLFetcherResponse

    figures = figures or {}

    class Fetcher(weasyprint.URLFetcher):
        def fetch(self, url, headers=None):
            if url.startswith(FIGURE_SCHEME):
                file = figures.get(url.removeprefix(FIGURE_SCHEME))
                if file is None:
                    raise ValueError(f"{url}: not a figure of the report")
                return URLFetcherResponse(url, file.read_bytes(), {"Content-Type": _mime(file)})
            return super().fetch(url, headers)

    fetcher = Fetcher(allowed_protocols=["data"], fail_on_errors=True)
    try:
        document = weasyprint.HTML(string=html, url_fetcher=fetcher).render()
    except FatalURLFetchingError as exc:  # a BaseException: turn it into a clear error
        raise ReportError(f"the report is not self-contained: {exc}") from None
    with io.atomic_path(path) as tmp:
        document.write_pdf(tmp)


def report(
    study_report: str | Path,
    summary_dir: str | Path,
    figures_dir: str | Path,
    out_html: str | Path,
    out_pdf: str | Path | None = None,
    *,
    study: str | Path | None = None,
    data_dir: str | Path | None = None,
    benchmarks_dir: str | Path | None = None,
    benchmark_files: Iterable[str | Path] | None = None,
    commit: str | None = None,
    seed_plan: str | Path | None = None,
) -> dict[str, Any]:
    """Render ``out_html`` (and ``out_pdf``) from the study files; return the template context."""
    study_report = Path(study_report)
    if not study_report.exists():
        raise ReportError(f"{study_report}: study report file not found")
    info = io.read_json(study_report)
    for key in ("groups",):
        if key not in info:
            raise ReportError(f"{study_report}: missing key {key!r}")
    study_path = Path(study) if study else study_report.with_name("experiments.json")
    study_table = load_study(study_path, seed_plan)
    runs, experiments = read_summary(summary_dir)
    manifest = read_manifest(figures_dir)
    meta = None
    if data_dir is not None:
        meta_path = Path(data_dir) / "meta.json"
        if not meta_path.exists():
            raise ReportError(f"{meta_path}: not found (prepare the data first)")
        meta = io.read_json(meta_path)
    context = build_context(
        info,
        study_table,
        runs,
        experiments,
        manifest,
        figures_dir,
        meta=meta,
        benchmarks=read_benchmarks(benchmarks_dir, benchmark_files),
        diagnostics=read_diagnostics(summary_dir),
        commit=commit if commit is not None else git_commit(),
    )
    io.write_text(out_html, render_html(context))
    if out_pdf is not None:
        figures = {item["file"]: Path(figures_dir) / item["file"] for item in manifest.get("figures", [])}
        write_pdf(render_html(context, embed=False), out_pdf, figures)
    return context


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablationlab report", description=__doc__.split("\n")[0])
    parser.add_argument("--study-report", required=True, help="results/study/report.json")
    parser.add_argument("--study", help="results/study/experiments.json (default: next to --study-report)")
    parser.add_argument("--summary", dest="summary_dir", required=True, help="folder with runs.csv and experiments.csv")
    parser.add_argument("--figures", dest="figures_dir", required=True, help="folder with figures.json and the figures")
    parser.add_argument("--data", dest="data_dir", help="prepared data folder, for split sizes (optional)")
    parser.add_argument(
        "--benchmarks",
        dest="benchmarks_dir",
        help="folder of Snakemake benchmark TSVs, for wall time per job (optional)",
    )
    parser.add_argument(
        "--benchmark-files",
        nargs="+",
        metavar="TSV",
        help="the study's train jobs' benchmark files under --benchmarks (default: every TSV there)",
    )
    parser.add_argument("--commit", help="git commit to show (default: `git rev-parse HEAD`, if any)")
    parser.add_argument("--out-html", required=True, help="reports/report.html")
    parser.add_argument("--out-pdf", help="reports/report.pdf (omit to skip the PDF)")
    parser.add_argument(
        "--seeds", dest="seed_plan", help="adaptive seeding's results/adaptive/seeds.json: each experiment's seeds"
    )
    args = parser.parse_args(argv)
    try:
        report(**vars(args))  # each option's dest is the name of report()'s parameter
    except (ReportError, SummaryError) as exc:
        parser.exit(2, f"report: error: {exc}\n")
    print(f"wrote {args.out_html}" + (f" and {args.out_pdf}" if args.out_pdf else ""))
    return 0
