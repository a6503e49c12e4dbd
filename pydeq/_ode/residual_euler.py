"""Explicit Euler on the relaxation flow with the step size grown or cut by the residual's change."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .._checks import check_positive

__all__ = ["ResidualEuler", "check_euler_steps"]


@dataclass(frozen=True, kw_only=True)
class ResidualEuler:
    r"""Explicit Euler steps on :math:`\dot u = f(u, x) - u` whose size follows the residual, not a local error.

    One f call per step. From ``u`` with residual ``r = f(u) - u`` and step ``h`` (per sample):

    .. math:: u' = u + h\,(f(u) - u) = (1 - h)\,u + h\,f(u)

    is accepted when ``norm(f(u') - u') <= norm(f(u) - u)`` (the residual does not grow); then
    ``h <- min(grow * h, dt_max)``. Otherwise the sample stays at ``u`` and ``h <- shrink * h``. With
    ``h = 1`` a step is exactly one fixed-point iteration, and for ``h < 1`` a damped one, so on a contractive
    map this converges like fixed-point iteration (which, for a Jacobian spectrum in a disk around 0, no
    polynomial method with the same number of f calls beats); on a map whose iteration diverges but whose flow
    converges (eigenvalues of the Jacobian with real part < 1 outside the unit disk), the rejections shrink
    ``h`` until the step is stable for the flow, as a continuous DEQ promises.

    Only the limit matters for a DEQ, so accuracy along the trajectory is not controlled: use an adaptive
    Runge–Kutta method (``Tsit5``) inside :class:`SteadyState` if the trajectory itself is wanted.

    Measured against :class:`SecantEuler` (:class:`SteadyState`'s default, which differs only in the step-size
    rule) on the README's grid: equal where iteration is fast, slower where it is slow (the ``||W|| = 1.5``
    width-16 map: 23 calls instead of 15 at 5e-3) or diverges (``W = 2 S`` skew: 70 instead of 40). With
    ``grow = 1`` and the default ``dt0`` it is exactly plain fixed-point iteration, with the residual guard.

    Args:
        dt0: first step size (> 0); 1 is a plain fixed-point step.
        dt_max: largest step (> 0); above 1 the step over-relaxes, which no longer contracts a disk spectrum.
        grow: factor (>= 1) applied to the step after an accepted step.
        shrink: factor in (0, 1) applied after a rejected step.
    """

    dt0: float = 1.0
    dt_max: float = 1.0
    grow: float = 1.1
    shrink: float = 0.5

    def __post_init__(self) -> None:
        check_euler_steps(self)
        if not (isinstance(self.grow, (int, float)) and not isinstance(self.grow, bool) and self.grow >= 1):
            raise ValueError(f"ResidualEuler.grow must be a number >= 1; got {self.grow!r}. 1.1 is the default.")


def check_euler_steps(method: object) -> None:
    """The step fields every residual-sized Euler method has: ``dt0``, ``dt_max`` (finite, > 0, ``dt0 <= dt_max``)
    and ``shrink`` in (0, 1); errors are named after the method's class."""
    name = type(method).__name__
    check_positive(f"{name}.dt0", method.dt0, hint="It is a pseudo-time step; 1 (a plain fixed-point step) is the "
                   "default.")
    default = next(f.default for f in dataclasses.fields(method) if f.name == "dt_max")
    check_positive(f"{name}.dt_max", method.dt_max, hint=f"{default} is the default.")
    shrink = method.shrink
    if not (isinstance(shrink, (int, float)) and not isinstance(shrink, bool) and 0 < shrink < 1):
        raise ValueError(f"{name}.shrink must be in (0, 1); got {shrink!r}. 0.5 is the default.")
    if method.dt0 > method.dt_max:
        raise ValueError(f"{name}.dt0 must not exceed dt_max; got dt0={method.dt0!r}, dt_max={method.dt_max!r}.")
