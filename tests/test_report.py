"""report: a real study (digits) rendered to one self-contained HTML file and a PDF; user text escaped."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pandas as pd
import pypdf
import pytest
from helpers import STUDY_CONFIG

from ablationlab import figures, io, report
from ablationlab.__main__ import main
from ablationlab.summarize import read_summary


class _Collect(HTMLParser):
    """Every start tag with its attributes, the text, and the ids of elements."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(text: str) -> _Collect:
    parser = _Collect()
    parser.feed(text)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def rendered(study_runs, tmp_path_factory):
    root, data_dir = study_runs
    out = tmp_path_factory.mktemp("report")
    figures.figures(root / "study" / "experiments.json", root / "summary", data_dir, root / "runs", out / "figures")
    bench = out / "benchmarks" / "train" / "baseline"
    bench.mkdir(parents=True)  # Snakemake's benchmark format
    (bench / "seed0.tsv").write_text(
        "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
        "12.5\t0:00:12\t321.5\t900.1\t300.0\t310.0\t0.1\t0.2\t95.0\t11.9\n"
    )
    context = report.report(
        root / "study" / "report.json",
        root / "summary",
        out / "figures",
        out / "report.html",
        out / "report.pdf",
        data_dir=data_dir,
        benchmarks_dir=out / "benchmarks",
        commit="abc1234",
    )
    return root, out, context


def test_html_is_self_contained(rendered):
    _, out, _ = rendered
    text = (out / "report.html").read_text(encoding="utf-8")
    doc = _parse(text)
    imgs = [attrs for tag, attrs in doc.tags if tag == "img"]
    assert len(imgs) == len(io.read_json(out / "figures" / "figures.json")["figures"]) - 1  # all but the params CSV
    assert all(a["src"].startswith("data:image/png;base64,") for a in imgs)
    for tag, attrs in doc.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            if name in ("src", "srcset", "poster", "data"):
                assert value.startswith("data:"), (tag, name, value[:60])
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text.replace('href="http://127.0.0.1:5000/', ""))
    assert "@import" not in text and not re.search(r"url\((?!data:)", text)


def test_every_group_has_its_section_table_and_figures(rendered):
    root, out, _ = rendered
    text = (out / "report.html").read_text(encoding="utf-8")
    doc = _parse(text)
    ids = [a.get("id") for _, a in doc.tags]
    plain = "".join(doc.text)
    exps = pd.read_csv(root / "summary" / "experiments.csv")
    for gid, title in ((g["id"], g["title"]) for g in STUDY_CONFIG["ablations"]):
        assert f"sec-{gid}" in ids and title in plain
        section = text[text.index(f'id="sec-{gid}"') :]
        section = section[: section.index("</section>")]
        assert "<table" in section and "<img" in section
        for exp in exps[exps["group"] == gid].itertuples():
            assert f"{exp.test_acc_mean * 100:.1f}" in section
    for heading in ("Setup", "Baseline", "Comparison of all experiments", "Reproducibility", "Number of parameters"):
        assert heading in plain
    assert "Digits <ablation> study" in plain and "&lt;ablation&gt;" in text  # the title is escaped
    # the best row of a group is highlighted, a diverged experiment is shown as such
    assert re.search(r'<tr class="best', text)
    lr = text[text.index('id="sec-optimizer"') :]
    assert 'class="status bad">diverged</span>' in lr[: lr.index("</section>")] and "diverged in 2 of 2 seeds" in plain


def test_findings_sentence_matches_the_summary(rendered):
    root, _, context = rendered
    exps = pd.read_csv(root / "summary" / "experiments.csv").set_index("experiment")
    bn = exps.loc["batch_norm/bn"]
    text = next(s for s in context["sections"] if s["id"] == "batch_norm")["findings"][0]["text"]
    assert text.startswith(f"bn: {bn['delta_acc'] * 100:+.1f} pp vs baseline")
    if pd.notna(bn["p_value_holm"]):
        assert f"95 % CI {bn['delta_ci_low'] * 100:+.1f}…{bn['delta_ci_high'] * 100:+.1f}" in text
        assert f"Holm p = {report.pvalue(bn['p_value_holm'])} of 1 comparison)" in text
        assert f"— {bn['verdict'].replace('_', ' ')}" in text
    assert "2 seeds" in text


