"""Provenance: the git commit (``+dirty`` when tracked files differ) and package versions."""

import subprocess

from ablationlab.provenance import git_commit, package_versions


def _git(cwd, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True
    )


def test_git_commit(tmp_path):
    assert git_commit(tmp_path) is None  # not a repository
    _git(tmp_path, "init", "-q")
    (tmp_path / "f").write_text("a")
    _git(tmp_path, "add", "f")
    _git(tmp_path, "commit", "-qm", "x")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "f").write_text("b")
    assert git_commit(tmp_path) == head + "+dirty"


def test_package_versions():
    versions = {p["name"]: p["version"] for p in package_versions(["pandas", "no-such-package-x"])}
    assert versions["python"] and versions["pandas"][0].isdigit() and versions["no-such-package-x"] == "not installed"
