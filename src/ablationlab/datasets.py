"""Every dataset the pipeline knows, defined once: its raw files and their checksums, where they are
downloaded from, which parser of :mod:`ablationlab.prepare` reads them, and the size of its training
pool (the images the validation split is taken from).

``prepare`` fetches and parses from here, ``study`` checks a batch against the training split's size
from here, and the config schema's ``data.dataset`` enum lists exactly these names (a test holds them
equal). The URLs and md5s are torchvision's (``torchvision.datasets``; a test compares them): the
download itself stays in ``prepare``, which adds what torchvision lacks — any mirror, a sha256 for a
mirror that holds other bytes, an unpickler that refuses anything but arrays in a CIFAR batch — and
keeps this module free of torch, so that the study stage does not import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Dataset:
    """One dataset: ``urls`` (base URLs tried in order) and ``files`` ({raw file name: md5}) are empty for
    one that is not downloaded; ``train_pool`` is None where the size is known only once the files are
    read (an image folder)."""

    name: str
    parser: str  # the reader of prepare.PARSERS
    source: str  # meta.json's ``source`` ({root}: the raw-file folder)
    train_pool: int | None
    urls: tuple[str, ...] = ()
    files: Mapping[str, str] = field(default_factory=dict)

    @property
    def downloaded(self) -> bool:
        return bool(self.files)


DIGITS_TEST_SIZE = 0.2  # digits has no test set: a fixed stratified split
DIGITS_TEST_SEED = 0

_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

_ALL = (
    Dataset(
        "cifar10",
        "cifar",
        "CIFAR-10 (Krizhevsky 2009), python version; official test batch as test split",
        50_000,
        ("https://www.cs.toronto.edu/~kriz/",),
        {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
    ),
    Dataset(
        "cifar100",
        "cifar",
        "CIFAR-100 (Krizhevsky 2009), python version, 100 fine labels; official test set",
        50_000,
        ("https://www.cs.toronto.edu/~kriz/",),
        {"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
    ),
    Dataset(
        "mnist",
        "idx",
        "MNIST (LeCun et al.), idx files; official t10k test set",
        60_000,
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        dict(
            zip(
                _MNIST_FILES,
                (
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    "d53e105ee54ea40749a09fcbcd1e9432",
                    "9fb629c4189551a2d022fa330f9573f3",
                    "ec29112dd5afa0611ce80d1b7f02629c",
                ),
            )
        ),
    ),
    Dataset(
        "fashion_mnist",
        "idx",
        "Fashion-MNIST (Xiao et al. 2017), idx files; official t10k test set",
        60_000,
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        dict(
            zip(
                _MNIST_FILES,
                (
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "25c81989df183df01b3e8a0aad5dffbe",
                    "bef4ecab320f06d8554ea6380940ec79",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
            )
        ),
    ),
    Dataset(
        "svhn",
        "svhn",
        "SVHN cropped digits 32x32 (Netzer et al. 2011), train + test (not extra); label 10 mapped to 0",
        73_257,
        ("http://ufldl.stanford.edu/housenumbers/",),
        {"train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373", "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3"},
    ),
    Dataset("imagefolder", "imagefolder", "image folder {root} (train/ and test/ sub-directories)", None),
    Dataset(
        "digits",
        "digits",
        f"scikit-learn load_digits (8x8, 0..16 scaled to 0..255); no official test split: "
        f"stratified {DIGITS_TEST_SIZE:.0%} test split with seed {DIGITS_TEST_SEED}",
        1_437,  # 1797 images minus the fixed 20 % test split
    ),
)
DATASETS: Mapping[str, Dataset] = MappingProxyType({d.name: d for d in _ALL})
NAMES = tuple(DATASETS)


def get(name: str) -> Dataset:
    """The dataset called ``name``; ValueError naming the known ones otherwise."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}") from None


def check_val_size(val_size: float) -> None:
    """ValueError unless ``val_size`` is a fraction in (0, 1) or a whole count >= 1."""
    number = isinstance(val_size, (int, float)) and not isinstance(val_size, bool)
    if not number or not math.isfinite(val_size) or val_size <= 0 or (val_size >= 1 and val_size != int(val_size)):
        raise ValueError(f"val_size: {val_size!r} must be a fraction in (0, 1) or a whole count of images >= 1")


def val_count(val_size: float, n: int) -> int:
    """Images the validation split takes from a training pool of ``n``: ``ceil(val_size * n)`` for a
    fraction, else the count; ValueError when none would be left for training."""
    check_val_size(val_size)
    count = math.ceil(val_size * n) if val_size < 1 else int(val_size)
    if count >= n:
        raise ValueError(f"val_size: {val_size!r} leaves no training images (the training set has {n})")
    return count