# hand-set statistics columns (the stats stage's contract) over the real study: one row per verdict
VERDICTS = {
    "batch_norm/bn": dict(
        delta_acc=0.018,
        delta_ci_low=0.011,
        delta_ci_high=0.025,
        test="paired_t",
        n_pairs=2,
        p_value=0.004,
        p_value_holm=0.004,
        holm_family=1,
        q_value=0.012,
        effect_size=3.2,
        effect_size_kind="d_z",
        prob_improvement=1.0,
        prob_improvement_ci_low=1.0,
        prob_improvement_ci_high=1.0,
        mde_acc=0.012,
        seeds_needed=2,
        verdict="significant",
        p_value_wilcoxon=0.031,
    ),
    "dropout/p=0.2": dict(
        delta_acc=0.002,
        delta_ci_low=-0.004,
        delta_ci_high=0.008,
        test="paired_t",
        n_pairs=2,
        p_value=0.35,
        p_value_holm=0.7,
        holm_family=2,
        q_value=0.42,
        effect_size=0.3,
        effect_size_kind="d_z",
        prob_improvement=0.5,
        prob_improvement_ci_low=0.0,
        prob_improvement_ci_high=1.0,
        mde_acc=0.009,
        seeds_needed=40,
        verdict="no_effect",
    ),
    "dropout/p=0.5": dict(
        delta_acc=0.03,
        delta_ci_low=-0.05,
        delta_ci_high=0.11,
        test="welch",
        n_pairs=1,
        p_value=0.3,
        p_value_holm=0.6,
        holm_family=2,
        q_value=0.42,
        effect_size=0.9,
        effect_size_kind="hedges_g",
        prob_improvement=0.75,
        prob_improvement_ci_low=0.25,
        prob_improvement_ci_high=1.0,
        mde_acc=0.2,
        seeds_needed=11,
        verdict="undecided",
    ),
    "augmentation/hflip": dict(
        delta_acc=0.0,
        delta_ci_low=-0.1,
        delta_ci_high=0.1,
        test="paired_t",
        n_pairs=2,
        p_value=1.0,
        p_value_holm=1.0,
        holm_family=1,
        q_value=1.0,
        mde_acc=0.3,
        seeds_needed=float("nan"),
        verdict="undecided",
    ),
    "optimizer/lr=1000": dict(
        test="paired_t",
        n_pairs=2,
        p_value=0.08,
        p_value_holm=0.08,
        holm_family=1,
        q_value=0.16,
        verdict="undecided",
        seeds_needed=5,
    ),
}


@pytest.fixture(scope="module")
def verdicts(rendered):
    """The context and HTML of the real study with :data:`VERDICTS` set and one flagged curve reading."""
    root, out, _ = rendered
    runs, exps = read_summary(root / "summary")
    exps = exps.set_index("experiment", drop=False)
    for exp, values in VERDICTS.items():
        for key, value in values.items():
            exps.loc[exp, key] = value
    diag = report.read_diagnostics(root / "summary")
    diag.loc[diag["experiment"] == "dropout/p=0.5", ["flags", "reading"]] = ["unstable", "Unstable: it swings."]
    diag.loc[diag["experiment"] == "batch_norm/bn", ["flags", "reading"]] = [None, "Curves look healthy."]
    study = io.read_json(root / "study" / "experiments.json")
    context = report.build_context(
        io.read_json(root / "study" / "report.json"),
        study,
        runs,
        exps.reset_index(drop=True),
        report.read_manifest(out / "figures"),
        out / "figures",
        diagnostics=diag,
    )
    return context, report.render_html(context)


def _section(html: str, anchor: str) -> str:
    part = html[html.index(f'id="{anchor}"') :]
    return part[: part.index("</section>")]


