"""report: a real study (digits) rendered to one self-contained HTML file and a PDF; user text escaped."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pandas as pd
import pypdf
import pytest

from ablationlab import figures, io, report
from ablationlab.__main__ import main

from test_summarize import GROUPS, study_runs  # noqa: F401  (session fixture: a small real study)


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
def rendered(study_runs, tmp_path_factory):  # noqa: F811
    root, data_dir = study_runs
    out = tmp_path_factory.mktemp("report")
    figures.figures(root / "study" / "experiments.json", root / "summary", data_dir, root / "runs", out / "figures")
    bench = out / "benchmarks" / "train" / "baseline"
    bench.mkdir(parents=True)  # Snakemake's benchmark format
    (bench / "seed0.tsv").write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                                     "12.5\t0:00:12\t321.5\t900.1\t300.0\t310.0\t0.1\t0.2\t95.0\t11.9\n")
    context = report.report(root / "study" / "report.json", root / "summary", out / "figures", out / "report.html",
                            out / "report.pdf", data_dir=data_dir, benchmarks_dir=out / "benchmarks", commit="abc1234")
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
    for gid, (title, *_rest) in GROUPS.items():
        assert f"sec-{gid}" in ids and title in plain
        section = text[text.index(f'id="sec-{gid}"'):]
        section = section[:section.index("</section>")]
        assert "<table" in section and "<img" in section
        for exp in exps[exps["group"] == gid].itertuples():
            assert f"{exp.test_acc_mean * 100:.1f}" in section
    for heading in ("Setup", "Baseline", "Comparison of all experiments", "Reproducibility", "Number of parameters"):
        assert heading in plain
    assert "Digits <ablation> study" in plain and "&lt;ablation&gt;" in text  # the title is escaped
    # the best row of a group is highlighted, a diverged experiment is shown as such
    assert re.search(r'<tr class="best', text)
    lr = text[text.index('id="sec-optimizer"'):]
    assert 'class="status bad">diverged</span>' in lr[:lr.index("</section>")] and "diverged in 2 of 2 seeds" in plain


def test_findings_sentence_matches_the_summary(rendered):
    root, _, context = rendered
    exps = pd.read_csv(root / "summary" / "experiments.csv").set_index("experiment")
    bn = exps.loc["batch_norm/bn"]
    text = next(s for s in context["sections"] if s["id"] == "batch_norm")["findings"][0]["text"]
    assert text.startswith(f"bn: {bn['delta_acc'] * 100:+.1f} pp vs baseline")
    if pd.notna(bn["p_value"]):
        assert f"95% CI {bn['delta_ci_low'] * 100:+.1f}…{bn['delta_ci_high'] * 100:+.1f}" in text
        assert ("— significant" if bn["p_value"] < 0.05 else "— not significant") in text
    assert "2 seeds" in text


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
    assert "s3cret" not in text and "alice:***@127.0.0.1:5000" in plain  # tracking password redacted


def test_reproducibility_appendix(rendered):
    root, out, _ = rendered
    text = (out / "report.html").read_text(encoding="utf-8")
    plain = "".join(_parse(text).text)
    assert 'href="http://127.0.0.1:5000/#/experiments/1/runs/abc123"' in text  # MLflow link from mlflow.json
    assert "abc1234" in plain and "0" * 64 in plain  # commit and config hash
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
    for title, *_rest in GROUPS.values():
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
    out = str(report.markdown("# Title\n\n![pic](http://evil.example/x.png) [ok](https://example.org) "
                              "[bad](vbscript:x) <b onclick=x>b</b>"))
    assert "<h4>Title</h4>" in out and "<img" not in out and 'href="https://example.org"' in out
    assert "vbscript" not in out.split("[bad]")[0] and "href=\"vbscript" not in out and "&lt;b onclick=x&gt;" in out
    assert report.redact_uri("https://u:pw@host:5000/x") == "https://u:***@host:5000/x"
    assert report.redact_uri("sqlite:///results/mlflow.db") == "sqlite:///results/mlflow.db"
    assert report.pp(0.018) == "+1.8" and report.pp(-0.0001) == "±0.0" and report.pvalue(0.0004) == "<0.001"


def test_pdf_refuses_external_resources(tmp_path):
    with pytest.raises(report.ReportError, match="not self-contained"):
        report.write_pdf('<p>x</p><img src="http://127.0.0.1:9/x.png">', tmp_path / "x.pdf")
    assert not (tmp_path / "x.pdf").exists()


def test_cli_and_errors(rendered, tmp_path):
    root, out, _ = rendered
    args = ["report", "--study-report", str(root / "study" / "report.json"), "--summary", str(root / "summary"),
            "--figures", str(out / "figures"), "--out-html", str(tmp_path / "r.html")]
    assert main(args) == 0 and (tmp_path / "r.html").exists() and not (tmp_path / "r.pdf").exists()
    with pytest.raises(SystemExit) as exc:
        main(args[:-4] + ["--figures", str(tmp_path), "--out-html", str(tmp_path / "r2.html")])
    assert exc.value.code == 2 and not (tmp_path / "r2.html").exists()
    with pytest.raises(report.ReportError, match="figures.json: figure manifest not found"):
        report.read_manifest(tmp_path)
