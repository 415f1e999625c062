"""Atomic file writes, small readers and the command lines' log format, shared by every stage.

A file is written to a temporary sibling, flushed to disk, then renamed over the
target, so a killed job or a full disk never leaves a half-written file that looks
complete.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    An OSError (disk full, file too large, permission denied) is raised again naming ``path``
    (``[Errno 27] File too large: 'reports/report.html'``); ``path`` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path) from exc
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; shared clusters need the umask's mode
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename not in (None, str(tmp)) or exc.errno not in _WRITE_ERRORS:
            raise  # not a failure to write this file (e.g. a download error inside the block)
        raise _naming(exc, path) from exc
    finally:
        tmp.unlink(missing_ok=True)


# errors of writing a file: disk full, file too large, quota, read-only, permission, I/O
_WRITE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as an OSError of the same kind whose file name is ``path`` (the target, not a temporary)."""
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


def unwritable(paths: Iterable[str | os.PathLike]) -> str | None:
    """The first folder that files of ``paths`` would be written into (the nearest existing
    one) and that is read-only (``chmod -w``, ``chattr +i``, a read-only mount), as an error
    line naming it; None if there is none."""
    folders = set()
    for path in map(Path, paths):
        folder = path.parent
        while not folder.exists():
            folder = folder.parent
        if folder not in folders:
            folders.add(folder)
            if not os.access(folder, os.W_OK | os.X_OK):
                return (
                    f"{OSError(errno.EACCES, 'Folder not writable', str(folder))}: make it writable, "
                    "then run the same command again"
                )
    return None


def publish(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Put a copy of the file ``src`` at ``dst`` atomically (its own file, with ``src``'s mtime):
    ``dst`` stays as it was until the copy is complete, and editing or locking either file leaves
    the other alone. A failure names ``dst``."""
    with atomic_path(dst) as tmp:
        shutil.copy2(src, tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@contextlib.contextmanager
def json_errors(label: Any, error: type[Exception] = ValueError, *, missing: str = "file not found") -> Iterator[None]:
    """Reading JSON in the block: a missing file or invalid JSON becomes ``error`` with one clear line,
    ``{label}: {missing}`` or ``{label}: not valid JSON (...)``, instead of a traceback."""
    try:
        yield
    except FileNotFoundError:
        raise error(f"{label}: {missing}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{label}: not valid JSON ({exc})") from None


def torch_bytes(obj: Any) -> bytes:
    """``obj`` as ``torch.save`` writes it, serialised in memory so the bytes depend only on ``obj``
    (not on the file name): the same tensors, keys and order give the same bytes."""
    import torch  # here, not at the top: the MLflow jobs use this module without torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def write_bytes(path: str | os.PathLike, data: bytes, *, digest: bool = True) -> str | None:
    """Write ``data`` atomically; return its sha256 (None with ``digest=False``: 25 ms less per 45 MB)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest() if digest else None


def save_torch(path: str | os.PathLike, obj: Any, *, digest: bool = True) -> str | None:
    """Save ``obj`` atomically (:func:`torch_bytes`); return the sha256 of the bytes written (as
    :func:`write_bytes`)."""
    return write_bytes(path, torch_bytes(obj), digest=digest)


def load_torch(path: str | os.PathLike | bytes, map_location: Any = "cpu") -> Any:
    """Load tensors / state_dicts (from a file, or the bytes of one) safely (never unpickles arbitrary objects)."""
    import torch

    source = io.BytesIO(path) if isinstance(path, bytes) else path
    return torch.load(source, map_location=map_location, weights_only=True)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Put a copy of the bytes of ``src`` at ``dst`` atomically (a new file: ``dst``'s mtime is now)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def same_bytes(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether the files ``a`` and ``b`` hold the same bytes (read, never taken from a cache)."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            block = fa.read(1 << 20)
            if block != fb.read(1 << 20):
                return False
            if not block:
                return True


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame atomically, without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_table(path: str | os.PathLike, columns: Mapping[str, Sequence[Any]]) -> None:
    """Write ``{name: column}`` (equal-length sequences or numpy arrays) atomically as CSV, cell for cell
    as pandas' ``DataFrame(columns).to_csv(index=False)`` writes it, without importing pandas (a second
    of each train job's start-up): a float column (numbers with a float or a None among them) as numpy
    prints its dtype, a missing value (None, NaN) empty, every other cell as ``str``."""
    cells = [_cells(column) for column in columns.values()]
    if len({len(column) for column in cells}) > 1:
        raise ValueError(f"{path}: columns of different lengths")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([str(name) for name in columns])
        writer.writerows(zip(*cells, strict=True))


def _cells(column: Sequence[Any]) -> list[str]:
    import numpy as np

    array = np.asarray(column)
    if array.dtype == object:
        numbers = [v for v in array if v is not None]
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in numbers) and (
            len(numbers) < len(array) or any(isinstance(v, (float, np.floating)) for v in numbers)
        ):  # numbers with a float or a None among them: pandas makes it a float column
            array = np.array([np.nan if v is None else v for v in array], dtype=float)
    if array.dtype.kind == "f":
        texts = array.astype(str).tolist()
        return ["" if math.isnan(v) else text for v, text in zip(array.tolist(), texts, strict=True)]
    return ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in array.tolist()]


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def configure_logging() -> None:
    """The command lines' log: INFO and above on stderr, time-stamped."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def canonical_json(obj: Any) -> str:
    """The one serialisation of a recipe: sorted keys, no whitespace variance."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)


def key_digests(obj: Any, depth: int = 4) -> list[str]:
    """``obj`` as short ``"<key path> <digest>"`` entries (12 hex digits of the sha256 of the canonical
    JSON): one per value ``depth`` keys deep or shallower, lists of mappings with unique ids
    entered by id (``experiments[dropout/p=0.5].recipe.optimizer``) with an ``[order]`` entry, and an
    ``(all)`` entry of the whole. Two objects have the same entries exactly when their canonical JSON
    is the same, and those that differ name the keys that changed."""

    def digest(value: Any) -> str:
        return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:12]

    def walk(value: Any, path: str, level: int) -> Iterator[str]:
        ids = [v.get("id") for v in value if isinstance(v, dict)] if isinstance(value, list) else None
        if level < depth and isinstance(value, dict) and value:
            for key in sorted(value):
                yield from walk(value[key], f"{path}.{key}" if path else str(key), level + 1)
        elif level < depth and ids and len(ids) == len(value) == len(set(ids)) and all(isinstance(i, str) for i in ids):
            yield f"{path}[order] {digest(ids)}"
            for item in value:
                yield from walk(item, f"{path}[{item['id']}]", level + 1)
        else:
            yield f"{path} {digest(value)}"

    return [f"(all) {digest(obj)}", *walk(obj, "", 0)]


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
