"""ablationlab.io: atomic writes that never leave a partial file and name the file when they fail."""

from __future__ import annotations

import resource

import pytest

from ablationlab import io
from ablationlab.__main__ import main


@pytest.fixture()
def file_size_limit():
    """Writes past 1000 bytes fail with EFBIG (Python ignores SIGXFSZ) while the test runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    yield
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_failed_write_names_the_target_and_keeps_the_old_file(tmp_path, file_size_limit):
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(OSError, match=r"^\[Errno 27\] File too large: '.*/report\.html'$"):
        io.write_text(target, "x" * 5000)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary left behind


def test_unwritable_directory_names_the_target(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where a directory should be")
    with pytest.raises(OSError, match=r"results/summary/runs\.csv"):
        io.write_json(blocker / "summary" / "runs.csv", {})


def test_cli_reports_a_write_error_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "out"
    blocker.write_text("")
    assert main(["prepare", "--dataset", "digits", "--out", str(blocker / "digits"),
                 "--root", str(tmp_path / "raw")]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(blocker / "digits") in err, err
