"""The file formats of the data sets, bytes to numpy arrays: idx files, CIFAR python batches, images, and a folder
or tarball read as one name -> bytes store.

Nothing here knows where a data set lives or what it is called: :mod:`pydeq.data` finds the files and loads them as
tensors, :mod:`pydeq.bench.local` and :mod:`pydeq.bench.archives` check copies with the same readers.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "FolderOrTar", "image_decoder", "open_maybe_gzip", "read_cifar_batch", "read_idx"]

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative int; got {limit!r}.")


def open_maybe_gzip(path: Path) -> IO[bytes]:
    """``path`` opened for reading bytes, gunzipped on the fly when its first bytes say gzip (whatever its name)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def read_idx(path: str | os.PathLike[str], limit: int | None = None) -> np.ndarray:
    """Read an idx file (raw or gzip) into an array of shape ``dims`` (first dim cut to ``limit``).

    Format (LeCun et al.): two zero bytes, a dtype code, the number of dimensions, then each dimension as a
    big-endian int32, then the data in C order.
    """
    _check_limit(limit)
    path = Path(path)
    with open_maybe_gzip(path) as f:
        head = f.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES:
            raise ValueError(f"{path} is not an idx file (header {head!r}); expected 00 00 <dtype code> <ndim>.")
        ndim = head[3]
        dims = [int(d) for d in np.frombuffer(f.read(4 * ndim), dtype=">i4")]
        if len(dims) != ndim or ndim == 0:
            raise ValueError(f"{path}: truncated idx header (ndim={ndim}).")
        if limit is not None:
            dims[0] = min(dims[0], limit)
        dtype = np.dtype(_IDX_DTYPES[head[2]])
        count = int(np.prod(dims))
        raw = f.read(count * dtype.itemsize)
    if len(raw) != count * dtype.itemsize:
        raise ValueError(f"{path}: truncated idx data ({len(raw)} bytes, expected {count * dtype.itemsize}).")
    return np.frombuffer(raw, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR python batches and nothing else: only numpy's array reconstructors are allowed.

    The python batches are pickles (the official distribution format); this keeps a hostile file from
    running code, since any other global is refused.
    """

    def find_class(self, module: str, name: str) -> object:
        allowed = _allowed_globals()
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in a CIFAR batch: only numpy arrays are allowed.")
        return allowed[(module, name)]


def _allowed_globals() -> dict[tuple[str, str], object]:
    import codecs

    try:  # numpy >= 2; "numpy.core" still names these in old pickles
        from numpy._core.multiarray import _reconstruct
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
        from numpy.core.numeric import _frombuffer
    out: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                          ("_codecs", "encode"): codecs.encode}
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = _reconstruct
        out[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return out


def read_cifar_batch(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch (its bytes) as ``x: (n, 3, 32, 32)`` uint8 and ``y: (n,)`` int64, unpickled safely."""
    d = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError("not a CIFAR-10 python batch: expected a dict with b'data' and b'labels'.")
    x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(d[b"labels"], dtype=np.int64)


_TAR_INDEX: dict[tuple[str, int, int], dict[str, tarfile.TarInfo]] = {}


class FolderOrTar:
    """Name → bytes over a folder or a tarball (``names``: its files, ``/``-separated), so every layout is parsed
    once; :mod:`pydeq.bench.local` checks copies with it."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self._tar = tarfile.open(source) if source.is_file() else None
        if self._tar is not None:
            key = (str(source.resolve()), source.stat().st_mtime_ns, source.stat().st_size)
            if key not in _TAR_INDEX:  # listing 60,000 members of a .tar.gz takes seconds; reading is cheap
                _TAR_INDEX.clear()
                _TAR_INDEX[key] = {m.name: m for m in self._tar.getmembers() if m.isfile()}
            self._members = _TAR_INDEX[key]
            self.names = sorted(self._members)
        else:
            self.names = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())

    def read_many(self, names: list[str]) -> dict[str, bytes]:
        """Contents of ``names``; tar members are read in archive order (a backward seek in a .gz restarts it)."""
        if self._tar is None:
            return {n: (self.source / n).read_bytes() for n in names}
        out = {}
        for name in sorted(names, key=lambda n: self._members[n].offset_data):
            f = self._tar.extractfile(self._members[name])
            out[name] = f.read() if f is not None else b""
        return out

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()


def image_decoder() -> Callable[[bytes], np.ndarray]:
    """A function from an image file's bytes to an ``(h, w, 3)`` uint8 RGB array (Pillow, imported once)."""
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("reading CIFAR-10 images needs Pillow: `pip install pillow` (or `pydeq[bench]`).") from e

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)

    return decode
