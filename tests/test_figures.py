"""figures: the plan from the study table alone; every planned figure drawn from real digits runs."""

from __future__ import annotations

import struct
from pathlib import Path

import pandas as pd
import pytest

from ablationlab import figure_plan, figures, io, models
from ablationlab.runtime import build_network

REPO = Path(__file__).resolve().parents[1]


def _png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def drawn(study_runs, tmp_path_factory):
    root, data_dir = study_runs
    out = tmp_path_factory.mktemp("figures")
    manifest = figures.figures(root / "study" / "experiments.json", root / "summary", data_dir, root / "runs", out)
    return root, data_dir, out, manifest


def test_plan_follows_the_study(study_runs):
    root, _ = study_runs
    study = io.read_json(root / "study" / "experiments.json")
    plan = figure_plan.plan(study)
    kinds = {(item["group"], item["kind"]) for item in plan}
    assert {("baseline", k) for k in ("curves", "params", "filters", "activations")} <= kinds
    assert ("dropout", "sweep") in kinds and ("batch_norm", "sweep") not in kinds
    assert ("early_stopping", "early_stopping") in kinds and ("dropout", "early_stopping") not in kinds
    assert ("augmentation", "augment") in kinds and ("batch_norm", "augment") not in kinds
    for group in ("batch_norm", "dropout", "early_stopping", "augmentation", "optimizer"):
        assert {(group, "curves"), (group, "test_acc"), (group, "forest")} <= kinds
    assert ("baseline", "forest") not in kinds
    assert {k for g, k in kinds if g == figure_plan.STUDY_GROUP} == {
        "comparison",
        "best_filters",
        "confusion",
        "misclassified",
    }
    assert plan[0]["group"] == "baseline"  # report order
    assert len({i["file"] for i in plan}) == len(plan)


def test_every_planned_figure_is_drawn(drawn):
    root, _, out, manifest = drawn
    study = io.read_json(root / "study" / "experiments.json")
    plan = figure_plan.plan(study)
    assert [m["file"] for m in manifest["figures"]] == [p["file"] for p in plan]
    assert io.read_json(out / "figures.json") == manifest
    for item in manifest["figures"]:
        assert item["caption"] and item["experiments"] and 0 < item["width_in"] <= figures.WIDTH
        path = out / item["file"]
        if item["kind"] == "params":
            continue
        width, height = _png_size(path)
        assert width >= 600 and height >= 60, (item["file"], width, height)  # print resolution (160 dpi)
    assert manifest["classes"] == [str(i) for i in range(10)]


def test_figures_drawn_in_parallel_are_the_same_files(drawn, tmp_path):
    root, data_dir, out, manifest = drawn
    parallel = figures.figures(
        root / "study" / "experiments.json", root / "summary", data_dir, root / "runs", tmp_path, jobs=2
    )
    assert parallel == manifest
    for item in manifest["figures"]:
        assert (tmp_path / item["file"]).read_bytes() == (out / item["file"]).read_bytes(), item["file"]


def test_best_experiment_and_params_table(drawn):
    root, data_dir, out, manifest = drawn
    exps = pd.read_csv(root / "summary" / "experiments.csv")
    ok = exps[exps["status"] != "diverged"]
    assert manifest["best_experiment"] == ok.loc[ok["test_acc_mean"].idxmax(), "experiment"]
    assert "optimizer/lr=1000" not in manifest["best_experiment"]
    captions = {m["kind"]: m["caption"] for m in manifest["figures"]}
    assert manifest["best_experiment"] in captions["confusion"] and "seeds 0, 1" in captions["confusion"]

    table = pd.read_csv(out / "baseline_params.csv")
    assert list(table.columns) == ["layer", "type", "output_shape", "params", "trainable", "param_formula"]
    recipe = io.read_json(root / "study" / "experiments.json")["experiments"][0]["recipe"]
    model = build_network(recipe, io.read_json(data_dir / "meta.json"), pretrained=False)
    assert table["params"].sum() == models.count_params(model)[1]
    runs = pd.read_csv(root / "summary" / "runs.csv")
    assert table["trainable"].sum() == runs.loc[runs["experiment"] == "baseline", "params"].iloc[0]
    conv = table[table["type"] == "Conv2d"].iloc[0]
    assert conv["param_formula"] == "(3*3*1+1)*8" and conv["params"] == 80


def test_early_stopping_caption_reports_the_stop_epochs(drawn):
    root, _, _, manifest = drawn
    caption = next(m["caption"] for m in manifest["figures"] if m["kind"] == "early_stopping")
    stops = [
        io.read_json(root / "runs" / "early_stopping/patience=1" / f"seed{s}" / "train.json")["epochs_run"]
        for s in (0, 1)
    ]
    assert f"stopped at epoch {stops[0]}, {stops[1]}" in caption


def test_forest_plot_is_drawn_per_group(drawn):
    _, _, out, manifest = drawn
    forests = [m for m in manifest["figures"] if m["kind"] == "forest"]
    assert [m["group"] for m in forests] == ["batch_norm", "dropout", "early_stopping", "augmentation", "optimizer"]
    for m in forests:
        assert (out / m["file"]).exists() and "baseline" not in m["experiments"] and "Holm" in m["caption"]
    assert next(m for m in forests if m["group"] == "dropout")["experiments"] == ["dropout/p=0.2", "dropout/p=0.5"]


