"""The ``pydeq`` command line: argument errors exit 2 with a message; data commands work offline."""

from __future__ import annotations

import io
import pickle
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pydeq import cli
from pydeq.bench import fetch as fetch_mod

REPO = Path(__file__).resolve().parents[1]


def exit_code(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required"),
        (["bench"], "the following arguments are required: suite"),
        (["bench", "fast"], "invalid choice: 'fast'"),
        (["bench", "quick", "--repeats", "0"], "expected a positive integer; got 0"),
        (["bench", "quick", "--repeats", "many"], "expected a positive integer; got 'many'"),
        (["bench", "quick", "--seed", "-1"], "expected a non-negative integer; got -1"),
        (["bench", "quick", "--backend", "jax"], "invalid choice: 'jax'"),
        (["bench", "quick", "--device", "tpu"], "is not a device|only cpu and cuda"),
        (["bench", "quick", "--device", "meta"], "only cpu and cuda are supported"),
        (["bench", "quick", "--only", "no-such-claim"], "unknown claim\\(s\\) no-such-claim; available: .*selftest"),
        (["bench", "quick", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["data", "fetch", "svhn"], "invalid choice: 'svhn'"),
        (["data", "fetch", "--from", "x.tar.gz"], "--from installs one data set's copy, so name that one: "
                                                  "`pydeq data fetch NAME --from x.tar.gz` .* got all"),
        (["data", "fetch", "mnist", "cifar10", "--from", "x.tgz"], "--from installs one data set's copy"),
        (["data", "fetch", "mnist", "--from", "no-such-copy.tgz"], "--from no-such-copy.tgz: no such file or folder"),
        (["data", "fetch", "mnist", "--source", "official", "--from", str(REPO / "pyproject.toml")],
         "--from installs a local copy, so --source official has nothing to choose"),
        (["data", "fetch", "mnist", "--source", "ftp"], "invalid choice: 'ftp'"),
    ],
)
def test_bad_arguments_exit_2_with_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = exit_code(argv, capsys)
    assert code == 2
    assert re.search(message, err), err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = exit_code(["bench", "quick", "--device", "cuda"], capsys)
    assert code == 2 and "CUDA is not available here" in err and "--device cpu" in err


def test_julia_backend_unavailable_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import pydeq.julia

    def refuse() -> None:
        raise pydeq.julia.JuliaUnavailableError("no Julia on this machine")

    monkeypatch.setattr(pydeq.julia, "load", refuse)
    code, err = exit_code(["bench", "quick", "--backend", "julia", "--only", "selftest"], capsys)
    assert code == 2 and "Julia engine is not usable here: no Julia on this machine" in err


def test_julia_backend_not_importable_exits_2(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "pydeq.julia", None)  # import raises ImportError
    code, err = exit_code(["bench", "quick", "--backend", "julia"], capsys)
    assert code == 2 and "Julia engine cannot be imported" in err


def test_bench_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "list"]) == 0
    assert "selftest" in capsys.readouterr().out


