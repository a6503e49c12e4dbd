"""Butcher tableaux of the explicit Runge–Kutta methods pydeq integrates with, and their dense output.

A tableau ``(c, A, b, b_err)`` defines one step of size ``h`` from ``(t, u)``::

    k_i   = F(t + c_i h, u + h * sum_j A_ij k_j),     i = 1..s
    u_new = u + h * sum_i b_i k_i                     (order ``order``)
    err   = h * sum_i b_err_i k_i                     (b_err = b - b_hat, b_hat of order ``error_order``)

``fsal`` ("first same as last"): the last row of A equals b, so the last stage is F(t + h, u_new) and is
the first stage of the next step.

Dense output (a continuous extension) reuses the stages of an accepted step, no extra evaluation::

    u(t + θh) ≈ u + h * sum_i b_i(θ) k_i,   b_i(θ) = sum_j dense[i][j] θ^(j+1),   0 <= θ <= 1

with local error O(h^(dense_order + 1)) and ``b_i(1) = b_i``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ButcherTableau", "EULER", "MIDPOINT", "HEUN2", "HEUN3", "RK4", "RK38", "HEUN_EULER", "FEHLBERG2",
           "BS3", "DOPRI5", "TSIT5"]

Rows = tuple[tuple[float, ...], ...]


@dataclass(frozen=True, kw_only=True)
class ButcherTableau:
    """Coefficients of an explicit RK method; ``a[i]`` holds row ``i + 1`` of the strictly lower A;
    ``dense[i]`` the coefficients of ``θ, θ², …`` in the dense-output weight ``b_i(θ)``."""

    c: tuple[float, ...]
    a: Rows
    b: tuple[float, ...]
    b_err: tuple[float, ...] | None
    order: int
    error_order: int | None
    fsal: bool
    dense: Rows
    dense_order: int

    @property
    def stages(self) -> int:
        return len(self.b)


def _mul(p: tuple[float, ...], q: tuple[float, ...]) -> tuple[float, ...]:
    """Product of two polynomials given by coefficients of ``1, θ, θ², …``."""
    out = [0.0] * (len(p) + len(q) - 1)
    for i, pi in enumerate(p):
        for j, qj in enumerate(q):
            out[i + j] += pi * qj
    return tuple(out)


def _weights(scale: float, *factors: tuple[float, ...]) -> tuple[float, ...]:
    """``scale * prod(factors)`` as coefficients of ``θ, θ², …`` (the factors' product has no constant term)."""
    poly: tuple[float, ...] = (scale,)
    for f in factors:
        poly = _mul(poly, f)
    if abs(poly[0]) > 0:
        raise ValueError("a dense-output weight must vanish at θ = 0")
    return poly[1:]


def _pad(rows: Rows) -> Rows:
    width = max(len(r) for r in rows)
    return tuple(tuple(r) + (0.0,) * (width - len(r)) for r in rows)


def _hermite(b: tuple[float, ...]) -> Rows:
    """Cubic Hermite through ``u, F(t, u) = k_1, u_new, F(t + h, u_new) = k_s`` (FSAL tableaux): order 3."""
    s = len(b)
    return tuple((float(i == 0), 3 * bi - 2 * (i == 0) - (i == s - 1), -2 * bi + (i == 0) + (i == s - 1))
                 for i, bi in enumerate(b))


EULER = ButcherTableau(c=(0.0,), a=(), b=(1.0,), b_err=None, order=1, error_order=None, fsal=False,
                       dense=((1.0,),), dense_order=1)

# second-order extensions u + h (b θ + d θ(1 - θ)) with sum d = 0, sum d c = -1/2
MIDPOINT = ButcherTableau(c=(0.0, 0.5), a=((0.5,),), b=(0.0, 1.0), b_err=None, order=2, error_order=None,
                          fsal=False, dense=((1.0, -1.0), (0.0, 1.0)), dense_order=2)
HEUN2 = ButcherTableau(c=(0.0, 1.0), a=((1.0,),), b=(0.5, 0.5), b_err=None, order=2, error_order=None,
                       fsal=False, dense=((1.0, -0.5), (0.0, 0.5)), dense_order=2)
HEUN3 = ButcherTableau(c=(0.0, 1 / 3, 2 / 3), a=((1 / 3,), (0.0, 2 / 3)), b=(0.25, 0.0, 0.75), b_err=None,
                       order=3, error_order=None, fsal=False, dense=((1.0, -0.75), (0.0, 0.0), (0.0, 0.75)),
                       dense_order=2)
# Heun–Euler 2(1), torchdiffeq's adaptive_heun
HEUN_EULER = ButcherTableau(c=(0.0, 1.0), a=((1.0,),), b=(0.5, 0.5), b_err=(0.5, -0.5), order=2, error_order=1,
                            fsal=False, dense=HEUN2.dense, dense_order=2)
# Fehlberg's RKF 1(2) propagating the second-order solution, torchdiffeq's fehlberg2
FEHLBERG2 = ButcherTableau(c=(0.0, 0.5, 1.0), a=((0.5,), (1 / 256, 255 / 256)), b=(1 / 512, 255 / 256, 1 / 512),
                           b_err=(-1 / 512, 0.0, 1 / 512), order=2, error_order=1, fsal=False,
                           dense=((1 / 512 + 0.5, -0.5), (255 / 256, 0.0), (1 / 512 - 0.5, 0.5)),
                           dense_order=2)

# Classical RK4; its third-order dense output (Hairer, Nørsett & Wanner, Solving ODEs I, II.6)
RK4 = ButcherTableau(
    c=(0.0, 0.5, 0.5, 1.0),
    a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
    b_err=None, order=4, error_order=None, fsal=False,
    dense=((1.0, -1.5, 2 / 3), (0.0, 1.0, -2 / 3), (0.0, 1.0, -2 / 3), (0.0, -0.5, 2 / 3)), dense_order=3,
)
# Kutta's 3/8 rule (torchdiffeq's rk4); its third-order dense output is the unique cubic one
RK38 = ButcherTableau(
    c=(0.0, 1 / 3, 2 / 3, 1.0),
    a=((1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    b_err=None, order=4, error_order=None, fsal=False,
    dense=((1.0, -15 / 8, 1.0), (0.0, 15 / 8, -1.5), (0.0, 3 / 8, 0.0), (0.0, -3 / 8, 0.5)), dense_order=3,
)

# Bogacki & Shampine (1989): order 3 with an embedded order-2 estimate; FSAL, so the Hermite cubic is free.
_BS3_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
_BS3_BHAT = (7 / 24, 1 / 4, 1 / 3, 1 / 8)
BS3 = ButcherTableau(
    c=(0.0, 0.5, 0.75, 1.0),
    a=((0.5,), (0.0, 0.75), _BS3_B[:3]),
    b=_BS3_B,
    b_err=tuple(p - q for p, q in zip(_BS3_B, _BS3_BHAT, strict=True)),
    order=3, error_order=2, fsal=True, dense=_hermite(_BS3_B), dense_order=3,
)


def _dopri5_dense(b: tuple[float, ...]) -> Rows:
    """Hairer's fourth-order continuous extension of DOPRI5 (Hairer, Nørsett & Wanner, *Solving ODEs I*, II.6):
    ``u + θ r2 + θ(1-θ) r3 + θ²(1-θ) r4 + θ²(1-θ)² r5`` with ``r2 = h sum b k``, ``r3 = h k1 - r2``,
    ``r4 = r2 - h k7 - r3`` and ``r5 = h sum d k``, expanded in powers of θ."""
    d = (-12715105075 / 11282082432, 0.0, 87487479700 / 32700410799, -10690763975 / 1880347072,
         701980252875 / 199316789632, -1453857185 / 822651844, 69997945 / 29380423)
    e1 = tuple(float(i == 0) for i in range(7))
    e7 = tuple(float(i == 6) for i in range(7))
    return tuple((e1[i], 3 * b[i] - 2 * e1[i] - e7[i] + d[i], -2 * b[i] + e1[i] + e7[i] - 2 * d[i], d[i])
                 for i in range(7))


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
    order=5, error_order=4, fsal=True, dense=_dopri5_dense(_DP_B), dense_order=4,
)


def _root(r: float) -> tuple[float, float]:
    return (-r, 1.0)


# Tsitouras (2011), "Runge–Kutta pairs of order 5(4) satisfying only the first column simplifying
# assumption", Comput. Math. Appl. 62: order 5, embedded order 4, FSAL. b_err is given directly; the
# fourth-order dense weights b_i(θ) are the paper's, in factored form.
_TS_B = (
    0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
    -3.290069515436081, 2.324710524099774, 0.0,
)
_TH, _TH2 = (0.0, 1.0), (0.0, 0.0, 1.0)
_TS_DENSE = _pad((
    _weights(-1.0530884977290216, _TH, _root(1.3299890189751412), (0.7139816917074209, -1.4364028541716351, 1.0)),
    _weights(0.1017, _TH2, (1.2949852507374631, -2.1966568338249754, 1.0)),
    _weights(2.490627285651252793, _TH2, (1.57803468208092486, -2.38535645472061657, 1.0)),
    _weights(-16.54810288924490272, _TH2, _root(1.21712927295533244), _root(0.61620406037800089)),
    _weights(47.37952196281928122, _TH2, _root(1.203071208372362603), _root(0.658047292653547382)),
    _weights(-34.87065786149660974, _TH2, _root(1.2), _root(0.666666666666666667)),
    _weights(2.5, _TH2, _root(1.0), _root(0.6)),
))
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
    order=5, error_order=4, fsal=True, dense=_TS_DENSE, dense_order=4,
)
