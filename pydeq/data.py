"""Image-classification data for examples and benchmarks: MNIST, Fashion-MNIST and CIFAR-10 (:data:`DATASETS`).

Loaders read the standard on-disk formats (parsed by :mod:`pydeq.data_formats`) and return ``(x, y)`` with ``x``
a float32 tensor in [0, 1] of shape ``(n, channels, height, width)`` and ``y`` an int64 tensor of shape ``(n,)``;
normalisation is the model's business.

- MNIST / Fashion-MNIST: the four idx files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-…``), raw or gzip-compressed (detected from the bytes, not the name).
- CIFAR-10: the official python batches (``data_batch_1..5``, ``test_batch``) in a folder or in the official
  tarball, or images laid out ``<split>/<class>/NNNN.jpg`` (or ``.png``) in a folder or tarball (needs Pillow).

``limit`` reads only the first ``limit`` examples, which keeps tests and CI cheap. The order is the official one,
except for per-class image layouts, which carry no cross-class order: there the examples are interleaved
(the first image of every class, then the second, …) so that any prefix is class-balanced.

Getting the files is :func:`pydeq.bench.fetch.fetch`'s job (``pydeq data fetch``); both share the cache layout
``<cache>/<name>/``, a folder per name in :data:`DATASETS`, under ``$PYDEQ_DATA`` or ``~/.cache/pydeq``. Offline,
``pydeq data fetch NAME --from FILE`` installs a copy you already have, after checking it; the README's "Data sets"
section lists the sources and what ``--from`` accepts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from pydeq.data_formats import IMAGE_SUFFIXES, FolderOrTar, _check_limit, image_decoder, read_cifar_batch, read_idx

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "DataMissingError",
    "default_cache_dir",
    "load",
    "load_cifar10",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_IDX_PREFIX = {"train": "train", "test": "t10k"}
DOCS = "the 'Data sets' section of pydeq's README"  # where every "how to get the data" message points


class DataMissingError(FileNotFoundError):
    """A data set is not where it was looked for; the message says how to get it."""


def default_cache_dir() -> Path:
    """The data cache: ``$PYDEQ_DATA`` if set, else ``~/.cache/pydeq``."""
    env = os.environ.get("PYDEQ_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pydeq"


def _check_split(split: str) -> None:
    if split not in _IDX_PREFIX:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")


# ---------------------------------------------------------------------------------------------------- idx files
def _find_idx(root: Path, subdir: str, stem: str) -> Path:
    for folder in (root, root / subdir):
        for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise DataMissingError(
        f"no {stem}[.gz] in {root} or {root / subdir}. Fetch it with `pydeq data fetch {subdir} --cache {root}`, "
        f"or install a copy you have (the four idx files in a tarball, .deb or folder) with "
        f"`pydeq data fetch {subdir} --cache {root} --from FILE`; see {DOCS}."
    )


def _load_idx_pair(root: str | os.PathLike[str], subdir: str, split: str, limit: int | None) -> tuple:
    _check_split(split)
    _check_limit(limit)
    prefix = _IDX_PREFIX[split]
    images = read_idx(_find_idx(Path(root), subdir, f"{prefix}-images-idx3-ubyte"), limit)
    labels = read_idx(_find_idx(Path(root), subdir, f"{prefix}-labels-idx1-ubyte"), limit)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{subdir} {split}: {images.shape[0]} images but {labels.shape[0]} labels.")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_mnist(
    root: str | os.PathLike[str], split: str = "train", limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from its idx files in ``root`` (or ``root/mnist``).

    Returns ``x: (n, 1, 28, 28)`` float32 in [0, 1] and ``y: (n,)`` int64; ``split`` is ``"train"`` (60,000)
    or ``"test"`` (10,000). Reference: LeCun, Bottou, Bengio, Haffner (1998).
    """
    return _load_idx_pair(root, "mnist", split, limit)