def test_findings_are_verdicts_with_the_holm_p_value(verdicts):
    context, _ = verdicts
    texts = {s["id"]: [f["text"] for f in s["findings"]] for s in context["sections"]}
    assert texts["batch_norm"][0].startswith(
        "bn: +1.8 pp vs baseline (95 % CI +1.1…+2.5, paired t over 2 seeds, "
        "Holm p = 0.004 of 1 comparison) — significant."
    )
    assert texts["dropout"][0].endswith(
        "Holm p = 0.700 of 2 comparisons) — no effect larger than 0.9 pp (MDE at 80 % power)."
    )
    assert (
        "Welch t over 2 seeds, Holm p = 0.600 of 2 comparisons) — undecided: too few seeds, 11 would be needed "
        "to tell." in texts["dropout"][1]
    )
    assert texts["augmentation"][0].endswith(  # Δ 0 < min_effect: no seed count (summarize leaves it empty)
        "— undecided: too few seeds to rule out 1.0 pp, the smallest effect worth detecting (MDE 30.0 pp), and the "
        "observed Δ is smaller."
    )
    assert texts["optimizer"][0].startswith("lr=1000: diverged in 2 of 2 seeds")  # diverged stays flagged
    sig = {s["id"]: [f["significant"] for f in s["findings"]] for s in context["sections"]}
    assert sig["batch_norm"] == [True] and sig["dropout"] == [False, False] and sig["optimizer"] == [False]


def test_verdict_table_per_group(verdicts):
    context, html = verdicts
    rows = {s["id"]: s["verdicts"] for s in context["sections"]}
    assert [r["verdict"] for r in rows["dropout"]] == ["no effect", "undecided"]
    assert rows["batch_norm"][0]["effect_kind"] == "d_z" and rows["batch_norm"][0]["family"] == 1
    assert rows["optimizer"][0]["verdict"] == "diverged" and rows["dropout"][1]["test"] == "Welch t"
    bn = _section(html, "sec-batch_norm")
    assert (
        "Verdicts" in bn and 'class="results verdicts"' in bn and '<span class="verdict significant">significant' in bn
    )
    cells = re.sub(r"<[^>]+>", " ", bn[bn.index('class="results verdicts"') :])
    for text in ("+1.8", "+1.1…+2.5", "paired t", "Wilcoxon p 0.031", "0.004", "(1)", "3.20", "1.00", "1.2", "2 seeds"):
        assert text in cells, text
    dropout = _section(html, "sec-dropout")
    assert '<span class="verdict no-effect">no effect' in dropout and "~11 seeds to tell" in dropout
    assert "Hedges&#39; g" in dropout
    assert '<span class="verdict diverged">diverged' in _section(html, "sec-optimizer")
    for s in context["sections"]:  # the forest plot sits with its table, numbered in order
        assert [f["kind"] for f in s["forest"]] == ["forest"] and "forest" not in [f["kind"] for f in s["figures"]]
        assert s["forest"][0]["number"] < s["figures"][0]["number"] if s["figures"] else True


def test_diagnostics_in_the_findings_box(verdicts):
    _, html = verdicts
    box = _section(html, "sec-dropout")
    box = box[box.index('class="finding"') :]
    assert "Training curves" in box[: box.index("</div>")] and "Unstable: it swings." in box[: box.index("</div>")]
    assert "Curves look healthy." not in html  # only readings with a flag are shown


def test_significance_overview_lists_every_comparison_by_q(rendered, verdicts):
    context, html = verdicts
    sig = context["comparison"]["significance"]
    compared = [
        e["id"] for e in io.read_json(rendered[0] / "study" / "experiments.json")["experiments"] if e["reference"]
    ]
    assert sorted(r["experiment"] for r in sig["rows"]) == sorted(compared)
    qs = [r["q"] for r in sig["rows"]]
    tested = [q for q in qs if q is not None]
    assert tested == sorted(tested) and qs[: len(tested)] == tested  # sorted by q, untested last
    assert sig["n_below"] == 1 and sig["rows"][0]["experiment"] == "batch_norm/bn"
    table = _section(html, "sec-comparison")
    assert "Significance across the study" in table and "Benjamini–Hochberg" in table
    for exp in compared:
        assert f'<td class="text">{exp}</td>' in table


