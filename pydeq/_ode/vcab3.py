"""VCAB3: the adaptive, variable-coefficient Adams–Bashforth method of order 3 (one f call per step)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .solvers import AbstractAdaptiveRK
from .step import per_sample
from .tableau import ButcherTableau

__all__ = ["VCAB3", "AdamsHistory", "AdamsStep", "ab_weights", "ab_proposal", "ab_interpolate"]


@dataclass(frozen=True, kw_only=True)
class VCAB3(AbstractAdaptiveRK):
    r"""Variable-coefficient Adams–Bashforth of order 3 with an embedded order-2 error estimate.

    A step of size ``h`` from ``t_n`` integrates the quadratic through the last three derivatives
    ``F_n, F_{n-1}, F_{n-2}`` (at ``t_n, t_n - h_1, t_n - h_1 - h_2``, each sample with its own ``h_1, h_2``):

    .. math:: u_{n+1} = u_n + \sum_j \beta_j F_{n-j}, \qquad \beta_j = \int_{t_n}^{t_n + h} L_j(t)\,dt

    with ``L_j`` the Lagrange basis on those three times, so the weights change with the step sizes and reduce
    to ``h (23, -16, 5) / 12`` for equal steps. The local error is estimated as the difference between this
    and the two-step (order-2) formula, ``error_order = 2``, and the step is controlled like the Runge–Kutta
    methods' (``rtol``, ``atol``, ``controller``). The first step is Euler with the automatic first step size
    and no estimate, the second uses two derivatives; a rejected step keeps the history. Only ``F(t_{n+1},
    u_{n+1})`` is evaluated per step, so a step costs one f call: the method of Pal et al.'s CIFAR-10
    continuous DEQs (DifferentialEquations.jl's ``VCAB3``). Its real stability interval is short (about
    ``[-0.55, 0]`` for equal steps), so steady-state solves are stability-limited; :class:`SteadyState`
    rejects steps that grow the residual. In :func:`pydeq.odeint` / ``NeuralODE`` it runs its own loop
    (:mod:`~pydeq._ode.adams`), cuts steps to land on every output time (so the outputs are its own solution) and
    is differentiated by ``DirectAdjoint`` or ``InterpolatingAdjoint``; measured global order 3.1 against the mean
    step on a linear system, tolerances 1e-4 to 1e-7. Its dense output :func:`ab_interpolate` integrates the
    step's own polynomial to ``t_n + θh`` (order 3, no extra call of ``F``), what ``InterpolatingAdjoint`` reads.

    Args:
        rtol, atol, dt0, controller: as for :class:`Tsit5`. ``dt`` must stay ``None`` (VCAB3 is adaptive).
    """

    tableau: ClassVar[ButcherTableau | None] = None
    error_order: ClassVar[int] = 2
    order: ClassVar[int] = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dt is not None:
            raise ValueError(
                f"VCAB3 is adaptive and has no fixed-step mode; got dt={self.dt!r}. For fixed steps use "
                "Euler(dt=...) or RK4(dt=...)."
            )


def ab_weights(h: Tensor, h1: Tensor, h2: Tensor, known: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample Adams–Bashforth weights ``(beta_0, beta_1, beta_2)`` and the error weights' scale.

    Args:
        h: ``(batch,)`` the step to take.
        h1, h2: ``(batch,)`` the last two accepted steps, ``t_n - t_{n-1}`` and ``t_{n-1} - t_{n-2}``.
        known: ``(batch,)`` int, how many past derivatives each sample has besides ``F_n`` (0, 1 or 2).

    Returns:
        ``(b0, b1, b2, e)`` with ``u_new = u + b0 F_n + b1 F_{n-1} + b2 F_{n-2}`` (order ``1 + known``) and the
        error estimate ``(b0 - a0) F_n + (b1 - a1) F_{n-1} + b2 F_{n-2}`` against the one-order-lower formula
        ``a``; ``e`` is ``(b0 - a0, b1 - a1, b2)`` stacked as ``(batch, 3)``.
    """
    one, zero = torch.ones_like(h), torch.zeros_like(h)
    h1 = torch.where(known >= 1, h1, one)  # placeholders keep unused divisions finite
    h2 = torch.where(known >= 2, h2, one)
    cube, square = h ** 3 / 3, h ** 2 / 2
    s = h1 + h2
    ab3 = ((cube + (2 * h1 + h2) * square + h1 * s * h) / (h1 * s), -(cube + s * square) / (h1 * h2),
           (cube + h1 * square) / (s * h2))
    ab2 = (h + square / h1, -square / h1)
    b0 = torch.where(known >= 2, ab3[0], torch.where(known == 1, ab2[0], h))
    b1 = torch.where(known >= 2, ab3[1], torch.where(known == 1, ab2[1], zero))
    b2 = torch.where(known >= 2, ab3[2], zero)
    # one order lower: AB2 under AB3, Euler under AB2, nothing under Euler (first step: no estimate)
    a0 = torch.where(known >= 2, ab2[0], h)
    a1 = torch.where(known >= 2, ab2[1], zero)
    e = torch.stack([b0 - a0, b1 - a1, b2], dim=1) * (known >= 1).to(h.dtype)[:, None]
    return b0, b1, b2, e


