"""DEQ layers: ``z* = f(z*, x)`` as an ``nn.Module``, with Skip / Skip Reg initialisation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .._adjoint import AbstractAdjoint
from .._checks import check_int, check_policy, check_positive
from .._norms import converged, rms_norm
from .._root import AbstractRootFinder
from .._solution import Solution, Status
from ..fixed_point import fixed_point
from .jacobian import jacobian_frobenius

__all__ = ["DEQ", "SkipDEQ", "SkipRegDEQ"]


class _FOfZero:
    """Skip Reg initial state ``z0 = f(0, x)`` (Pal et al. 2022): no extra network."""

    def __call__(self, f: Callable, zeros: Tensor, x: Any) -> Tensor:
        return f(zeros, x)


class DEQ(nn.Module):
    """Deep equilibrium layer: returns ``z*`` with ``z* = f(z*, x)`` (Bai, Kolter & Koltun 2019).

    Args:
        f: ``nn.Module`` or callable, called ``f(z, x)``; maps ``(batch, *state)`` to itself.
        solver: root finder (``Anderson()`` default, ``Broyden``, ``NewtonKrylov``, ``FixedPointIteration``)
            or ``SteadyState(Tsit5())`` for a continuous DEQ (Pal et al. 2022).
        adjoint: gradient method; ``ImplicitAdjoint()`` default, ``DirectAdjoint()`` back-propagates through
            the solver's iterations.
        init: ``None`` starts from zeros; a module ``g`` starts from ``g(x)`` (Skip DEQ).
        state_shape: per-sample state shape when it differs from ``x.shape[1:]``.
        eval_solver: solver used in ``eval()`` mode (e.g. more steps); defaults to ``solver``.
        on_failure: ``"warn"``, ``"raise"`` or ``"return"`` for samples that do not converge.
        skip_weight, jacobian_weight: weights used by :meth:`aux_loss`.

    After each call ``self.last_solution`` holds the :class:`Solution` (``extras["z0"]`` is the initial
    state); ``forward(x, return_solution=True)`` also returns it. Inside ``with deq.pretraining(n):`` (or
    with ``deq.unrolled_steps = n``) the layer applies f ``n`` times with ordinary back-propagation, as
    the papers pretrain, instead of solving.
    """

    def __init__(
        self,
        f: Callable[[Tensor, Any], Tensor],
        *,
        solver: AbstractRootFinder | None = None,
        adjoint: AbstractAdjoint | None = None,
        init: Callable[[Any], Tensor] | None = None,
        state_shape: tuple[int, ...] | None = None,
        eval_solver: AbstractRootFinder | None = None,
        on_failure: str = "warn",
        skip_weight: float = 0.0,
        jacobian_weight: float = 0.0,
    ):
        super().__init__()
        if not callable(f):
            raise TypeError(f"f must be an nn.Module or callable f(z, x); got {type(f).__name__}.")
        if init is not None and not callable(init) and not isinstance(init, _FOfZero):
            raise TypeError(f"init must be None or a module/callable init(x); got {type(init).__name__}.")
        for name, value in (("solver", solver), ("eval_solver", eval_solver)):
            if value is not None and not isinstance(value, AbstractRootFinder):
                raise TypeError(
                    f"DEQ {name} must be a root finder (Anderson, Broyden, NewtonKrylov, FixedPointIteration) or "
                    f"SteadyState(Tsit5()) for a continuous DEQ; got {type(value).__name__}. "
                    "An ODE method alone integrates a fixed horizon: use it in NeuralODE, or wrap it in SteadyState."
                )
        if adjoint is not None and not isinstance(adjoint, AbstractAdjoint):
            raise TypeError(
                "DEQ adjoint must be a pydeq adjoint of an equilibrium (ImplicitAdjoint, BroydenReuseAdjoint, "
                f"JacobianFreeAdjoint, PhantomAdjoint, DirectAdjoint); got {type(adjoint).__name__}. "
                "CheckpointAdjoint, BacksolveAdjoint and InterpolatingAdjoint differentiate a finite-horizon ODE "
                "solve (NeuralODE)."
            )
        check_policy(on_failure)
        check_positive("skip_weight", skip_weight, allow_zero=True)
        check_positive("jacobian_weight", jacobian_weight, allow_zero=True)
        self.f = f
        self.init = init
        self.solver, self.adjoint, self.eval_solver = solver, adjoint, eval_solver
        self.state_shape = None if state_shape is None else tuple(state_shape)
        self.on_failure = on_failure
        self.skip_weight, self.jacobian_weight = skip_weight, jacobian_weight
        self.unrolled_steps: int | None = None
        self.last_solution: Solution | None = None
        self._last_x: Any = None

    def forward(self, x: Any, z0: Tensor | None = None, *, return_solution: bool = False) -> Tensor | tuple:
        """``x``: ``(batch, ...)``; ``z0``: optional ``(batch, *state)`` initial guess.

        Returns ``z*`` of shape ``(batch, *state)``, or ``(z*, solution)`` with ``return_solution=True``.
        """
        start = self.initial_state(x) if z0 is None else z0
        if self.unrolled_steps is not None:
            solution = self._unrolled(x, start)
        else:
            solver = self.eval_solver if (not self.training and self.eval_solver is not None) else self.solver
            solution = fixed_point(self.f, x, start, solver=solver, adjoint=self.adjoint, on_failure=self.on_failure)
        solution.extras["z0"] = start
        self.last_solution, self._last_x = solution, x
        return (solution.z, solution) if return_solution else solution.z

    def initial_state(self, x: Any) -> Tensor:
        """The solve's starting point: zeros, ``init(x)`` (Skip DEQ) or ``f(0, x)`` (Skip Reg DEQ)."""
        if not isinstance(x, Tensor) and self.state_shape is None:
            raise ValueError("x is not a tensor: pass state_shape=... or z0 so the state's shape is known.")
        batch = x.shape[0]
        shape = (batch, *(self.state_shape if self.state_shape is not None else x.shape[1:]))
        ref = x if isinstance(x, Tensor) else next(iter(self.parameters()))
        zeros = ref.new_zeros(shape)
        if self.init is None:
            return zeros
        z0 = self.init(self.f, zeros, x) if isinstance(self.init, _FOfZero) else self.init(x)
        if not isinstance(z0, Tensor) or z0.shape != shape:
            got = tuple(z0.shape) if isinstance(z0, Tensor) else type(z0).__name__
            raise ValueError(
                f"the initial-state network returned {got}, but the DEQ state is {shape}. Make init(x) return "
                "(batch, *state), or pass state_shape=... if the state differs from x's shape."
            )
        return z0

    def __getstate__(self) -> dict:
        # the last solution holds graph-attached tensors: not part of the model, and deepcopy/pickle refuse them
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        state = dict(state)
        state["last_solution"], state["_last_x"] = None, None
        return state

    @contextlib.contextmanager
    def pretraining(self, steps: int) -> Iterator[DEQ]:
        """Within the block, apply f ``steps`` times with ordinary back-propagation instead of solving."""
        check_int("steps", steps)
        previous, self.unrolled_steps = self.unrolled_steps, steps
        try:
            yield self
        finally:
            self.unrolled_steps = previous

    def _unrolled(self, x: Any, z0: Tensor) -> Solution:
        check_int("unrolled_steps", self.unrolled_steps)
        z, previous = z0, z0
        for _ in range(self.unrolled_steps):
            previous, z = z, self.f(z, x)
        solver = self.solver
        norm = solver.norm if solver is not None else rms_norm
        rtol, atol = (solver.rtol, solver.atol) if solver is not None else (0.0, 0.0)
        residual = norm(z - previous).detach()
        # the solvers' stop test, on the last unrolled step (z plays f(z), previous plays z)
        ok = converged(residual, norm(z).detach(), rtol=rtol, atol=atol)
        status = torch.where(ok, int(Status.SUCCESS), int(Status.MAX_STEPS)).long()
        steps = torch.full_like(status, self.unrolled_steps)
        return Solution(z=z, residual=residual, status=status, nfe=self.unrolled_steps, steps=steps)

    def skip_loss(self) -> Tensor:
        """Mean absolute gap ``mean |z0 - z*|`` of the last call (Skip DEQ training signal)."""
        sol = self._require_solution()
        return (sol.extras["z0"] - sol.z).abs().mean()

    def jacobian_loss(self, probes: int = 1) -> Tensor:
        """Hutchinson estimate of ``mean_batch ||J_f(z*)||_F^2 / n`` at the last ``z*`` (differentiable)."""
        sol = self._require_solution()
        x = self._last_x
        est = jacobian_frobenius(lambda z: self.f(z, x), sol.z, probes=probes)
        return est.mean() / sol.z[0].numel()

    def aux_loss(self) -> Tensor:
        """``skip_weight * skip_loss() + jacobian_weight * jacobian_loss()`` for the last call."""
        sol = self._require_solution()
        total = sol.z.new_zeros(())
        if self.skip_weight:
            total = total + self.skip_weight * self.skip_loss()
        if self.jacobian_weight:
            total = total + self.jacobian_weight * self.jacobian_loss()
        return total

    def _require_solution(self) -> Solution:
        if self.last_solution is None:
            raise RuntimeError("no solution yet: call the layer on an input first.")
        return self.last_solution


class SkipDEQ(DEQ):
    """Skip DEQ (Pal et al. 2022): an explicit network ``init(x)`` predicts the initial state.

    Train with ``loss + w * deq.skip_loss()`` so ``init`` learns to land near ``z*``.
    """

    def __init__(self, f: Callable[[Tensor, Any], Tensor], init: nn.Module, **kwargs: Any):
        if not callable(init):
            raise TypeError(f"SkipDEQ needs an init network init(x); got {type(init).__name__}.")
        super().__init__(f, init=init, **kwargs)


class SkipRegDEQ(DEQ):
    """Skip Reg DEQ (Pal et al. 2022): initial state ``f(0, x)``, no extra network; use ``skip_loss()``."""

    def __init__(self, f: Callable[[Tensor, Any], Tensor], **kwargs: Any):
        super().__init__(f, init=_FOfZero(), **kwargs)