def test_setup_explains_the_statistics_and_looks(rendered):
    root, _, context = rendered
    html = report.render_html(context)
    setup = _section(html, "sec-setup")
    for ref in (
        "Colas et al. 2018",
        "Bouthillier et al. 2021",
        "Agarwal et al. 2021",
        "rliable",
        "paired t-test",
        "Holm",
        "Benjamini–Hochberg",
        "minimum detectable effect",
    ):
        assert ref in setup, ref
    assert "Adaptive seeding" not in setup
    study = io.read_json(root / "study" / "experiments.json") | {"statistics": {"alpha": 0.05, "looks": 4}}
    settings = report.statistics_settings(study)
    assert settings["per_look"] == pytest.approx(0.0125) and settings["ci"] == "98.75"
    looked = report.render_html(context | {"statistics": settings})
    assert "α / 4 = 0.0125" in _section(looked, "sec-setup") and "Bonferroni" in looked


def test_user_text_is_escaped_never_executed(rendered):
    _, out, _ = rendered
    text = (out / "report.html").read_text(encoding="utf-8")
    doc = _parse(text)
    plain = "".join(doc.text)
    assert "<script>alert(1)</script>" in plain and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<img src=x onerror=alert(1)>" in plain
    assert not any(tag == "img" and "onerror" in attrs for tag, attrs in doc.tags)
    assert not any("javascript:" in (attrs.get("href") or "") for _, attrs in doc.tags)
    assert "[click](javascript:alert(1))" in plain and "<strong>bold</strong>" in text  # markdown still works
    assert "s3cret" not in text and "alice" not in text and "***@127.0.0.1:5000" in plain  # credentials redacted


def test_reproducibility_appendix(rendered):
    root, out, _ = rendered
    text = (out / "report.html").read_text(encoding="utf-8")
    plain = "".join(_parse(text).text)
    assert 'href="http://127.0.0.1:5000/#/experiments/1/runs/abc123"' in text  # MLflow link from mlflow.json
    config_hash = io.read_json(root / "study" / "report.json")["config_hash"]
    assert "abc1234" in plain and config_hash in plain  # commit and config hash
    for package in ("torch", "torchvision", "mlflow", "snakemake", "weasyprint"):
        assert re.search(rf"{package}\s*\d+\.\d+", plain)
    assert "train/baseline/seed0" in plain and "12.5 s" in plain  # wall time per job from the benchmark file
    assert "seeds: [0, 1]" in plain  # the resolved config as YAML


def test_pdf_pages_text_and_toc(rendered):
    root, out, _ = rendered
    reader = pypdf.PdfReader(out / "report.pdf")
    assert 10 <= len(reader.pages) <= 40
    pages = [p.extract_text() for p in reader.pages]
    text = "\n".join(pages)
    for title in (g["title"] for g in STUDY_CONFIG["ablations"]):
        assert title in text
    assert "Comparison of all experiments" in text and "Reproducibility" in text
    exps = pd.read_csv(root / "summary" / "experiments.csv")
    for exp in exps.itertuples():
        assert f"{exp.test_acc_mean * 100:.1f}" in text and exp.experiment in text
    assert "<script>alert(1)</script>" in text
    # table of contents with page numbers (target-counter), page footer "n / N"
    assert re.search(r"Comparison of all experiments[ .]*\d+", pages[0])
    assert re.search(rf"\b2 / {len(pages)}\b", pages[1])


def test_markdown_is_safe_and_shifted():
    out = str(
        report.markdown(
            "# Title\n\n![pic](http://evil.example/x.png) [ok](https://example.org) "
            "[bad](vbscript:x) <b onclick=x>b</b>"
        )
    )
    assert "<h4>Title</h4>" in out and "<img" not in out and 'href="https://example.org"' in out
    assert "vbscript" not in out.split("[bad]")[0] and 'href="vbscript' not in out and "&lt;b onclick=x&gt;" in out
    assert report.pp(0.018) == "+1.8" and report.pp(-0.0001) == "±0.0" and report.pvalue(0.0004) == "<0.001"


