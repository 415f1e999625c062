"""ablationlab.io: atomic writes that never leave a partial file and name the file when they fail."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import immutable

from ablationlab import io
from ablationlab.__main__ import main

REPO = Path(__file__).resolve().parents[1]


def _write_under_file_size_limit(target, size: int, limit: int = 1000) -> str:
    """Write ``size`` bytes to ``target`` with ``io.write_text`` in a child process whose writes
    past ``limit`` bytes fail with EFBIG (Python ignores SIGXFSZ); return what it printed."""
    code = (
        "import sys; from ablationlab import io\n"
        "try:\n    io.write_text(sys.argv[1], 'x' * int(sys.argv[2]))\n"
        "except OSError as exc:\n    print(type(exc).__name__, exc)"
    )
    limit_writes = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # noqa: E731
    proc = subprocess.run(
        [sys.executable, "-c", code, str(target), str(size)],
        capture_output=True,
        text=True,
        preexec_fn=limit_writes,
        timeout=120,
        check=True,
    )
    return proc.stdout.strip()


def test_failed_write_names_the_target_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old")
    assert _write_under_file_size_limit(target, 5000) == f"OSError [Errno 27] File too large: '{target}'"
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary left behind
    assert _write_under_file_size_limit(target, 500) == ""  # under the limit: written
    assert target.read_text() == "x" * 500


def test_unwritable_directory_names_the_target(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(OSError, match=r"results/summary/runs\.csv"):
        io.write_json(blocker / "summary" / "runs.csv", {})


def test_publish_puts_a_copy_of_its_own_in_place(tmp_path):
    rendered, published = tmp_path / "results" / "report.html", tmp_path / "reports" / "report.html"
    io.write_text(rendered, "<p>first</p>")
    io.publish(rendered, published)
    assert published.read_text() == "<p>first</p>"
    assert published.stat().st_ino != rendered.stat().st_ino and published.stat().st_nlink == 1
    assert published.stat().st_mtime_ns == rendered.stat().st_mtime_ns  # never older than its input
    published.write_text("<p>annotated by the user</p>")  # the user's copy: the build's stays
    assert rendered.read_text() == "<p>first</p>"
    io.write_text(rendered, "<p>second</p>")
    io.publish(rendered, published)
    assert published.read_text() == "<p>second</p>"
    assert sorted(p.name for p in published.parent.iterdir()) == ["report.html"]  # no temporary left


def test_publishing_onto_an_immutable_file_names_it_and_keeps_the_last_report(tmp_path):
    rendered, published = tmp_path / "results" / "report.html", tmp_path / "reports" / "report.html"
    io.write_text(rendered, "<p>first</p>")
    io.publish(rendered, published)
    with immutable(published):
        io.write_text(rendered, "<p>second</p>")  # the build's copy is not the file the user locked
        with pytest.raises(OSError) as err:
            io.publish(rendered, published)
        assert err.value.filename == str(published) and str(rendered) not in str(err.value)
        assert published.read_text() == "<p>first</p>"
    assert sorted(p.name for p in published.parent.iterdir()) == ["report.html"]


def test_cli_reports_a_write_error_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("")
    assert (
        main(["prepare", "--dataset", "digits", "--out", str(blocker / "digits"), "--root", str(tmp_path / "raw")]) != 0
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(blocker / "digits") in err, err


def _study_with_log(tmp_path: Path, limit: int | None) -> subprocess.CompletedProcess:
    """`python -m ablationlab --log study.log study ... --out out`, every write past ``limit`` bytes failing."""
    cmd = [sys.executable, "-m", "ablationlab", "--log", str(tmp_path / "study.log"), "study"]
    configs = [str(REPO / "config.yaml"), str(REPO / "presets" / "smoke.yaml"), "--out", str(tmp_path / "out")]

    def limit_writes() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [*cmd, *configs], capture_output=True, text=True, preexec_fn=limit_writes, cwd=tmp_path, timeout=120
    )


def test_log_option_takes_the_output_and_a_write_error_still_reaches_the_terminal(tmp_path):
    """The workflow's jobs run `python -m ablationlab --log FILE ...`: on a full disk FILE cannot be written
    either (RLIMIT_FSIZE 0: every write fails), and the one error line naming the file is on stderr."""
    ok = _study_with_log(tmp_path, None)
    assert ok.returncode == 0 and ok.stdout == ok.stderr == ""
    assert (tmp_path / "study.log").read_text().rstrip().endswith("3 experiments x 1 seeds = 3 runs on digits")
    full = _study_with_log(tmp_path, 0)
    target = tmp_path / "out" / "experiments.json"
    assert full.returncode == 1 and full.stderr == f"error: [Errno 27] File too large: '{target}'\n"
    assert (tmp_path / "study.log").read_text() == ""


class _StudyError(ValueError):
    pass


def test_json_errors_name_the_file_in_one_line(tmp_path):
    bad, good = tmp_path / "bad.json", tmp_path / "good.json"
    bad.write_text("{not json")
    good.write_text("[1]")
    with pytest.raises(_StudyError, match=r"bad\.json: not valid JSON \(Expecting"), io.json_errors(bad, _StudyError):
        io.read_json(bad)
    with pytest.raises(ValueError, match=r"^--recipe: no file$"), io.json_errors("--recipe", missing="no file"):
        io.read_json(tmp_path / "missing.json")
    with io.json_errors(good):
        assert io.read_json(good) == [1]


def test_key_digests_name_what_changed_and_cover_the_whole_content():
    study = {
        "name": "s",
        "experiments": [
            {"id": "baseline", "recipe": {"optimizer": {"lr": 0.1, "name": "sgd"}, "epochs": 3}},
            {"id": "dropout/p=0.5", "recipe": {"optimizer": {"lr": 0.1, "name": "sgd"}, "epochs": 3}},
        ],
        "notes": {"text": "x" * 5000},
    }
    before = io.key_digests(study)
    assert all(len(entry) < 80 for entry in before)  # compact: a digest, never the value
    assert len(set(before)) == len(before)

    def changed(edit):
        after = json.loads(json.dumps(study))
        edit(after)
        new = io.key_digests(after)
        keys = lambda entries: sorted(e.split()[0] for e in entries)  # noqa: E731
        return keys(set(new) - set(before)), keys(set(before) - set(new))

    lr = lambda s: s["experiments"][1]["recipe"]["optimizer"].update(lr=0.2)  # noqa: E731
    assert changed(lr) == (["(all)", "experiments[dropout/p=0.5].recipe.optimizer"],) * 2
    assert changed(lambda s: s["notes"].update(text="y")) == (["(all)", "notes.text"],) * 2
    assert changed(lambda s: s["experiments"].reverse()) == (["(all)", "experiments[order]"],) * 2
    added = changed(lambda s: s.update(author="a"))
    assert added == (["(all)", "author"], ["(all)"])
    assert changed(lambda s: None) == ([], [])


def test_write_table_writes_what_pandas_writes(tmp_path):
    """Every kind of column the run files hold (ints, float32 and float64, bools, text needing quotes,
    missing values, ints mixed with floats), byte for byte as pandas' to_csv(index=False) writes them."""
    import numpy as np
    import pandas as pd

    columns = {
        "index": np.arange(4),
        "label": np.array([3, 1, 4, 1], dtype=np.int64),
        "confidence": np.array([0.1, 0.99999, 1 / 3, 1e-7], dtype=np.float32),
        "loss": [1 / 3, float("nan"), 1e16, float("inf")],
        "val": [None, 0.5, 2.0, None],
        "mixed": [1, 2.5, 3, 4],
        "ints": [1, 2, 3, 4],
        "correct": np.array([True, False, True, True]),
        "name": ["a", "b,c", 'say "hi"', ""],
        "empty": [None, None, None, None],
    }
    io.write_table(tmp_path / "ours.csv", columns)
    pd.DataFrame(columns).to_csv(tmp_path / "pandas.csv", index=False)
    assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "pandas.csv").read_bytes()
    io.write_table(tmp_path / "none.csv", {"epoch": [], "loss": []})
    pd.DataFrame({"epoch": [], "loss": []}).to_csv(tmp_path / "none_pandas.csv", index=False)
    assert (tmp_path / "none.csv").read_bytes() == (tmp_path / "none_pandas.csv").read_bytes()


def test_write_table_refuses_columns_of_different_lengths(tmp_path):
    with pytest.raises(ValueError, match="different lengths"):
        io.write_table(tmp_path / "t.csv", {"a": [1, 2], "b": [1]})
    assert not (tmp_path / "t.csv").exists()


def test_same_bytes_and_copy_file(tmp_path):
    import torch

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    data = bytes(range(256)) * 5000  # more than one block
    a.write_bytes(data)
    io.copy_file(a, b)
    assert b.read_bytes() == data and io.same_bytes(a, b)
    b.write_bytes(data[:-1] + b"x")
    assert not io.same_bytes(a, b)
    b.write_bytes(data[:-1])
    assert not io.same_bytes(a, b)
    assert io.load_torch(io.torch_bytes({"w": torch.arange(3)}))["w"].tolist() == [0, 1, 2]
