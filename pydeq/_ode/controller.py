"""PI step-size controller for the adaptive Runge–Kutta methods."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_positive

__all__ = ["PIController"]


@dataclass(frozen=True, kw_only=True)
class PIController:
    r"""Proportional–integral step-size control, per sample.

    With ``r_n`` the error ratio of the step just tried (RMS of ``err / (atol + rtol * max(|u|, |u_new|))``,
    accept when ``r_n <= 1``), ``r_{n-1}`` the ratio of the last accepted step and ``k = error_order + 1``:

    .. math:: h_{new} = h \cdot \mathrm{clip}\big(\mathrm{safety} \cdot r_n^{-(p + i)/k} \, r_{n-1}^{p/k},
              \ \mathrm{factor\_min},\ \mathrm{factor\_max}\big)

    and the factor is capped at 1 after a rejection. ``pcoeff = 0, icoeff = 1`` is the classical
    integral (I) controller. The defaults ``p = 0.2, i = 0.65`` reproduce Hairer's PI choice for
    DOPRI5 (exponents 0.17 and 0.04; Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4; Söderlind 2002).

    Args:
        pcoeff: proportional coefficient ``p`` (>= 0).
        icoeff: integral coefficient ``i`` (> 0).
        safety: factor in (0, 1] applied to the optimal step.
        factor_min: smallest step change, in (0, 1).
        factor_max: largest step change, > 1.
    """

    pcoeff: float = 0.2
    icoeff: float = 0.65
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0

    def __post_init__(self) -> None:
        check_positive("PIController.pcoeff", self.pcoeff, allow_zero=True)
        check_positive("PIController.icoeff", self.icoeff)
        check_positive("PIController.safety", self.safety)
        if self.safety > 1:
            raise ValueError(f"PIController.safety must be in (0, 1]; got {self.safety!r}. 0.9 is typical.")
        if not (isinstance(self.factor_min, (int, float)) and 0 < self.factor_min < 1):
            raise ValueError(f"PIController.factor_min must be in (0, 1); got {self.factor_min!r}. 0.2 is typical.")
        if not (isinstance(self.factor_max, (int, float)) and self.factor_max > 1):
            raise ValueError(f"PIController.factor_max must be > 1; got {self.factor_max!r}. 10 is typical.")

    def factor(self, ratio: Tensor, prev_ratio: Tensor, error_order: int, accept: Tensor) -> Tensor:
        """``(batch,)`` multiplier of the step size; ``ratio``/``prev_ratio``/``accept`` are ``(batch,)``."""
        k = error_order + 1
        # clamp: a zero error (e.g. a constant field) would give inf ** negative power
        r = ratio.clamp_min(1e-10)
        fac = self.safety * r.pow(-(self.pcoeff + self.icoeff) / k) * prev_ratio.clamp_min(1e-10).pow(self.pcoeff / k)
        fac = fac.clamp(self.factor_min, self.factor_max)
        fac = torch.where(accept, fac, fac.clamp_max(1.0))
        # a NaN/Inf error estimate means the step blew up: shrink as much as allowed
        return torch.where(torch.isfinite(ratio), fac, torch.full_like(fac, self.factor_min))
