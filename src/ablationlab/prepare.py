"""Stage ``prepare``: fetch a dataset once and write it as uint8 tensors + ``meta.json``.

Output (``docs/contracts.md``, section *Data*): ``{train,val,test}_x.pt`` (uint8
N×C×H×W), ``{train,val,test}_y.pt`` (int64 N) and ``meta.json``, written last, which
records the sha256 of every tensor file; :mod:`ablationlab.data` reads and checks them.

Each dataset's raw files, checksums, hosts and parser are named in :mod:`ablationlab.datasets`.
Raw files live under ``{root}/{dataset}/`` (``root`` is the image folder itself for
``imagefolder``). Downloads come from the official URLs (the ones torchvision uses), or
from ``mirror``: a base URL (``https://host/path/`` or ``file:///dir/``) under which the
same file names are fetched. Each file is streamed to a temporary sibling, its length and
checksum (md5 from torchvision, or ``checksums={name: md5-or-sha256}`` for a mirror
holding other bytes) are checked, and only then is it renamed into place; a file already
in place with the right checksum is not fetched again. Archives are extracted with
``tarfile``'s ``data`` filter into a temporary directory that is removed afterwards.

The train/validation split is stratified and deterministic (``val_size``: a fraction
< 1 or a count >= 1; ``split_seed``); the test split is the dataset's own test set (for
``digits``, which has none, a fixed stratified 20 % split with seed 0).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import http.client
import os
import pickle
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from ablationlab import datasets, io
from ablationlab.data import DataError, verify

if TYPE_CHECKING:  # torch is imported lazily
    import torch

META_VERSION = 1


# --------------------------------------------------------------------------- sources


FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


# --------------------------------------------------------------------------- download


def _hasher(expected: str):
    if len(expected) == 32:
        return hashlib.md5()
    if len(expected) == 64:
        return hashlib.sha256()
    raise DataError(f"checksum {expected!r} is neither an md5 (32 hex) nor a sha256 (64 hex) digest")


def _file_digest(path: Path, expected: str) -> str:
    h = _hasher(expected)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def download(url: str, dest: str | os.PathLike, checksum: str, *, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` atomically, checking length and ``checksum`` (md5/sha256).

    Nothing is left at ``dest`` (nor a temporary file) unless the whole file arrived and
    its digest matches.
    """
    dest = Path(dest)
    h = _hasher(checksum.lower())
    try:
        with io.atomic_path(dest) as tmp, urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            expected_len = int(length) if length and length.isdigit() else None
            got = 0
            with open(tmp, "wb") as fh, _progress(dest.name, expected_len) as bar:
                while block := resp.read(1 << 20):
                    fh.write(block)
                    h.update(block)
                    got += len(block)
                    bar.update(len(block))
            if expected_len is not None and got != expected_len:
                raise DataError(
                    f"download of {dest.name} from {url} is truncated: got {got} of "
                    f"{expected_len} bytes; nothing was kept, run prepare again"
                )
            if h.hexdigest() != checksum.lower():
                raise DataError(
                    f"checksum mismatch for {dest.name} from {url}: expected "
                    f"{checksum.lower()}, got {h.hexdigest()}; the file was discarded "
                    "(a mirror with other bytes needs checksums={name: digest})"
                )
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise DataError(f"cannot download {dest.name} from {url}: {exc}") from exc
    return dest


def _progress(name: str, total: int | None):
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="B", unit_scale=True, disable=None, file=sys.stderr)


def fetch(
    dataset: str, root: str | os.PathLike, *, mirror: str | None = None, checksums: Mapping[str, str] | None = None
) -> dict[str, Path]:
    """Make sure every raw file of ``dataset`` is in ``{root}/{dataset}/`` with its checksum."""
    src = datasets.get(dataset)
    checksums = dict(checksums or {})
    unknown = sorted(set(checksums) - set(src.files))
    if unknown:
        raise DataError(f"checksums: {unknown} are not files of {dataset} (its files: {sorted(src.files)})")
    bases = (mirror,) if mirror else src.urls
    out = {}
    for name, md5 in src.files.items():
        expected = checksums.get(name, md5).lower()
        dest = Path(root) / dataset / name
        if dest.exists() and _file_digest(dest, expected) == expected:
            out[name] = dest
            continue
        if dest.exists():
            print(f"{dest}: checksum mismatch, downloading it again", file=sys.stderr)
        errors = []
        for base in bases:
            try:
                out[name] = download(_join(base, name), dest, expected)
                break
            except DataError as exc:
                errors.append(str(exc))
        else:
            raise DataError("; ".join(errors))
    return out


def extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract ``archive`` into the directory ``dest`` with the ``data`` filter.

    Members with absolute paths, ``..`` components, links pointing outside ``dest`` or
    special files are refused (:class:`DataError` naming the archive and the member).
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():  # all-or-nothing: refuse before writing anything
                parts = PurePosixPath(m.name).parts
                if m.name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise DataError(
                        f"refusing to extract {archive.name}: member {m.name!r} points outside the extraction directory"
                    )
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        raise DataError(
            f"refusing to extract {archive.name}: unsafe member {getattr(exc.tarinfo, 'name', '?')!r} ({exc})"
        ) from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"cannot extract {archive.name}: {exc}") from exc
    return dest


# --------------------------------------------------------------------------- parsers


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: numpy arrays, lists, dicts, strings; nothing else."""

    ALLOWED = {  # noqa: RUF012 (read-only allow-list)
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            return _ArrayUnpickler(fh, encoding="latin1").load()
    except FileNotFoundError as exc:
        raise DataError(f"{path.name} is missing from the archive") from exc
    except Exception as exc:
        raise DataError(f"cannot read CIFAR batch {path.name}: {exc}") from exc


def _cifar(dataset: str, files: dict[str, Path], root: Path, image_size: int | None):
    fine = dataset == "cifar100"
    folder = "cifar-100-python" if fine else "cifar-10-batches-py"
    train_names = ["train"] if fine else [f"data_batch_{i}" for i in range(1, 6)]
    test_names = ["test"] if fine else ["test_batch"]
    archive = next(iter(files.values()))
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=archive.parent) as tmp:
        base = extract_tar(archive, tmp) / folder

        def load(names):
            batches = [_unpickle(base / n) for n in names]
            key = "fine_labels" if fine else "labels"
            try:
                x = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
                y = np.concatenate([np.asarray(b[key], dtype=np.int64) for b in batches])
                return x.reshape(-1, 3, 32, 32), y
            except (KeyError, ValueError) as exc:
                raise DataError(f"{archive.name}: unexpected batch layout ({exc})") from exc

        train, test = load(train_names), load(test_names)
        meta = _unpickle(base / ("meta" if fine else "batches.meta"))
        classes = list(meta["fine_label_names" if fine else "label_names"])
    return train, test, classes


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read a gzipped idx file (MNIST format) of unsigned bytes with ``ndim`` dimensions."""
    try:
        with gzip.open(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot decompress {path.name}: {exc}") from exc
    header = 4 + 4 * ndim
    if len(data) < header or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise DataError(f"{path.name} is not an idx file of {ndim}-d unsigned bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != int(np.prod(shape)):
        raise DataError(f"{path.name}: header says {shape} but holds {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


def _mnist(dataset: str, files: dict[str, Path], root: Path, image_size: int | None):
    def load(prefix):
        x = _read_idx(files[f"{prefix}-images-idx3-ubyte.gz"], 3)[:, None]
        y = _read_idx(files[f"{prefix}-labels-idx1-ubyte.gz"], 1).astype(np.int64)
        if len(x) != len(y):
            raise DataError(f"{dataset} {prefix}: {len(x)} images but {len(y)} labels")
        return x, y

    classes = FASHION_CLASSES if dataset == "fashion_mnist" else [str(i) for i in range(10)]
    return load("train"), load("t10k"), classes


def _svhn(dataset: str, files: dict[str, Path], root: Path, image_size: int | None):
    import scipy.io

    def load(name):
        try:
            mat = scipy.io.loadmat(files[name])
            x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)), dtype=np.uint8)
            y = mat["y"].astype(np.int64).reshape(-1) % 10
        except Exception as exc:
            raise DataError(f"cannot read {name}: {exc}") from exc
        return x, y

    return load("train_32x32.mat"), load("test_32x32.mat"), [str(i) for i in range(10)]


def _digits(dataset: str, files: dict[str, Path], root: Path, image_size: int | None):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    tr, te = train_test_split(
        np.arange(len(y)), test_size=datasets.DIGITS_TEST_SIZE, stratify=y, random_state=datasets.DIGITS_TEST_SEED
    )
    tr, te = np.sort(tr), np.sort(te)
    return (x[tr], y[tr]), (x[te], y[te]), [str(i) for i in range(10)]


GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}
EXIF_ORIENTATION = 0x0112


def _refuse_outside_links(root: Path, paths: list[Path]) -> None:
    """DataError naming the symbolic link through which an image lies outside ``root``
    (links inside ``root`` are fine): a study's data is exactly what its folder holds."""
    inside = root.resolve()
    for path in paths:
        if not path.resolve().is_relative_to(inside):
            link = next(
                p
                for p in [*reversed(path.parents), path]
                if p.is_symlink() and p.is_relative_to(root) and not p.resolve().is_relative_to(inside)
            )
            raise DataError(
                f"imagefolder: {link} is a symbolic link to {link.resolve()}, outside {root}; "
                "images must lie inside data.root: copy them in, or make their folder data.root"
            )


def _imagefolder(dataset: str, files: dict[str, Path], root: Path, image_size: int | None):
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"imagefolder: {root} does not exist or is not a directory")
    exts = {e.lower() for e in Image.registered_extensions()}
    listing: dict[str, dict[str, list[Path]]] = {}
    for split in ("train", "test"):
        d = root / split
        if not d.is_dir():
            raise DataError(f"imagefolder: {d} is missing (expected {root}/train/<class>/* and {root}/test/<class>/*)")
        classes = sorted(p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not classes:
            raise DataError(f"imagefolder: {d} has no classes (no sub-directories)")
        listing[split] = {}
        for c in classes:
            paths = sorted(
                p for p in (d / c).rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts
            )
            if not paths:
                raise DataError(f"imagefolder: class {c!r} in {d} has no images")
            _refuse_outside_links(root, paths)
            listing[split][c] = paths
    if set(listing["train"]) != set(listing["test"]):
        only_tr = sorted(set(listing["train"]) - set(listing["test"]))
        only_te = sorted(set(listing["test"]) - set(listing["train"]))
        raise DataError(
            f"imagefolder: train and test classes differ (only in train: {only_tr}, only in test: {only_te})"
        )
    classes = sorted(listing["train"])

    # Pass 1: headers only (cheap), to pick the mode and check sizes before decoding.
    gray, sizes = True, {}
    for split in listing:
        for paths in listing[split].values():
            for p in paths:
                try:
                    with Image.open(p) as im:
                        gray &= im.mode in GRAY_MODES
                        rotated = im.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
                        sizes.setdefault(im.size[::-1] if rotated else im.size, p)
                except (UnidentifiedImageError, OSError) as exc:
                    raise DataError(f"imagefolder: {p} is corrupt or not an image ({exc})") from exc
    if image_size is None and len(sizes) > 1:
        (s1, p1), (s2, p2) = list(sizes.items())[:2]
        raise DataError(
            f"imagefolder: images differ in size ({p1} is {s1[0]}x{s1[1]}, {p2} is "
            f"{s2[0]}x{s2[1]}); set image_size to resize them"
        )
    mode = "L" if gray else "RGB"
    w, h = (image_size, image_size) if image_size else next(iter(sizes))

    def load(split):
        items = [(p, i) for i, c in enumerate(classes) for p in listing[split][c]]
        x = np.empty((len(items), h, w, 1 if gray else 3), dtype=np.uint8)
        for k, (p, _) in enumerate(items):
            try:
                with Image.open(p) as im:
                    im = ImageOps.exif_transpose(im).convert(mode)
                    if im.size != (w, h):
                        im = ImageOps.fit(im, (w, h), method=Image.Resampling.BICUBIC)
                    x[k] = np.asarray(im).reshape(h, w, -1)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise DataError(f"imagefolder: {p} is corrupt or not an image ({exc})") from exc
        y = np.array([i for _, i in items], dtype=np.int64)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y

    with _strict_decoding():
        return load("train"), load("test"), classes


@contextlib.contextmanager
def _strict_decoding():
    """A truncated image is an error while a folder is read, whatever the process set before (WeasyPrint
    sets PIL's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` when it is imported)."""
    from PIL import ImageFile

    before, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


# --------------------------------------------------------------------------- prepare


def split_train_val(y: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, deterministic split of indices ``0..len(y)-1`` into (train, val), each sorted."""
    from sklearn.model_selection import train_test_split

    try:
        n_val = datasets.val_count(val_size, len(y))
    except ValueError as exc:
        raise DataError(str(exc)) from None
    try:
        tr, va = train_test_split(np.arange(len(y)), test_size=n_val, stratify=y, random_state=seed)
    except ValueError as exc:
        raise DataError(f"cannot make a stratified validation split of {n_val} images: {exc}") from exc
    return np.sort(tr), np.sort(va)


def channel_stats(x: torch.Tensor) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and (population) std of uint8 images N×C×H×W, in [0, 1] units."""
    import torch

    mean, std = [], []
    values = torch.arange(256, dtype=torch.float64) / 255.0
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum()
        m = (counts * values).sum() / total
        v = (counts * (values - m) ** 2).sum() / total
        mean.append(round(float(m), 8))
        std.append(round(float(v.sqrt()), 8))
    return mean, std


def _resize(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    import torch
    from torchvision.transforms.v2 import functional as TF

    if x.shape[-2:] == (size, size):
        return x
    return torch.cat([TF.resize(x[i : i + chunk], [size, size], antialias=True) for i in range(0, len(x), chunk)])


def _check_prepare_args(
    dataset: str, val_size: float, split_seed: int, image_size: int | None, checksums: Mapping[str, str] | None
) -> None:
    """DataError for a bad argument of :func:`prepare`, before any download."""
    try:
        entry = datasets.get(dataset)
        datasets.check_val_size(val_size)  # before any download
    except ValueError as exc:
        raise DataError(str(exc)) from None
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if checksums and not entry.downloaded:
        raise DataError(f"checksums apply to downloaded datasets only, not {dataset!r}")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
        raise DataError(f"split_seed must be a non-negative integer, got {split_seed!r}")


# the readers of the datasets' raw files (datasets.Dataset.parser): (dataset, its fetched files, root,
# image_size) -> ((train x, y), (test x, y), class names)
PARSERS: dict[str, Callable] = {
    "cifar": _cifar,
    "idx": _mnist,
    "svhn": _svhn,
    "digits": _digits,
    "imagefolder": _imagefolder,
}


def _read_source(
    dataset: str, root: Path, image_size: int | None, mirror: str | None, checksums: Mapping[str, str] | None
) -> tuple:
    """``(train, test, classes, source text)`` of ``dataset``, fetched (and verified) if it is downloaded."""
    entry = datasets.get(dataset)
    files = fetch(dataset, root, mirror=mirror, checksums=checksums) if entry.downloaded else {}
    train, test, classes = PARSERS[entry.parser](dataset, files, root, image_size)
    source = entry.source.format(root=root.resolve())
    if mirror and entry.downloaded:
        source += f"; fetched from mirror {mirror}"
    return train, test, classes, source


def _write_splits(out_dir: Path, tensors: dict) -> dict[str, str]:
    """Remove ``meta.json`` (the completeness marker), write ``{split}_{x,y}.pt``; their sha256 by file name."""
    import torch

    digests = {}
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "meta.json").unlink(missing_ok=True)  # the completeness marker goes first...
        for split, (x, y) in tensors.items():
            digests[f"{split}_x.pt"] = io.save_torch(out_dir / f"{split}_x.pt", x.to(torch.uint8).contiguous().clone())
            digests[f"{split}_y.pt"] = io.save_torch(out_dir / f"{split}_y.pt", y.to(torch.int64).contiguous().clone())
    except OSError as exc:
        raise DataError(f"cannot write the prepared dataset to {out_dir}: {exc}") from exc
    return digests


def prepare(
    dataset: str,
    out_dir: str | os.PathLike,
    *,
    root: str | os.PathLike,
    val_size: float = 0.1,
    split_seed: int = 0,
    mirror: str | None = None,
    image_size: int | None = None,
    checksums: Mapping[str, str] | None = None,
) -> dict:
    """Fetch ``dataset`` and write ``out_dir/{train,val,test}_{x,y}.pt`` + ``meta.json`` (last).

    ``root``: raw-file cache (``{root}/{dataset}/``), or the image folder for
    ``imagefolder``; ignored for ``digits``. ``image_size``: resize to image_size² (required
    for an imagefolder whose images differ in size). ``checksums``: {file name: md5 or
    sha256} overriding the official digests (for a mirror holding other bytes).
    Returns the meta dict.
    """
    import torch

    _check_prepare_args(dataset, val_size, split_seed, image_size, checksums)
    out_dir = Path(out_dir)
    (xtr, ytr), (xte, yte), classes, source = _read_source(dataset, Path(root), image_size, mirror, checksums)
    for name, y in (("train", ytr), ("test", yte)):
        if len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(f"{dataset} {name}: labels outside 0..{len(classes) - 1}")
    tr, va = split_train_val(ytr, val_size, split_seed)
    tensors = {
        "train": (torch.from_numpy(np.ascontiguousarray(xtr[tr])), torch.from_numpy(ytr[tr])),
        "val": (torch.from_numpy(np.ascontiguousarray(xtr[va])), torch.from_numpy(ytr[va])),
        "test": (torch.from_numpy(np.ascontiguousarray(xte)), torch.from_numpy(np.asarray(yte))),
    }
    if image_size is not None:
        tensors = {s: (_resize(x, image_size), y) for s, (x, y) in tensors.items()}

    digests = _write_splits(out_dir, tensors)
    x = tensors["train"][0]
    mean, std = channel_stats(x)
    meta = {
        "dataset": dataset,
        "classes": [str(c) for c in classes],
        "num_classes": len(classes),
        "channels": int(x.shape[1]),
        "height": int(x.shape[2]),
        "width": int(x.shape[3]),
        "splits": {s: len(t[1]) for s, t in tensors.items()},
        "mean": mean,
        "std": std,
        "val_size": val_size,
        "split_seed": split_seed,
        "image_size": image_size,
        "sha256": digests,
        "source": source,
        "format_version": META_VERSION,
    }
    try:
        io.write_json(out_dir / "meta.json", meta)  # ...and comes back last
    except OSError as exc:
        raise DataError(f"cannot write {out_dir / 'meta.json'}: {exc}") from exc
    return meta


# --------------------------------------------------------------------------- CLI


def _checksum_arg(text: str) -> tuple[str, str]:
    name, sep, digest = text.partition("=")
    if not sep or not name or len(digest) not in (32, 64):
        raise argparse.ArgumentTypeError(f"expected FILE=MD5_OR_SHA256, got {text!r}")
    return name, digest


def _val_arg(text: str) -> float | int:
    value = float(text)
    return int(value) if value >= 1 and value == int(value) else value


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ablationlab prepare",
        description="Download a dataset (checksum-verified) and write uint8 tensors + meta.json: "
        "{train,val,test}_{x,y}.pt in --out, meta.json last.",
        epilog="Raw files are cached in ROOT/DATASET/. Example: python -m ablationlab prepare "
        "--dataset cifar10 --out results/data/cifar10 --root data/raw --val-size 0.1",
    )
    parser.add_argument("--dataset", required=True, choices=datasets.NAMES)
    parser.add_argument("--out", required=True, help="output directory (e.g. results/data/cifar10)")
    parser.add_argument(
        "--root",
        default="data/raw",
        help="raw-file cache (ROOT/DATASET/...); for imagefolder: the folder holding "
        "train/<class>/* and test/<class>/* (default: %(default)s)",
    )
    parser.add_argument(
        "--val-size",
        type=_val_arg,
        default=0.1,
        help="validation split from the training set: fraction < 1 or image count >= 1 "
        "(stratified; default: %(default)s)",
    )
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/val split (default: 0)")
    parser.add_argument(
        "--mirror",
        default=None,
        help="base URL replacing the official host, e.g. https://host/datasets/ or file:///shared/raw/",
    )
    parser.add_argument(
        "--checksum",
        type=_checksum_arg,
        action="append",
        default=[],
        metavar="FILE=DIGEST",
        help="expected md5/sha256 of a raw file, overriding the official one (repeatable)",
    )
    parser.add_argument("--image-size", type=int, default=None, help="resize images to N×N")
    parser.add_argument(
        "--verify-only",
        action="store_true",
        help="do not prepare: check --out against its meta.json (exit 1 if corrupted)",
    )
    args = parser.parse_args(argv)
    try:
        if args.verify_only:
            verify(args.out)
            print(f"{args.out}: ok")
            return 0
        options = {k: getattr(args, k) for k in ("root", "val_size", "split_seed", "mirror", "image_size")}
        meta = prepare(args.dataset, args.out, **options, checksums=dict(args.checksum) or None)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"{args.out}: {meta['dataset']} {meta['channels']}x{meta['height']}x{meta['width']}, "
        f"{meta['num_classes']} classes, splits {meta['splits']}"
    )
    return 0
