"""Where a result came from: the git commit of the code and the versions of the packages."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterable

PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "kornia",
    "torchinfo",
    "matplotlib",
    "mlflow",
    "snakemake",
    "jinja2",
    "markdown-it-py",
    "weasyprint",
)


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """``HEAD``'s commit (with ``+dirty`` when tracked files differ), or None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0 or not head.stdout.strip():
            return None
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=cwd, capture_output=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.returncode == 1 else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names: Iterable[str] = PACKAGES) -> list[dict[str, str]]:
    """``[{name, version}]``: Python's, then each of ``names`` (``not installed`` if absent)."""
    out = [{"name": "python", "version": platform.python_version()}]
    for name in names:
        try:
            out.append({"name": name, "version": importlib.metadata.version(name)})
        except importlib.metadata.PackageNotFoundError:
            out.append({"name": name, "version": "not installed"})
    return out
