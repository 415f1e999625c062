"""The prepared dataset (written by :mod:`ablationlab.prepare`): reading it, checking it, and the
digests the workflow follows it by.

A prepared directory (``docs/contracts.md``, section *Data*) holds ``{train,val,test}_x.pt``
(uint8 N×C×H×W), ``{train,val,test}_y.pt`` (int64 N) and ``meta.json``, written last: a
directory without ``meta.json`` is incomplete. ``meta.json`` records the sha256 of every
tensor file; :func:`load_split` checks the split it loads against it (``verify=False``
skips that), :func:`verify` checks them all. :func:`data_digest` is what a reader of some
splits sees of it; :func:`folder_manifest` the listing of an image folder to prepare from.

Apart from the downloaders and parsers (:mod:`ablationlab.prepare`) on purpose: the stages that
read prepared data declare this module as code, so editing a downloader re-runs no training.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ablationlab import io

if TYPE_CHECKING:  # torch is imported lazily (planning imports this module)
    import torch

# torch is imported where tensors are read: the workflow verifies a prepared directory
# (verify, corruption) while it parses, and that must stay fast.

SPLITS = ("train", "val", "test")


class DataError(RuntimeError):
    """Bad dataset input, a failed download or a corrupted prepared directory."""


# --------------------------------------------------------------------------- readers


def load_meta(data_dir: str | os.PathLike) -> dict:
    """``meta.json`` of a prepared directory (DataError if it is missing: prepare incomplete)."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"{path} is missing: {data_dir} is not a (complete) prepared dataset; run prepare")
    try:
        return io.read_json(path)
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}); re-run prepare to rebuild {data_dir}") from exc


def _check(data_dir: Path, meta: dict, names) -> None:
    for name in names:
        path = data_dir / name
        expected = meta.get("sha256", {}).get(name)
        if expected is None:
            raise DataError(f"{data_dir / 'meta.json'} has no sha256 for {name}; re-run prepare to rebuild {data_dir}")
        if not path.is_file():
            raise DataError(f"{path} is missing; delete {data_dir} or re-run prepare to rebuild it")
        if io.sha256(path) != expected:
            raise DataError(f"{path} is corrupted (sha256 mismatch); delete {data_dir} or re-run prepare to rebuild it")


def verify(data_dir: str | os.PathLike) -> dict:
    """Check every tensor file against the sha256 in meta.json; return meta or raise DataError."""
    meta = load_meta(data_dir)
    _check(Path(data_dir), meta, [f"{s}_{k}.pt" for s in SPLITS for k in "xy"])
    return meta


def corruption(data_dir: str | os.PathLike) -> str | None:
    """What is wrong with a prepared ``data_dir`` (:func:`verify` fails, or a file cannot be
    read), or None when it is intact or was never (completely) prepared. Changes nothing."""
    data_dir = Path(data_dir)
    if not (data_dir / "meta.json").is_file():
        return None
    try:
        verify(data_dir)
    except DataError as exc:
        return str(exc)
    except OSError as exc:
        return f"{data_dir} cannot be read ({exc}); re-run prepare to rebuild it"
    return None


def load_split(data_dir: str | os.PathLike, split: str, *, verify: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(x uint8 N×C×H×W, y int64 N) CPU tensors of ``split``; sha256-checked unless ``verify=False``."""
    import torch

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    names = [f"{split}_x.pt", f"{split}_y.pt"]
    if verify:
        _check(data_dir, meta, names)
    try:
        x, y = (io.load_torch(data_dir / n) for n in names)
    except Exception as exc:
        raise DataError(f"cannot load {split} tensors from {data_dir} ({exc}); re-run prepare") from exc
    if x.dtype != torch.uint8 or x.ndim != 4 or y.dtype != torch.int64 or len(x) != len(y):
        raise DataError(f"{data_dir}: {split} tensors have unexpected dtype/shape; re-run prepare")
    return x, y


# --------------------------------------------------------------------------- change tracking


def _listing(root: Path):
    """Lines ``path/`` (directory) and ``path<TAB>size<TAB>mtime_ns`` (file) under ``root``."""
    stack = [("", root, frozenset())]
    while stack:
        rel, path, ancestors = stack.pop()
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in ancestors:  # a symlink loop
            continue
        ancestors |= {(st.st_dev, st.st_ino)}
        with os.scandir(path) as entries:
            for entry in entries:
                name = rel + entry.name
                if entry.is_dir():
                    yield name + "/"
                    stack.append((name + "/", entry.path, ancestors))
                elif not entry.name.startswith("."):
                    try:
                        st = entry.stat()
                    except FileNotFoundError:  # a dangling symlink, or removed meanwhile
                        continue
                    yield f"{name}\t{st.st_size}\t{st.st_mtime_ns}"


def folder_manifest(root: str | os.PathLike) -> str:
    """sha256 of an image folder's listing: every file's relative path, size and mtime_ns.

    Only stat() calls, no file is read. Adding, removing, renaming or overwriting a file
    changes it; so does touching one (prepare then writes identical tensors). Hidden files,
    which prepare ignores, are left out; symlinks are followed.
    """
    try:
        lines = sorted(_listing(Path(root)))
    except OSError as exc:
        raise DataError(f"imagefolder: cannot list {root} ({exc})") from exc
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def data_digest(meta: dict, splits=SPLITS) -> str:
    """sha256 of a prepared directory's content as seen by a reader of ``splits``: its
    ``meta.json`` without ``source`` (where the files came from) and without the other
    splits' tensor digests and sizes."""
    names = {f"{s}_{k}.pt" for s in splits for k in "xy"}
    seen = {k: v for k, v in meta.items() if k != "source"}
    seen.update(
        sha256={n: d for n, d in meta.get("sha256", {}).items() if n in names},
        splits={s: n for s, n in meta.get("splits", {}).items() if s in splits},
    )
    return hashlib.sha256(io.canonical_json(seen).encode()).hexdigest()