@dataclass
class AdamsHistory:
    """VCAB3's past derivatives ``F_{n-1}, F_{n-2}`` and steps ``h_1, h_2``; ``known`` counts them per sample."""

    f1: Tensor
    f2: Tensor
    h1: Tensor
    h2: Tensor
    known: Tensor

    @classmethod
    def empty(cls, u: Tensor) -> AdamsHistory:
        """No past derivatives yet, for a batch shaped like ``u: (batch, *state)``."""
        zero, one = torch.zeros_like(u), u.new_ones(u.shape[0])
        return cls(f1=zero, f2=zero, h1=one, h2=one,
                   known=torch.zeros(u.shape[0], dtype=torch.int64, device=u.device))

    def shift(self, accept: Tensor, f0: Tensor, h: Tensor) -> AdamsHistory:
        """After a step of ``h`` from a point with derivative ``f0``: accepted samples push both onto the history."""
        mask = per_sample(accept, f0)
        return AdamsHistory(f1=torch.where(mask, f0, self.f1), f2=torch.where(mask, self.f1, self.f2),
                            h1=torch.where(accept, h, self.h1), h2=torch.where(accept, self.h1, self.h2),
                            known=torch.where(accept, (self.known + 1).clamp_max(2), self.known))


@dataclass
class AdamsStep:
    """One VCAB3 step's result, what observers of its loop read (the Runge–Kutta loop's ``RKStep``).

    ``u_new`` and the error estimate ``err`` (``(batch, *state)``); ``weights: (batch, 3)`` the step's
    ``(beta_0, beta_1, beta_2)`` (the parameter quadrature of the continuous adjoints reuses them); ``stages``
    ``F_n`` as a one-stage stage-major ``(1, batch, *state)`` tensor, the one derivative this step adds to the
    history (``F_{n-1}, F_{n-2}`` are the earlier steps' stages, so a tape of accepted steps holds them already).
    """

    u_new: Tensor
    err: Tensor
    weights: Tensor
    stages: Tensor


def _combine(u: Tensor, f0: Tensor, past: AdamsHistory, c0: Tensor, c1: Tensor, c2: Tensor) -> Tensor:
    """``c0 F_n + c1 F_{n-1} + c2 F_{n-2}`` with per-sample ``c: (batch,)``."""
    return per_sample(c0, u) * f0 + per_sample(c1, u) * past.f1 + per_sample(c2, u) * past.f2


def ab_proposal(u: Tensor, f0: Tensor, past: AdamsHistory, h: Tensor) -> AdamsStep:
    """VCAB3's step ``u + sum_j beta_j F_{n-j}`` from ``u`` with derivative ``f0`` and its error estimate."""
    b0, b1, b2, e = ab_weights(h, past.h1, past.h2, past.known)
    return AdamsStep(u_new=u + _combine(u, f0, past, b0, b1, b2),
                     err=_combine(u, f0, past, e[:, 0], e[:, 1], e[:, 2]),
                     weights=torch.stack([b0, b1, b2], dim=1), stages=f0[None])


def ab_interpolate(u: Tensor, f0: Tensor, past: AdamsHistory, h: Tensor, theta: Tensor) -> Tensor:
    r"""VCAB3's dense output on the step of ``h: (batch,)`` from ``u`` (derivative ``f0``, history ``past``).

    .. math:: u(t_n + \theta h) = u_n + \int_0^{\theta h} p(\tau)\,d\tau = u_n + \sum_j \beta_j(\theta h) F_{n-j}

    with ``p`` the polynomial through ``F_n, F_{n-1}, F_{n-2}`` the step integrated (the lower-order one in the
    first two steps, per ``past.known``) and ``beta_j(x)`` its Lagrange weights :func:`ab_weights` integrated to
    ``x`` instead of ``h``: no extra evaluation of ``F``, the same arithmetic as :func:`ab_proposal` at
    ``θ = 1`` (so ``u_{n+1}`` to the last bit) and ``u_n`` at ``θ = 0``. Order 3: ``p`` is within ``O(h^3)`` of
    ``F`` on the step, so the local error is ``O(h^4)`` (measured at mid-steps, halving a fixed step from 0.04:
    log2 ratios 3.93, 3.99; the Euler and AB2 start-up steps 2.0 and 3.0, their own orders).
    """
    b0, b1, b2, _ = ab_weights(theta * h, past.h1, past.h2, past.known)
    return u + _combine(u, f0, past, b0, b1, b2)