def test_forest_labels_say_each_verdict():
    nan = float("nan")
    rows = pd.DataFrame(
        [
            dict(
                experiment="a",
                delta_acc=0.018,
                delta_ci_low=0.011,
                delta_ci_high=0.025,
                p_value_holm=0.004,
                verdict="significant",
                status="finished",
            ),
            dict(
                experiment="b",
                delta_acc=0.002,
                delta_ci_low=-0.004,
                delta_ci_high=0.008,
                p_value_holm=0.7,
                verdict="no_effect",
                status="finished",
            ),
            dict(
                experiment="c",
                delta_acc=-0.03,
                delta_ci_low=-0.09,
                delta_ci_high=0.03,
                p_value_holm=0.3,
                verdict="undecided",
                status="finished",
            ),
            dict(
                experiment="d",
                delta_acc=-0.8,
                delta_ci_low=nan,
                delta_ci_high=nan,
                p_value_holm=nan,
                verdict=nan,
                status="diverged",
            ),
            dict(
                experiment="e",
                delta_acc=nan,
                delta_ci_low=nan,
                delta_ci_high=nan,
                p_value_holm=nan,
                verdict=nan,
                status="incomplete (0/2)",
            ),
        ]
    )
    fig = figures.draw_forest(rows, {e: e for e in rows["experiment"]}, 0.01)
    ax = fig.axes[0]
    right = [t.get_text() for t in ax.child_axes[0].get_yticklabels()][::-1]
    assert right == [
        "Holm p 0.004 · significant",
        "Holm p 0.700 · no effect",
        "Holm p 0.300 · undecided",
        "diverged",
        "no test",
    ]
    low, high = ax.get_xlim()
    assert low > -15 and high > 2.5  # the diverged −80 pp is drawn at the edge, not on the scale
    figures._plt().close(fig)


def test_log_axis_for_learning_rates():
    assert figures._is_log("optimizer.lr", [0.1, 0.01, 0.0001])
    assert not figures._is_log("model.dropout", [0.1, 0.3, 0.5])
    assert figures._is_log("batch_size", [16, 2048]) and not figures._is_log("batch_size", [16, 256])
    assert figures._label("cost $5 and $x$") == r"cost \$5 and \$x\$"


def test_missing_inputs_give_clear_errors(study_runs, tmp_path):
    from ablationlab.summarize import SummaryError

    root, data_dir = study_runs
    with pytest.raises(SummaryError, match="runs.csv: summary file not found"):
        figures.figures(root / "study" / "experiments.json", tmp_path, data_dir, root / "runs", tmp_path / "out")
    study = io.read_json(root / "study" / "experiments.json")
    study["experiments"].append({**study["experiments"][1], "id": "batch_norm/extra"})
    with pytest.raises(SummaryError, match=r"lacks experiments \['batch_norm/extra'\]"):
        figures.figures(study, root / "summary", data_dir, root / "runs", tmp_path / "out")


# --------------------------------------------------------------------------- captions

KINDS = sorted({*figures._DRAW, "params"})


def test_every_kind_has_one_caption_template_and_the_workflow_reads_it():
    assert sorted(p.stem for p in figure_plan.CAPTIONS.glob("*.rst")) == KINDS
    rules = (REPO / "workflow" / "rules" / "report.smk").read_text(encoding="utf-8")
    assert '"caption": str(abl_figure_plan.caption_file(item["kind"]))' in rules
    assert not [p.name for p in (REPO / "workflow" / "report").glob("*.rst") if p.stem in KINDS]


@pytest.mark.parametrize("kind", KINDS)
def test_snakemake_renders_each_caption_without_the_figures_values(kind):
    """What `snakemake --report` shows: the template under Snakemake's Jinja settings with none of the
    figure's values, then reStructuredText, without a docutils complaint."""
    import jinja2
    from docutils.core import publish_parts

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # snakemake.report's environment
    text = env.from_string(figure_plan.caption_file(kind).read_text(encoding="utf-8")).render(snakemake=None)
    assert text.strip() and "  " not in text and "None" not in text and " ." not in text and "()" not in text
    html = publish_parts(text, writer="html", settings_overrides={"report_level": 1})["body"]
    assert "system-message" not in html and "<p>" in html


def test_the_report_captions_are_the_templates_with_the_figures_values():
    assert figures.figure_caption("curves", n="3") == (
        "Training (dashed) and validation (solid) loss and accuracy per epoch: mean over 3 seeds, "
        "band = min–max over seeds."
    )
    assert figures.figure_caption("early_stopping", full=None, stops=["a: stopped at epoch 3 (best 2)"]) == (
        "Early stopping: the monitored validation curve of each seed, dashed line where it stopped, star at its "
        "best epoch. a: stopped at epoch 3 (best 2)."
    )
    assert figures.figure_caption("forest", reference=None, level="95").startswith(
        "Δ test accuracy against the reference with its 95% confidence interval (paired t"
    )
    with pytest.raises(ValueError, match=r"caption 'misclassified' reads \['experiment', 'n', 'seed'\], given"):
        figures.figure_caption("misclassified", experiment="x", n=3)  # the generic text would hide a lost value
