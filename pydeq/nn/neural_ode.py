"""Neural ODE layers: integrate du/dt = f(u, x) over a fixed horizon (Chen et al. 2018)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_tensor
from .._ode.adjoint import AbstractODEAdjoint, DirectAdjoint
from .._ode.integrate import check_field_output
from .._ode.odeint import check_ode_solver, check_odeint_args, odeint
from .._ode.solvers import AbstractODESolver, Tsit5
from .._solution import Solution

__all__ = ["NeuralODE", "DEQVectorField"]


class DEQVectorField(nn.Module):
    """The vector field ``F(u, x) = f(u, x) − u`` of a DEQ's ``f``.

    ``NeuralODE(DEQVectorField(f))`` integrates the same flow as the continuous DEQ
    ``DEQ(f, solver=SteadyState(...))`` but over a finite horizon, the neural-ODE baseline of
    DeepEquilibriumNetworks.jl (``problem_type = ODEProblem``) and of Pal et al. 2022. ``f`` is shared,
    not copied: the same parameters serve both models.
    """

    def __init__(self, f: Callable[[Tensor, Any], Tensor]):
        super().__init__()
        if not callable(f):
            raise TypeError(f"f must be an nn.Module or callable f(u, x); got {type(f).__name__}.")
        self.f = f

    def forward(self, u: Tensor, x: Any) -> Tensor:
        return self.f(u, x) - u


class NeuralODE(nn.Module):
    r"""Neural ODE with the input injected as a condition: :math:`\dot u = f(u, x)`, output ``u(t1)`` or the
    trajectory at output times.

    Args:
        f: ``nn.Module`` or callable ``f(u, x)`` mapping ``(batch, *state)`` (and the input) to
            ``(batch, *state)``. Wrap a DEQ's f in :class:`DEQVectorField` to integrate ``f(u, x) − u``.
        t_span: ``(t0, t1)``, default ``(0, 1)``; or a tensor of output times (as :func:`pydeq.odeint`; kept as a
            buffer, so ``.to(device)`` and ``.double()`` move it), and ``forward`` returns
            ``(batch, n_times, *state)``.
        solver: ODE method; default ``Tsit5(rtol=1e-3, atol=1e-6)``. Root finders are rejected.
        adjoint: ``DirectAdjoint()`` (default), ``CheckpointAdjoint()``, ``BacksolveAdjoint()`` or
            ``InterpolatingAdjoint()``; ``VCAB3`` takes ``DirectAdjoint()`` or ``InterpolatingAdjoint()`` (Pal et
            al.'s neural-ODE baseline). The checkpoint and continuous adjoints differentiate ``f``'s parameters
            (``f`` an ``nn.Module``, or ``params``) and ``x``.
        state_shape: per-sample state shape; when given, ``u0 = 0`` of that shape, else ``u0 = x``.
        params: extra tensors the checkpoint and continuous adjoints must reach when ``f`` is a closure.
        max_steps: attempted steps per sample.
        on_failure: ``"warn"``, ``"raise"`` or ``"return"`` when a sample does not reach ``t1``.

    ``forward(x, z0=None, *, t=None, return_solution=False)`` returns ``u(t1)`` ``(batch, *state)``, or the
    trajectory at the output times (``t``, per call: ``(n_times,)`` or per sample ``(batch, n_times)``, overrides
    ``t_span``), and the :class:`~pydeq.Solution` when asked; ``self.last_solution`` keeps the latest one.
    """

    def __init__(
        self,
        f: Callable[[Tensor, Any], Tensor],
        *,
        t_span: Sequence[float] | Tensor = (0.0, 1.0),
        solver: AbstractODESolver | None = None,
        adjoint: AbstractODEAdjoint | None = None,
        state_shape: Sequence[int] | None = None,
        params: Sequence[Tensor] = (),
        max_steps: int = 10_000,
        on_failure: str = "warn",
    ):
        super().__init__()
        if not callable(f):
            raise TypeError(f"f must be an nn.Module or callable f(u, x); got {type(f).__name__}.")
        self.solver = Tsit5() if solver is None else solver
        self.adjoint = DirectAdjoint() if adjoint is None else adjoint
        check_ode_solver(self.solver, where="NeuralODE's solver")
        # validate t_span, adjoint, max_steps and on_failure now rather than at the first forward
        check_odeint_args(f, _probe(t_span), t_span, self.solver, self.adjoint, max_steps, on_failure)
        self.f = f
        if isinstance(t_span, Tensor):
            self.t_span: Any = None
            self.register_buffer("t_eval", t_span.detach().clone())
        else:
            self.t_span, self.t_eval = (float(t_span[0]), float(t_span[1])), None
        self.state_shape = None if state_shape is None else tuple(int(s) for s in state_shape)
        self.extra_params = tuple(params)
        self.max_steps, self.on_failure = max_steps, on_failure
        self.last_solution: Solution | None = None

    def initial_state(self, x: Tensor, z0: Tensor | None = None) -> Tensor:
        """``z0`` if given, else zeros of ``state_shape``, else ``x`` itself."""
        if z0 is not None:
            return z0
        if self.state_shape is not None:
            return x.new_zeros((x.shape[0], *self.state_shape))
        return x

    def forward(self, x: Tensor, z0: Tensor | None = None, *, t: Tensor | None = None,
                return_solution: bool = False) -> Any:
        check_tensor("x", x)
        if x.dim() < 1:
            raise ValueError(f"x must be batched, shape (batch, ...); got shape {tuple(x.shape)}.")
        u0 = self.initial_state(x, z0)
        if u0.shape[0] != x.shape[0]:
            raise ValueError(f"z0 and x must have the same batch size; got {tuple(u0.shape)} and {tuple(x.shape)}.")
        f = self.f

        def field(t: Tensor, u: Tensor) -> Tensor:
            return f(u, x)

        with torch.no_grad():  # one probe call, so a shape mistake reads as one and names the fix
            check_field_output(field(None, u0), u0, name="f(u, x)",
                               hint="Pass state_shape (or z0) matching f's output.")
        params = [*self._module_params(), *self.extra_params, x]
        times = t if t is not None else self.t_span if self.t_eval is None else self.t_eval
        solution = odeint(field, u0, times, solver=self.solver, adjoint=self.adjoint,
                          max_steps=self.max_steps, params=params, on_failure=self.on_failure)
        solution.nfe += 1  # the shape check above is a real call of f
        self.last_solution = solution
        return (solution.z, solution) if return_solution else solution.z

    def _module_params(self) -> list[Tensor]:
        return list(self.f.parameters()) if isinstance(self.f, nn.Module) else []


def _probe(t_span: Any) -> Tensor:
    """A stand-in state to validate ``t_span`` against at construction (its dtype, device and batch)."""
    if isinstance(t_span, Tensor) and t_span.is_floating_point():
        return torch.zeros(t_span.shape[0] if t_span.dim() == 2 else 1, 1, dtype=t_span.dtype, device=t_span.device)
    return torch.zeros(1, 1)