def cifar_batches_tarball(path: Path, labels: list[int]) -> Path:
    """A CIFAR-10 python-batches tarball in the official layout, with ``labels`` in every batch."""
    members = {f"cifar-10-batches-py/{n}": pickle.dumps({b"data": np.zeros((len(labels), 3072), np.uint8),
                                                         b"labels": labels}, protocol=2)
               for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


def test_data_info_and_fetch_cifar_from_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    tarball = cifar_batches_tarball(tmp_path / "c.tar.gz", [1, 2])
    assert cli.main(["data", "fetch", "cifar10", "--cache", str(cache), "--from", str(tarball)]) == 0
    assert (cache / "cifar10" / "c.tar.gz").is_file()
    assert "python batches: 10 train, 2 test" in capsys.readouterr().out
    assert cli.main(["data", "info", "--cache", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "c.tar.gz" in out and "missing: pydeq data fetch mnist" in out


def test_data_fetch_from_a_bad_copy_exits_1_saying_what_was_wrong(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    tarball = cifar_batches_tarball(tmp_path / "c.tar.gz", [4, 12])
    code = cli.main(["data", "fetch", "cifar10", "--cache", str(tmp_path / "cache"), "--from", str(tarball)])
    err = capsys.readouterr().err
    assert code == 1
    assert re.search(r"pydeq data fetch: --from .*c.tar.gz was not installed: .*data_batch_1 has 2 images and 2 "
                     r"labels in 4..12; expected one label in 0..9 per image\. `--from` takes the official "
                     r"cifar-10-python.tar.gz .*; see the 'Data sets' section of pydeq's README", err), err
    assert "shared" not in err and not (tmp_path / "cache" / "cifar10").exists()


def test_data_commands_take_their_names_from_data_DATASETS(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from pydeq.data import DATASETS

    fetch = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["data"]
    fetch = next(a for a in fetch._actions if a.dest == "data_command").choices["fetch"]
    assert next(a for a in fetch._actions if a.dest == "names").choices == [*DATASETS, "all"]
    with pytest.raises(SystemExit):
        cli.main(["data", "fetch", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "mnist, fashion-mnist, cifar10 or all (default: all)" in help_text
    from_help = next(a for a in fetch._actions if a.dest == "from_path").help
    assert all(re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", from_help) for name in DATASETS), from_help
    assert cli.main(["data", "info", "--cache", str(tmp_path)]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == list(DATASETS)
    code, err = exit_code(["data", "fetch", "--from", "x.tgz"], capsys)
    assert code == 2 and "with NAME one of mnist, fashion-mnist, cifar10; got all" in err


def test_fetch_help_names_no_checkout_folder(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["data", "fetch", "--help"])
    out = capsys.readouterr().out
    assert "--from FILE" in out and "shared" not in out


# ---------------------------------------------------------------------------------------------------- extras
@pytest.mark.parametrize("module", list(cli.BENCH_MODULES))
@pytest.mark.parametrize("suite", ["quick", "paper", "engine"])
def test_bench_without_the_bench_extra_exits_2_naming_it(module: str, suite: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ModuleNotFoundError
    code, err = exit_code(["bench", suite, "--only", "selftest", "--out", str(tmp_path)], capsys)
    assert code == 2, err
    dist = cli.BENCH_MODULES[module]
    package = "" if dist == module else f" (package {dist})"
    assert (f"`pydeq bench {suite}` needs the optional module '{module}'{package}, which is not installed here. "
            "It comes with pydeq's `bench` extra: pip install 'pydeq[bench]'") in err, err
    assert not list(tmp_path.iterdir())  # refused before anything ran


def test_bench_names_every_missing_module_and_list_needs_none(monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    for module in cli.BENCH_MODULES:
        monkeypatch.setitem(sys.modules, module, None)
    code, err = exit_code(["bench", "quick"], capsys)
    assert code == 2 and "needs the optional modules 'tqdm', 'matplotlib', 'PIL' (package pillow), 'torchdeq', " \
        "'torchdiffeq', which are not installed here. They come with pydeq's `bench` extra" in err, err
    assert cli.main(["bench", "list"]) == 0 and "selftest" in capsys.readouterr().out


def test_bench_modules_are_the_bench_extra() -> None:
    """The check's list and pyproject.toml's `bench` extra name the same distributions."""
    from importlib.metadata import requires

    extra = {re.split(r"[<>=!~; \[]", r, maxsplit=1)[0].lower() for r in requires("pydeq") or []
             if re.search(r"""extra\s*==\s*["']bench["']""", r)}
    assert extra == set(cli.BENCH_MODULES.values())


def test_missing_extra_in_a_real_process_exits_2() -> None:
    """As a user without the extra sees it: the console entry point, no traceback, status 2."""
    code = ("import runpy, sys; sys.modules['tqdm'] = None; sys.argv = ['pydeq', 'bench', 'quick']; "
            "runpy.run_module('pydeq.cli', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 2, r.stderr
    assert "needs the optional module 'tqdm'" in r.stderr and "pip install 'pydeq[bench]'" in r.stderr
    assert "Traceback" not in r.stderr


def test_data_fetch_failure_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fetch_mod, "_MNIST_URLS", ("http://127.0.0.1:9/",))  # refused at once, no network used
    code = cli.main(["data", "fetch", "mnist", "--source", "official", "--cache", str(tmp_path), "--no-progress",
                     "--timeout", "2"])
    assert code == 1
    assert "could not fetch mnist" in capsys.readouterr().err


def test_real_process_exit_status() -> None:
    """The console entry point really exits 2 (not just raises inside main)."""
    for module in ("pydeq.cli", "pydeq.bench"):
        args = [sys.executable, "-m", module] + (["bench"] if module == "pydeq.cli" else []) + ["quick", "--seed", "x"]
        r = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
        assert r.returncode == 2, r.stderr
        assert "expected a non-negative integer" in r.stderr
