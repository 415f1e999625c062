"""Stage prepare: digits, downloads from a localhost mirror, archives, image folders, verify."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import tarfile

import numpy as np
import pytest
import torch
from data_fixtures import build_cifar10, build_cifar100, build_mnist, build_svhn, http_server
from PIL import Image

from ablationlab import data, datasets, prepare
from ablationlab.data import DataError

FILES = [f"{s}_{k}.pt" for s in data.SPLITS for k in "xy"]


def sha256_bytes(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- the registry


def test_registry_downloads_torchvisions_files():
    """The URLs and md5s of every downloaded dataset are those torchvision.datasets verifies."""
    import torchvision.datasets as tv

    def split(url):
        base, _, name = url.rpartition("/")
        return base + "/", name

    expected = {
        "cifar10": ((split(tv.CIFAR10.url)[0],), {tv.CIFAR10.filename: tv.CIFAR10.tgz_md5}),
        "cifar100": ((split(tv.CIFAR100.url)[0],), {tv.CIFAR100.filename: tv.CIFAR100.tgz_md5}),
        "mnist": (tuple(tv.MNIST.mirrors), dict(tv.MNIST.resources)),
        "fashion_mnist": (tuple(tv.FashionMNIST.mirrors), dict(tv.FashionMNIST.resources)),
        "svhn": (
            (split(tv.SVHN.split_list["train"][0])[0],),
            {tv.SVHN.split_list[s][1]: tv.SVHN.split_list[s][2] for s in ("train", "test")},
        ),
    }
    downloaded = {d.name: (d.urls, dict(d.files)) for d in datasets.DATASETS.values() if d.downloaded}
    assert downloaded == expected


def test_unknown_dataset_names_the_known_ones(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'cifar11'; choose one of cifar10, cifar100, mnist"):
        prepare.prepare("cifar11", tmp_path / "d", root=tmp_path)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_dtypes_and_meta(digits_dir):
    meta = data.verify(digits_dir)
    assert meta["dataset"] == "digits" and meta["classes"] == [str(i) for i in range(10)]
    assert (meta["channels"], meta["height"], meta["width"], meta["num_classes"]) == (1, 8, 8, 10)
    assert meta["splits"] == {"train": 1293, "val": 144, "test": 360}
    assert meta["val_size"] == 0.1 and meta["split_seed"] == 0
    assert "stratified 20% test split" in meta["source"]
    for split in data.SPLITS:
        x, y = data.load_split(digits_dir, split)
        assert x.dtype == torch.uint8 and x.shape == (meta["splits"][split], 1, 8, 8)
        assert y.dtype == torch.int64 and y.shape == (meta["splits"][split],)
        assert set(y.tolist()) == set(range(10))
    x, _ = data.load_split(digits_dir, "train")
    assert int(x.max()) == 255 and int(x.min()) == 0
    assert meta["sha256"] == {f: sha256_bytes(digits_dir / f) for f in FILES}


def test_digits_split_is_stratified_and_disjoint(digits_dir):
    _, ytr = data.load_split(digits_dir, "train")
    xv, yv = data.load_split(digits_dir, "val")
    full = torch.cat([ytr, yv]).bincount(minlength=10)
    for c, n in enumerate(yv.bincount(minlength=10).tolist()):
        assert abs(n - 0.1 * int(full[c])) <= 1
    xt, _ = data.load_split(digits_dir, "train")
    xs, _ = data.load_split(digits_dir, "test")
    seen = {bytes(img.numpy()) for img in xt}
    assert not any(bytes(img.numpy()) in seen for img in xv)  # digits has no duplicate images
    assert len(xt) + len(xv) + len(xs) == 1797


def test_mean_std_from_train_split_only(digits_dir):
    meta = data.load_meta(digits_dir)
    x, _ = data.load_split(digits_dir, "train")
    f = x.double() / 255
    assert meta["mean"] == pytest.approx([f.mean().item()], abs=1e-7)
    assert meta["std"] == pytest.approx([f.std(unbiased=False).item()], abs=1e-7)
    everything = torch.cat([data.load_split(digits_dir, s)[0] for s in data.SPLITS]).double() / 255
    assert abs(everything.mean().item() - meta["mean"][0]) > 1e-6


def test_same_seed_same_bytes_other_seed_other_split(tmp_path, digits_dir):
    a = prepare.prepare("digits", tmp_path / "a", root=tmp_path, val_size=0.1, split_seed=0)
    b = prepare.prepare("digits", tmp_path / "b", root=tmp_path, val_size=144, split_seed=1)
    assert a["sha256"] == data.load_meta(digits_dir)["sha256"]
    assert a["sha256"]["test_x.pt"] == b["sha256"]["test_x.pt"]  # test split never moves
    assert a["sha256"]["val_x.pt"] != b["sha256"]["val_x.pt"]
    assert b["splits"]["val"] == 144 and b["val_size"] == 144


def test_image_size_resizes_every_split(tmp_path):
    meta = prepare.prepare("digits", tmp_path / "d", root=tmp_path, image_size=16)
    assert (meta["height"], meta["width"], meta["image_size"]) == (16, 16, 16)
    assert data.load_split(tmp_path / "d", "test")[0].shape[1:] == (1, 16, 16)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_size": 0}, "val_size: 0 must be a fraction in \\(0, 1\\) or a whole count"),
        ({"val_size": 1.5}, "val_size: 1.5 must be a fraction"),
        ({"val_size": 5}, "cannot make a stratified validation split of 5 images"),
        ({"val_size": 10_000}, "val_size: 10000 leaves no training images \\(the training set has 1437\\)"),
        ({"image_size": 0}, "image_size must be a positive integer"),
        ({"split_seed": "1"}, "split_seed must be a non-negative integer, got '1'"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        prepare.prepare("digits", tmp_path / "d", root=tmp_path, **kwargs)
    assert not (tmp_path / "d" / "meta.json").exists()


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'cifar11'; choose one of cifar10"):
        prepare.prepare("cifar11", tmp_path / "d", root=tmp_path)


def test_meta_json_is_written_last(tmp_path, monkeypatch):
    out = tmp_path / "d"
    prepare.prepare("digits", out, root=tmp_path)
    calls = []

    def failing_save(obj, f):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_save(obj, f)

    real_save = torch.save
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(DataError, match=f"cannot write the prepared dataset to {out}: .*No space left"):
        prepare.prepare("digits", out, root=tmp_path, split_seed=1)
    assert not (out / "meta.json").exists()
    with pytest.raises(DataError, match="not a \\(complete\\) prepared dataset; run prepare"):
        data.load_split(out, "train")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- verify


def corrupt(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the tensor data: the file still loads
    path.write_bytes(bytes(raw))


def test_verify_detects_a_corrupted_tensor(tmp_path, digits_dir):
    d = tmp_path / "digits"
    shutil.copytree(digits_dir, d)
    corrupt(d / "train_x.pt")
    msg = f"{d / 'train_x.pt'} is corrupted \\(sha256 mismatch\\); delete {d} or re-run prepare"
    with pytest.raises(DataError, match=msg):
        data.verify(d)
    with pytest.raises(DataError, match="train_x.pt is corrupted"):
        data.load_split(d, "train")
    assert len(data.load_split(d, "test")[0]) == 360  # other splits stay usable
    assert len(data.load_split(d, "train", verify=False)[0]) == 1293
    assert prepare.cli(["--dataset", "digits", "--out", str(d), "--verify-only"]) == 1
    (d / "val_y.pt").unlink()
    with pytest.raises(DataError, match="val_y.pt is missing"):
        data.load_split(d, "val")


def test_corruption_names_the_file_and_changes_nothing(tmp_path, digits_dir):
    d = tmp_path / "digits"
    shutil.copytree(digits_dir, d)
    assert data.corruption(d) is None
    corrupt(d / "test_y.pt")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in d.iterdir())
    assert "test_y.pt is corrupted" in data.corruption(d)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in d.iterdir()) == before
    assert data.corruption(tmp_path / "never-prepared") is None
    prepare.prepare("digits", d, root=tmp_path)
    assert data.verify(d)["sha256"] == data.load_meta(digits_dir)["sha256"]


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DataError, match=f"cannot write the prepared dataset to {blocker / 'd'}"):
        prepare.prepare("digits", blocker / "d", root=tmp_path)


def test_load_split_rejects_unknown_split(digits_dir):
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_split(digits_dir, "training")


# --------------------------------------------------------------------------- CLI


def test_cli_prepare_and_verify(tmp_path, capsys):
    out = tmp_path / "d"
    assert prepare.cli(["--dataset", "digits", "--out", str(out), "--val-size", "100", "--split-seed", "3"]) == 0
    meta = data.load_meta(out)
    assert meta["splits"]["val"] == 100 and meta["split_seed"] == 3 and isinstance(meta["val_size"], int)
    assert prepare.cli(["--dataset", "digits", "--out", str(out), "--verify-only"]) == 0
    assert prepare.cli(["--dataset", "imagefolder", "--out", str(out), "--root", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare.cli(["--help"])
    assert "--mirror" in capsys.readouterr().out


# --------------------------------------------------------------------------- downloads


@pytest.fixture()
def cifar_mirror(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    arrays = build_cifar10(served / "cifar-10-python.tar.gz")
    digest = sha256_bytes(served / "cifar-10-python.tar.gz")
    with http_server(served) as (url, truncate):
        yield url, truncate, arrays, {"cifar-10-python.tar.gz": digest}


def test_cifar10_download_parse_and_cache(tmp_path, cifar_mirror):
    url, _, arrays, checksums = cifar_mirror
    raw = tmp_path / "raw"
    meta = prepare.prepare(
        "cifar10", tmp_path / "out", root=raw, val_size=0.2, split_seed=0, mirror=url, checksums=checksums
    )
    assert meta["classes"][:2] == ["airplane", "automobile"] and meta["num_classes"] == 10
    assert meta["splits"] == {"train": 80, "val": 20, "test": 20}
    assert (meta["channels"], meta["height"], meta["width"]) == (3, 32, 32)
    assert "mirror" in meta["source"]
    xtr, ytr = data.load_split(tmp_path / "out", "train")
    xva, yva = data.load_split(tmp_path / "out", "val")
    xte, yte = data.load_split(tmp_path / "out", "test")
    tr, va = prepare.split_train_val(arrays["train"][1], 0.2, 0)
    assert torch.equal(xtr, torch.from_numpy(arrays["train"][0][tr])) and torch.equal(
        ytr, torch.from_numpy(arrays["train"][1][tr])
    )
    assert torch.equal(xva, torch.from_numpy(arrays["train"][0][va]))
    assert yva.bincount(minlength=10).tolist() == [2] * 10  # stratified
    assert torch.equal(xte, torch.from_numpy(arrays["test"][0])) and torch.equal(
        yte, torch.from_numpy(arrays["test"][1])
    )
    assert meta["mean"] == pytest.approx((xtr.double() / 255).mean(dim=(0, 2, 3)).tolist(), abs=1e-7)
    assert sorted(p.name for p in (raw / "cifar10").iterdir()) == ["cifar-10-python.tar.gz"]  # extraction cleaned up
    # the verified archive is cached: no server needed, same bytes out
    again = prepare.prepare(
        "cifar10",
        tmp_path / "out2",
        root=raw,
        val_size=0.2,
        split_seed=0,
        mirror="http://127.0.0.1:9/",
        checksums=checksums,
    )
    assert again["sha256"] == meta["sha256"]


def test_checksum_mismatch_keeps_nothing_and_next_run_downloads(tmp_path, cifar_mirror):
    url, _, _, checksums = cifar_mirror
    raw = tmp_path / "raw"
    with pytest.raises(
        DataError, match="checksum mismatch for cifar-10-python.tar.gz .*expected c58f30108f718f92721af3b95e74349a"
    ):
        prepare.prepare("cifar10", tmp_path / "out", root=raw, mirror=url)  # official md5
    assert list((raw / "cifar10").iterdir()) == []
    assert not (tmp_path / "out").exists()
    prepare.prepare("cifar10", tmp_path / "out", root=raw, val_size=0.2, mirror=url, checksums=checksums)
    assert data.verify(tmp_path / "out")["splits"]["test"] == 20


def test_truncated_download_keeps_nothing_and_next_run_downloads(tmp_path, cifar_mirror):
    url, truncate, _, checksums = cifar_mirror
    raw = tmp_path / "raw"
    truncate.add("cifar-10-python.tar.gz")
    with pytest.raises(DataError, match="download of cifar-10-python.tar.gz .* is truncated: got"):
        prepare.prepare("cifar10", tmp_path / "out", root=raw, val_size=0.2, mirror=url, checksums=checksums)
    assert list((raw / "cifar10").iterdir()) == []
    truncate.clear()
    prepare.prepare("cifar10", tmp_path / "out", root=raw, val_size=0.2, mirror=url, checksums=checksums)
    assert data.verify(tmp_path / "out")["splits"]["train"] == 80


def test_corrupted_cached_archive_is_downloaded_again(tmp_path, cifar_mirror):
    url, _, _, checksums = cifar_mirror
    cached = tmp_path / "raw" / "cifar10" / "cifar-10-python.tar.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half an archive")
    prepare.prepare("cifar10", tmp_path / "out", root=tmp_path / "raw", val_size=0.2, mirror=url, checksums=checksums)
    assert sha256_bytes(cached) == checksums["cifar-10-python.tar.gz"]


def test_unreachable_mirror_and_bad_checksum_override(tmp_path):
    with pytest.raises(DataError, match="cannot download cifar-10-python.tar.gz from http://127.0.0.1:9/"):
        prepare.prepare("cifar10", tmp_path / "out", root=tmp_path, mirror="http://127.0.0.1:9/")
    with pytest.raises(DataError, match="checksums: \\['cifar.tgz'\\] are not files of cifar10"):
        prepare.prepare("cifar10", tmp_path / "out", root=tmp_path, checksums={"cifar.tgz": "0" * 64})


def test_cifar100_fine_labels(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    arrays = build_cifar100(served / "cifar-100-python.tar.gz")
    checksums = {"cifar-100-python.tar.gz": sha256_bytes(served / "cifar-100-python.tar.gz")}
    with http_server(served) as (url, _):
        meta = prepare.prepare(
            "cifar100", tmp_path / "out", root=tmp_path / "raw", val_size=100, mirror=url, checksums=checksums
        )
    assert meta["num_classes"] == 100 and meta["classes"][99] == "fine99"
    assert meta["splits"] == {"train": 200, "val": 100, "test": 100}
    _, yva = data.load_split(tmp_path / "out", "val")
    assert yva.bincount(minlength=100).tolist() == [1] * 100
    xte, yte = data.load_split(tmp_path / "out", "test")
    assert torch.equal(xte, torch.from_numpy(arrays["test"][0])) and yte.tolist() == arrays["test"][1].tolist()


def test_mnist_idx_download_and_parse(tmp_path):
    served = tmp_path / "served"
    arrays = build_mnist(served)
    checksums = {p.name: sha256_bytes(p) for p in served.iterdir()}
    with http_server(served) as (url, _):
        meta = prepare.prepare(
            "fashion_mnist", tmp_path / "out", root=tmp_path / "raw", val_size=10, mirror=url, checksums=checksums
        )
    assert meta["classes"][0] == "T-shirt/top" and meta["splits"] == {"train": 40, "val": 10, "test": 20}
    xte, yte = data.load_split(tmp_path / "out", "test")
    assert xte.shape == (20, 1, 28, 28) and torch.equal(xte[:, 0], torch.from_numpy(arrays["test"][0]))
    assert torch.equal(yte, torch.from_numpy(arrays["test"][1]))


def test_mnist_corrupt_idx_is_named(tmp_path):
    served = tmp_path / "served"
    build_mnist(served)
    (served / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20))
    checksums = {p.name: sha256_bytes(p) for p in served.iterdir()}
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is not an idx file of 1-d unsigned bytes"):
        prepare.prepare("mnist", tmp_path / "out", root=tmp_path / "raw", mirror=served.as_uri(), checksums=checksums)


def test_svhn_mat_via_file_mirror(tmp_path):
    served = tmp_path / "served"
    arrays = build_svhn(served)
    checksums = {p.name: sha256_bytes(p) for p in served.iterdir()}
    meta = prepare.prepare(
        "svhn", tmp_path / "out", root=tmp_path / "raw", val_size=10, mirror=served.as_uri(), checksums=checksums
    )
    assert meta["splits"] == {"train": 30, "val": 10, "test": 20}
    xte, yte = data.load_split(tmp_path / "out", "test")
    assert torch.equal(xte, torch.from_numpy(arrays["test"][0]))
    assert torch.equal(yte, torch.from_numpy(arrays["test"][1]))  # label 10 -> 0


# --------------------------------------------------------------------------- archives


def _member(name, kind=tarfile.REGTYPE, linkname=""):
    m = tarfile.TarInfo(name)
    m.type, m.linkname, m.size = kind, linkname, (1 if kind == tarfile.REGTYPE else 0)
    return m


@pytest.mark.parametrize(
    "member, message",
    [
        (_member("../evil"), "member '../evil' points outside"),
        (_member("cifar-10-batches-py/../../evil"), "points outside"),
        (_member("/tmp/evil-absolute"), "member '/tmp/evil-absolute' points outside"),
        (
            _member("cifar-10-batches-py/link", tarfile.SYMTYPE, "../../../evil"),
            "unsafe member 'cifar-10-batches-py/link'",
        ),
        (_member("cifar-10-batches-py/abs", tarfile.SYMTYPE, "/etc/passwd"), "unsafe member 'cifar-10-batches-py/abs'"),
        (_member("cifar-10-batches-py/hard", tarfile.LNKTYPE, "../evil"), "unsafe member"),
    ],
)
def test_archive_path_traversal_refused(tmp_path, member, message):
    archive = tmp_path / "served" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    build_cifar10(archive, extra_members=[member])
    dest = tmp_path / "a" / "b" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(DataError, match=f"refusing to extract cifar-10-python.tar.gz: .*{message}"):
        prepare.extract_tar(archive, dest)
    assert not list(tmp_path.rglob("evil*"))
    # through prepare (file:// mirror): same refusal, raw dir holds only the verified archive
    with pytest.raises(DataError, match="refusing to extract"):
        prepare.prepare(
            "cifar10",
            tmp_path / "out",
            root=tmp_path / "raw",
            mirror=archive.parent.as_uri(),
            checksums={archive.name: sha256_bytes(archive)},
        )
    assert [p.name for p in (tmp_path / "raw" / "cifar10").iterdir()] == [archive.name]
    assert not (tmp_path / "out" / "meta.json").exists()


def test_unpickler_refuses_arbitrary_globals(tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "data_batch_1"
    bad.write_bytes(pickle.dumps({"data": Payload()}, protocol=2))
    with pytest.raises(DataError, match="cannot read CIFAR batch data_batch_1: global .*print is not allowed"):
        prepare._unpickle(bad)


# --------------------------------------------------------------------------- imagefolder


def make_folder(root, classes=("cat", "dog"), splits=("train", "test"), size=(12, 10), mode="RGB", n=3):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                img = Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode)
                img.save(d / (f"{i}.png" if i % 2 == 0 else f"{i}.JPG"))
    return root


def test_imagefolder_rgb(tmp_path):
    root = make_folder(tmp_path / "imgs", n=5)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    meta = prepare.prepare("imagefolder", tmp_path / "out", root=root, val_size=2)
    assert meta["classes"] == ["cat", "dog"] and meta["splits"] == {"train": 8, "val": 2, "test": 10}
    assert (meta["channels"], meta["height"], meta["width"]) == (3, 10, 12)
    x, y = data.load_split(tmp_path / "out", "test")
    assert y.tolist() == [0] * 5 + [1] * 5
    png = np.array(Image.open(root / "test" / "cat" / "0.png"))
    assert torch.equal(x[0], torch.from_numpy(png).permute(2, 0, 1))


def test_imagefolder_applies_exif_orientation(tmp_path):
    root = make_folder(tmp_path / "imgs", size=(12, 10))
    img = Image.new("RGB", (10, 12), (255, 0, 0))  # stored 10 wide, shown 12 wide once rotated
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(root / "train" / "cat" / "phone.jpg", exif=exif)
    meta = prepare.prepare("imagefolder", tmp_path / "out", root=root, val_size=2)
    assert (meta["height"], meta["width"]) == (10, 12)


def test_imagefolder_gray_mixed_sizes_resized(tmp_path):
    root = make_folder(tmp_path / "imgs", mode="L", n=4)
    Image.new("L", (40, 20), 200).save(root / "train" / "dog" / "big.png")
    with pytest.raises(DataError, match="images differ in size .*set image_size"):
        prepare.prepare("imagefolder", tmp_path / "out", root=root)
    meta = prepare.prepare("imagefolder", tmp_path / "out", root=root, val_size=0.2, image_size=16)
    assert (meta["channels"], meta["height"], meta["width"]) == (1, 16, 16)
    assert data.load_split(tmp_path / "out", "train")[0].shape[1:] == (1, 16, 16)


def test_imagefolder_refuses_symlinks_leading_outside_the_root(tmp_path):
    root = make_folder(tmp_path / "imgs")
    outside = make_folder(tmp_path / "elsewhere", classes=("cat", "dog", "cow"))
    (root / "train" / "dog" / "inner.png").symlink_to(root / "train" / "cat" / "0.png")  # inside: fine
    assert prepare.prepare("imagefolder", tmp_path / "out", root=root, val_size=2)["splits"]["train"] == 5

    def refused(link, target):
        link.symlink_to(target)
        message = f"imagefolder: {link} is a symbolic link to {target}, outside {root}; images must lie inside"
        with pytest.raises(DataError, match=re.escape(message)):
            prepare.prepare("imagefolder", tmp_path / "out", root=root, val_size=2)
        link.unlink()

    refused(root / "train" / "cat" / "far.png", outside / "train" / "cow" / "0.png")  # an image
    (root / "test" / "cow").mkdir()
    shutil.copy(outside / "test" / "cow" / "0.png", root / "test" / "cow")
    refused(root / "train" / "cow", outside / "train" / "cow")  # a class folder
    shutil.rmtree(root / "test" / "cow")
    shutil.rmtree(root / "train")
    refused(root / "train", outside / "train")  # a whole split folder


def test_imagefolder_errors(tmp_path, monkeypatch):
    def prep(root):
        return prepare.prepare("imagefolder", tmp_path / "out", root=root)

    with pytest.raises(DataError, match=f"imagefolder: {tmp_path / 'missing'} does not exist"):
        prep(tmp_path / "missing")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(DataError, match="train has no classes"):
        prep(tmp_path / "empty")
    with pytest.raises(DataError, match="/test is missing"):
        prep(make_folder(tmp_path / "notest", splits=("train",)))
    root = make_folder(tmp_path / "differ")
    make_folder(root, classes=("bird",), splits=("test",))
    with pytest.raises(DataError, match="classes differ \\(only in train: \\[\\], only in test: \\['bird'\\]\\)"):
        prep(root)
    root = make_folder(tmp_path / "emptyclass")
    (root / "train" / "eel").mkdir()
    (root / "test" / "eel").mkdir()
    with pytest.raises(DataError, match="class 'eel' in .* has no images"):
        prep(root)
    root = make_folder(tmp_path / "garbage")
    (root / "train" / "dog" / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=f"{root / 'train' / 'dog' / 'bad.png'} is corrupt or not an image"):
        prep(root)
    root = make_folder(tmp_path / "truncated")
    good = (root / "test" / "cat" / "0.png").read_bytes()
    (root / "test" / "cat" / "0.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=f"{root / 'test' / 'cat' / '0.png'} is corrupt"):
        prep(root)
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # as importing WeasyPrint does
    with pytest.raises(DataError, match=f"{root / 'test' / 'cat' / '0.png'} is corrupt"):
        prep(root)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- change tracking


def test_folder_manifest_changes_with_the_listing_only(tmp_path):
    root = make_folder(tmp_path / "imgs")
    image = root / "train" / "cat" / "0.png"
    first = data.folder_manifest(root)
    assert data.folder_manifest(root) == first and len(first) == 64

    (root / "train" / ".DS_Store").write_bytes(b"ignored, as prepare ignores it")
    assert data.folder_manifest(root) == first
    shutil.copy2(image, root / "train" / "cat" / "copy.png")
    assert data.folder_manifest(root) != first
    (root / "train" / "cat" / "copy.png").unlink()
    assert data.folder_manifest(root) == first

    st = image.stat()
    image.write_bytes(image.read_bytes()[::-1])  # same size, other bytes, a new mtime
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # (later than the clock's granularity)
    changed = data.folder_manifest(root)
    assert changed != first
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))  # an older mtime (cp -p) is a change too
    assert data.folder_manifest(root) not in (first, changed)
    (root / "train" / "cat" / "0.png").rename(root / "train" / "cat" / "zero.png")
    assert data.folder_manifest(root) != first

    with pytest.raises(DataError, match=f"imagefolder: cannot list {tmp_path / 'missing'}"):
        data.folder_manifest(tmp_path / "missing")


def test_folder_manifest_follows_symlinks_and_survives_loops(tmp_path):
    root = make_folder(tmp_path / "imgs")
    outside = make_folder(tmp_path / "elsewhere", splits=("train",), classes=("cat",))
    (root / "train" / "cat" / "linked.png").symlink_to(outside / "train" / "cat" / "0.png")
    (root / "train" / "cat" / "dir").symlink_to(outside / "train")
    (root / "train" / "cat" / "loop").symlink_to(root / "train")
    (root / "train" / "cat" / "dangling.png").symlink_to(tmp_path / "nothing.png")
    first = data.folder_manifest(root)
    shutil.copy(outside / "train" / "cat" / "1.JPG", outside / "train" / "cat" / "0.png")  # a link's target
    assert data.folder_manifest(root) != first


def test_data_digest_sees_only_what_a_reader_reads(tmp_path):
    root = make_folder(tmp_path / "imgs", n=4)
    meta = prepare.prepare("imagefolder", tmp_path / "a", root=root, val_size=2)
    assert prepare.prepare("imagefolder", tmp_path / "b", root=root, val_size=2) == meta  # deterministic

    Image.new("RGB", (12, 10), (1, 2, 3)).save(root / "test" / "dog" / "0.png")
    changed = prepare.prepare("imagefolder", tmp_path / "c", root=root, val_size=2)
    assert data.data_digest(changed, ("train", "val")) == data.data_digest(meta, ("train", "val"))
    assert data.data_digest(changed, ("test",)) != data.data_digest(meta, ("test",))
    assert data.data_digest(changed) != data.data_digest(meta)
    assert data.data_digest(dict(meta, source="mirror")) == data.data_digest(meta)  # content only
