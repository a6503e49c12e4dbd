"""Weight and spectral normalisation computed once per training step, not once per solver iteration.

A DEQ calls f tens of times per forward pass. ``torch.nn.utils.parametrizations`` would recompute each
normalised weight at every call, and spectral normalisation would run a power iteration each time, so the map
being solved would change from one solver step to the next. Here the normalised weights are computed once when
the layer is entered (with the caller's grad mode, so gradients reach the raw parameters through them) and
reused by every call of f in that forward pass (Bai, Koltun & Kolter 2019 and TorchDEQ do the same).

    deq = pydeq.DEQ(Cell())
    apply_norm(deq, SpectralNorm())          # every Linear/Conv weight inside deq, cached per forward
    with norm_cached(deq):                   # optional: also cover losses computed after the forward
        loss = task(deq(x)) + deq.jacobian_loss()

The parametrizations are torch's own (``weight_norm``, ``spectral_norm``), so ``state_dict`` keys are torch's
and load in any torch model parametrised the same way; ``copy.deepcopy`` works; whole-module pickling is refused
by torch for parametrised modules: save the ``state_dict`` instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.nn.utils import parametrizations, parametrize

from .._checks import check_int, check_positive

__all__ = ["WeightNorm", "SpectralNorm", "apply_norm", "remove_norm", "norm_cached", "DEFAULT_TYPES"]

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
)


@dataclass(frozen=True, kw_only=True)
class WeightNorm:
    """``W = g v / ||v||`` (Salimans & Kingma 2016), norms over every dimension but ``dim``.

    Args:
        dim: the dimension that keeps one scale ``g`` per slice; ``None`` for one scale per tensor. Transposed
            convolutions keep their output channels in dimension 1: use ``dim=1`` for them.
    """

    dim: int | None = 0

    def register(self, module: nn.Module, name: str) -> None:
        parametrizations.weight_norm(module, name, dim=self.dim)


@dataclass(frozen=True, kw_only=True)
class SpectralNorm:
    """``W = v / sigma(v)`` with ``sigma`` the largest singular value by power iteration (Miyato et al. 2018).

    The power iteration advances ``n_power_iterations`` steps once per forward pass in training mode (not once per
    solver step), its vectors are buffers (saved in ``state_dict``, broadcast by DDP).

    Args:
        n_power_iterations: power-iteration steps per training step.
        eps: added to norms in the power iteration.
    """

    n_power_iterations: int = 1
    eps: float = 1e-12

    def __post_init__(self) -> None:
        check_int("SpectralNorm.n_power_iterations", self.n_power_iterations)
        check_positive("SpectralNorm.eps", self.eps)

    def register(self, module: nn.Module, name: str) -> None:
        parametrizations.spectral_norm(module, name, n_power_iterations=self.n_power_iterations, eps=self.eps)


class _EnterCache:
    """Forward pre-hook: open torch's parametrisation cache and fill it with the caller's grad mode."""

    def __call__(self, module: nn.Module, args: Any) -> None:
        stack = module.__dict__.setdefault("_pydeq_norm_cache", [])
        ctx = parametrize.cached()
        ctx.__enter__()
        stack.append(ctx)
        _fill(module)


class _ExitCache:
    """Forward hook (``always_call``): close the cache opened by :class:`_EnterCache`, even after an error."""

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        stack = module.__dict__.get("_pydeq_norm_cache")
        if stack:
            stack.pop().__exit__(None, None, None)


def _fill(module: nn.Module) -> None:
    # touching each parametrised tensor once computes it into the cache; every later access (every f call of
    # the solve, the adjoint's recorded call) reuses that tensor and its graph to the raw parameters
    for sub in module.modules():
        if parametrize.is_parametrized(sub):
            for name in sub.parametrizations:
                getattr(sub, name)


def apply_norm(module: nn.Module, norm: WeightNorm | SpectralNorm, *, names: Sequence[str] = ("weight",),
               types: tuple[type[nn.Module], ...] = DEFAULT_TYPES, exclude: Sequence[str] = ()) -> list[str]:
    """Normalise the weights of every layer of ``types`` inside ``module``, cached once per ``module`` call.

    Args:
        module: usually the DEQ layer (or the model that calls it once per step); its forward hooks hold the cache.
        norm: ``WeightNorm()`` or ``SpectralNorm()``.
        names: parameter names to normalise in each matching layer.
        types: layer classes to normalise (``DEFAULT_TYPES``: linear and (transposed) convolutions).
        exclude: qualified-name prefixes to leave alone, e.g. ``("f.embed",)``.

    Returns:
        The qualified names of the normalised parameters.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"apply_norm needs an nn.Module; got {type(module).__name__}.")
    if not isinstance(norm, (WeightNorm, SpectralNorm)):
        raise TypeError(f"norm must be WeightNorm() or SpectralNorm(); got {type(norm).__name__}.")
    if _our_hooks(module):
        raise ValueError(f"{type(module).__name__} is already normalised by apply_norm; call remove_norm first.")
    done = []
    for qual, sub in list(module.named_modules()):
        if not isinstance(sub, types) or any(qual == e or qual.startswith(e + ".") for e in exclude):
            continue
        for name in names:
            if isinstance(getattr(sub, name, None), nn.Parameter):
                norm.register(sub, name)
                done.append(f"{qual}.{name}" if qual else name)
    if not done:
        raise ValueError(
            f"apply_norm found no parameter named {tuple(names)} in layers of type {[t.__name__ for t in types]} "
            f"inside {type(module).__name__}; pass types=... or names=... to match your layers."
        )
    module.register_forward_pre_hook(_EnterCache())
    module.register_forward_hook(_ExitCache(), always_call=True)
    return done


def _our_hooks(module: nn.Module) -> list[tuple[dict, int]]:
    # found by type rather than kept as handles, so a deepcopy of the module owns (and can remove) its own hooks
    return [(hooks, key) for hooks in (module._forward_pre_hooks, module._forward_hooks)
            for key, hook in list(hooks.items()) if isinstance(hook, (_EnterCache, _ExitCache))]


def remove_norm(module: nn.Module) -> None:
    """Undo :func:`apply_norm`: bake the current normalised weights back into plain parameters."""
    hooks = _our_hooks(module)
    if not hooks:
        raise ValueError(f"{type(module).__name__} has no normalisation from apply_norm to remove.")
    for table, key in hooks:
        del table[key]
        module._forward_hooks_always_called.pop(key, None)
    for sub in module.modules():
        if parametrize.is_parametrized(sub):
            # copy.deepcopy shares torch's generated Parametrized* class between original and copy, and removal
            # deletes the weight property from that class: give this module a class of its own first
            cls = type(sub)
            sub.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
            for name in list(sub.parametrizations):
                parametrize.remove_parametrizations(sub, name, leave_parametrized=True)


@contextlib.contextmanager
def norm_cached(module: nn.Module) -> Iterator[None]:
    """Within the block every normalised weight in ``module`` is computed once (e.g. forward + auxiliary losses)."""
    with parametrize.cached():
        _fill(module)
        yield
