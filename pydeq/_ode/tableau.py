"""Butcher tableaux of the explicit Runge–Kutta methods pydeq integrates with.

A tableau ``(c, A, b, b_err)`` defines one step of size ``h`` from ``(t, u)``::

    k_i   = F(t + c_i h, u + h * sum_j A_ij k_j),     i = 1..s
    u_new = u + h * sum_i b_i k_i                     (order ``order``)
    err   = h * sum_i b_err_i k_i                     (b_err = b - b_hat, b_hat of order ``error_order``)

``fsal`` ("first same as last"): the last row of A equals b, so the last stage is F(t + h, u_new) and is
the first stage of the next step.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ButcherTableau", "EULER", "RK4", "BS3", "DOPRI5", "TSIT5"]


@dataclass(frozen=True, kw_only=True)
class ButcherTableau:
    """Coefficients of an explicit RK method; ``a[i]`` holds row ``i + 1`` of the strictly lower A."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...] | None
    order: int
    error_order: int | None
    fsal: bool

    @property
    def stages(self) -> int:
        return len(self.b)


EULER = ButcherTableau(c=(0.0,), a=(), b=(1.0,), b_err=None, order=1, error_order=None, fsal=False)

RK4 = ButcherTableau(
    c=(0.0, 0.5, 0.5, 1.0),
    a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    b_err=None, order=4, error_order=None, fsal=False,
)

# Bogacki & Shampine (1989): order 3 with an embedded order-2 estimate.
_BS3_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
_BS3_BHAT = (7 / 24, 1 / 4, 1 / 3, 1 / 8)
BS3 = ButcherTableau(
    c=(0.0, 0.5, 0.75, 1.0),
    a=((0.5,), (0.0, 0.75), _BS3_B[:3]),
    b=_BS3_B,
    b_err=tuple(p - q for p, q in zip(_BS3_B, _BS3_BHAT, strict=True)),
    order=3, error_order=2, fsal=True,
)

# Dormand & Prince (1980): order 5 with an embedded order-4 estimate.
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_BHAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
DOPRI5 = ButcherTableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _DP_B[:6],
    ),
    b=_DP_B,
    b_err=tuple(p - q for p, q in zip(_DP_B, _DP_BHAT, strict=True)),
    order=5, error_order=4, fsal=True,
)

# Tsitouras (2011), "Runge–Kutta pairs of order 5(4) satisfying only the first column simplifying
# assumption", Comput. Math. Appl. 62: order 5, embedded order 4, FSAL. b_err is given directly.
_TS_B = (
    0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
    -3.290069515436081, 2.324710524099774, 0.0,
)
TSIT5 = ButcherTableau(
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=(
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.897153057105493, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383),
        _TS_B[:6],
    ),
    b=_TS_B,
    b_err=(
        -0.00178001105222577714, -0.0008164344596567469, 0.007880878010261995, -0.1447110071732629,
        0.5823571654525552, -0.45808210592918697, 0.015151515151515152,
    ),
    order=5, error_order=4, fsal=True,
)