def test_pdf_refuses_external_resources(tmp_path):
    with pytest.raises(report.ReportError, match="not self-contained"):
        report.write_pdf('<p>x</p><img src="http://127.0.0.1:9/x.png">', tmp_path / "x.pdf")
    assert not (tmp_path / "x.pdf").exists()


def test_the_pdf_is_given_exactly_the_manifests_figures(rendered, tmp_path):
    """The PDF's HTML names its figures (``figure:<file>``) instead of embedding them: WeasyPrint gets
    the manifest's files and nothing else, and lays out the same figures as the HTML shows."""
    _, out, context = rendered
    linked = report.render_html(context, embed=False)
    files = re.findall(r'<img src="figure:([^"]+)"', linked)
    shown = [f["file"] for f in io.read_json(out / "figures" / "figures.json")["figures"] if f["kind"] != "params"]
    assert sorted(files) == sorted(shown) and "data:image" not in linked
    png = out / "figures" / files[0]
    report.write_pdf(f'<img src="figure:{files[0]}">', tmp_path / "one.pdf", {files[0]: png})
    assert (tmp_path / "one.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(report.ReportError, match="not self-contained"):
        report.write_pdf('<img src="figure:other.png">', tmp_path / "x.pdf", {files[0]: png})
    assert not (tmp_path / "x.pdf").exists()


def test_cli_and_errors(rendered, tmp_path):
    root, out, _ = rendered
    args = [
        "report",
        "--study-report",
        str(root / "study" / "report.json"),
        "--summary",
        str(root / "summary"),
        "--figures",
        str(out / "figures"),
        "--out-html",
        str(tmp_path / "r.html"),
    ]
    assert main(args) == 0 and (tmp_path / "r.html").exists() and not (tmp_path / "r.pdf").exists()
    with pytest.raises(SystemExit) as exc:
        main(args[:-4] + ["--figures", str(tmp_path), "--out-html", str(tmp_path / "r2.html")])
    assert exc.value.code == 2 and not (tmp_path / "r2.html").exists()
    with pytest.raises(report.ReportError, match="figures.json: figure manifest not found"):
        report.read_manifest(tmp_path)


def test_untestable_rows_say_why():
    row = {"n": 3, "delta_acc": 0.0, "test": "paired_t", "n_pairs": 3, "verdict": "undecided", "status": "finished"}
    assert report.finding(row, {"n": 3}, "p=0.1", "baseline") == (
        "p=0.1: ±0.0 pp vs baseline (3 seeds; no spread between seeds for a test) — undecided."
    )
    row = {"n": 1, "delta_acc": 0.01, "test": "welch", "n_pairs": 1, "verdict": "undecided", "status": "finished"}
    assert report.finding(row, {"n": 1}, "p=0.1", "baseline") == (
        "p=0.1: +1.0 pp vs baseline (1 seed; too few seeds for a test) — undecided."
    )
    looked = report.statistics_settings({"statistics": {"alpha": 0.05, "looks": 2}})
    row = {
        "n": 4,
        "delta_acc": 0.02,
        "delta_ci_low": 0.001,
        "delta_ci_high": 0.039,
        "test": "paired_t",
        "n_pairs": 4,
        "p_value": 0.02,
        "p_value_holm": 0.02,
        "holm_family": 1,
        "mde_acc": 0.03,
        "seeds_needed": 9,
        "verdict": "undecided",
        "status": "finished",
    }
    assert report.finding(row, {"n": 4}, "bn", "baseline", looked) == (
        "bn: +2.0 pp vs baseline (97.5 % CI +0.1…+3.9, paired t over 4 seeds, Holm p = 0.020 of 1 comparison, "
        "level 0.025 per look) — undecided: too few seeds, 9 would be needed to tell."
    )
