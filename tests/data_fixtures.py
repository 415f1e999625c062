"""Builders of tiny raw datasets in their real on-disk formats, and a localhost HTTP server."""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import io
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def build_cifar10(
    path: Path, per_batch: int = 20, n_test: int = 20, seed: int = 0, extra_members: list[tarfile.TarInfo] = ()
) -> dict:
    """Write ``cifar-10-python.tar.gz`` as the real one is laid out (pickled batches, protocol 2).

    Returns the arrays written: {"train": (x N×3×32×32, y), "test": (x, y)}.
    """
    rng = np.random.default_rng(seed)

    def batch(n, label):
        y = np.arange(n) % 10
        rng.shuffle(y)
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        return {
            "batch_label": label,
            "labels": [int(v) for v in y],
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(n)],
        }

    batches = {f"data_batch_{i}": batch(per_batch, f"training batch {i} of 5") for i in range(1, 6)}
    batches["test_batch"] = batch(n_test, "testing batch 1 of 1")
    meta = {"num_cases_per_batch": per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072}
    with tarfile.open(path, "w:gz") as tar:
        d = tarfile.TarInfo("cifar-10-batches-py")
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        tar.addfile(d)
        _add_bytes(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        for name, b in batches.items():
            _add_bytes(tar, f"cifar-10-batches-py/{name}", pickle.dumps(b, protocol=2))
        _add_bytes(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
        for member in extra_members:
            tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)

    def arrays(names):
        x = np.concatenate([batches[n]["data"] for n in names]).reshape(-1, 3, 32, 32)
        return x, np.concatenate([batches[n]["labels"] for n in names]).astype(np.int64)

    return {"train": arrays([f"data_batch_{i}" for i in range(1, 6)]), "test": arrays(["test_batch"])}


def build_cifar100(path: Path, per_class: int = 3, n_test: int = 100, seed: int = 0) -> dict:
    """Write ``cifar-100-python.tar.gz`` (files ``train``, ``test``, ``meta``; fine + coarse labels)."""
    rng = np.random.default_rng(seed)

    def split(n, label):
        y = np.arange(n) % 100
        return {
            "filenames": [f"{i}.png" for i in range(n)],
            "batch_label": label,
            "fine_labels": [int(v) for v in y],
            "coarse_labels": [int(v) // 5 for v in y],
            "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        }

    files = {
        "train": split(100 * per_class, "training batch 1 of 1"),
        "test": split(n_test, "testing batch 1 of 1"),
        "meta": {
            "fine_label_names": [f"fine{i}" for i in range(100)],
            "coarse_label_names": [f"coarse{i}" for i in range(20)],
        },
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in files.items():
            _add_bytes(tar, f"cifar-100-python/{name}", pickle.dumps(obj, protocol=2))
    return {s: (files[s]["data"].reshape(-1, 3, 32, 32), np.array(files[s]["fine_labels"])) for s in ("train", "test")}


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def build_mnist(directory: Path, n_train: int = 50, n_test: int = 20, seed: int = 0) -> dict:
    """Write the four gzipped idx files of MNIST; returns {"train": (x N×28×28, y), "test": ...}."""
    rng = np.random.default_rng(seed)
    out = {}
    directory.mkdir(parents=True, exist_ok=True)
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(x))
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(y))
        out[split] = (x, y.astype(np.int64))
    return out


def build_svhn(directory: Path, n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict:
    """Write ``train_32x32.mat`` / ``test_32x32.mat`` (X: 32×32×3×N, y: N×1 with 10 for digit 0)."""
    import scipy.io

    rng = np.random.default_rng(seed)
    out = {}
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        y = np.arange(n) % 10
        scipy.io.savemat(
            directory / f"{split}_32x32.mat",
            {"X": x.transpose(2, 3, 1, 0), "y": np.where(y == 0, 10, y).reshape(-1, 1).astype(np.uint8)},
        )
        out[split] = (x, y.astype(np.int64))
    return out


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate: set[str] = set()  # noqa: RUF012 (filled per instance)

    def do_GET(self):
        name = self.path.lstrip("/")
        if name in self.truncate:
            payload = (Path(self.directory) / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[: len(payload) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_server(directory: Path) -> Iterator[tuple[str, set[str]]]:
    """Serve ``directory`` on 127.0.0.1; yields (base URL, set of file names to send truncated)."""
    truncate: set[str] = set()
    handler = type("Handler", (_Handler,), {"truncate": truncate})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", truncate
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