def load_fashion_mnist(
    root: str | os.PathLike[str], split: str = "train", limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST from its idx files in ``root`` (or ``root/fashion-mnist``); shapes as :func:`load_mnist`.

    Reference: Xiao, Rasul, Vollgraf (2017), arXiv 1708.07747.
    """
    return _load_idx_pair(root, "fashion-mnist", split, limit)


# ---------------------------------------------------------------------------------------------------- CIFAR-10
def _cifar_batches(files: FolderOrTar, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    wanted = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    by_base = {n.rsplit("/", 1)[-1]: n for n in files.names}
    if not all(w in by_base for w in wanted):
        return None
    xs, ys, n = [], [], 0
    for w in wanted:
        if limit is not None and n >= limit:
            break
        x, y = read_cifar_batch(files.read_many([by_base[w]])[by_base[w]])
        xs.append(x)
        ys.append(y)
        n += len(y)
    x, y = np.concatenate(xs), np.concatenate(ys)
    return (x[:limit], y[:limit]) if limit is not None else (x, y)


def _cifar_images(files: FolderOrTar, split: str, limit: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    per_class: dict[str, list[str]] = {c: [] for c in CIFAR10_CLASSES}
    for name in files.names:
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] == split and parts[-2] in per_class and name.endswith(IMAGE_SUFFIXES):
            per_class[parts[-2]].append(name)
    if not any(per_class.values()):
        return None
    order = [(c, names[i]) for i in range(max(map(len, per_class.values())))
             for c, names in enumerate(per_class.values()) if i < len(names)]
    order = order[:limit] if limit is not None else order
    decode = image_decoder()
    blobs = files.read_many([name for _, name in order])
    x = np.stack([decode(blobs[name]) for _, name in order]) if order else np.zeros((0, 32, 32, 3), np.uint8)
    return x.transpose(0, 3, 1, 2), np.array([c for c, _ in order], dtype=np.int64)


def _cifar_sources(root: Path) -> Iterator[Path]:
    yield root
    if root.is_dir():
        for name in ("cifar10", "cifar-10-batches-py", "cifar10/cifar-10-batches-py"):
            yield root / name
        yield from sorted((root / "cifar10").glob("*.tar*")) if (root / "cifar10").is_dir() else ()


def load_cifar10(
    root_or_tarball: str | os.PathLike[str], split: str = "train", limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from python batches or per-class images, in a folder or a tarball (also under ``root/cifar10``).

    Returns ``x: (n, 3, 32, 32)`` float32 in [0, 1] and ``y: (n,)`` int64 with classes in
    :data:`CIFAR10_CLASSES` order; ``split`` is ``"train"`` (50,000) or ``"test"`` (10,000).
    Reference: Krizhevsky (2009), "Learning multiple layers of features from tiny images".
    """
    _check_split(split)
    _check_limit(limit)
    root = Path(root_or_tarball)
    for source in _cifar_sources(root):
        if not source.exists():
            continue
        files = FolderOrTar(source)
        try:
            found = _cifar_batches(files, split, limit) or _cifar_images(files, split, limit)
        finally:
            files.close()
        if found is not None:
            x, y = found
            return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y)
    cache = "DIR" if root.is_file() else root  # a tarball was given: the fix is a cache folder, named by the user
    raise DataMissingError(
        f"no CIFAR-10 {split} data in {root}: expected data_batch_1..5/test_batch or {split}/<class>/*.jpg, "
        f"in a folder or tarball. Fetch it with `pydeq data fetch cifar10 --cache {cache}`, or install a copy you "
        f"have with `pydeq data fetch cifar10 --cache {cache} --from FILE`; see {DOCS}."
    )


_LOADERS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "mnist": load_mnist, "fashion-mnist": load_fashion_mnist, "cifar10": load_cifar10}
DATASETS: tuple[str, ...] = tuple(_LOADERS)
"""The data sets pydeq reads, by name (each one's cache folder too): the one list that :func:`load`, ``pydeq data``
and :mod:`pydeq.bench.fetch` take their names from."""


def load(
    name: str, split: str = "train", limit: int | None = None, *, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load data set ``name`` (one of :data:`DATASETS`) from the cache.

    ``cache_dir`` defaults to :func:`default_cache_dir`. Raises :class:`DataMissingError` (with the command that
    fetches it) when the files are not there; nothing is downloaded here.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {sorted(DATASETS)}.")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return _LOADERS[name](root, split, limit)


def __getattr__(name: str) -> object:
    # pydeq.data.fetch moved to pydeq.bench.fetch.fetch (the harness fetches, this module only reads): the old name
    # stays one release. Imported by name, not statically, because pydeq.bench.fetch itself reads this module.
    if name == "fetch":
        import importlib
        import warnings

        warnings.warn("pydeq.data.fetch moved to pydeq.bench.fetch.fetch (or `pydeq data fetch NAME`); the old name "
                      "goes in the next release.", DeprecationWarning, stacklevel=2)
        return importlib.import_module("pydeq.bench.fetch").fetch
    raise AttributeError(f"module 'pydeq.data' has no attribute {name!r}")
