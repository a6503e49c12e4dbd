"""The DETEST non-stiff problem set (Hull, Enright, Fellen & Sedgwick, "Comparing numerical methods for ordinary
differential equations", SIAM J. Numer. Anal. 9, 1972), classes A–E, on ``[0, 20]``.

Each field is written once in torch and works on a single state ``(n,)`` with a scalar time (torchdiffeq, scipy)
and on a batch ``(batch, n)`` with per-sample times ``(batch,)`` (pydeq): entries are ``y[..., i]`` and times are
broadcast against them. Left out: C5 (the five outer planets, 30 equations, whose data fill a page) and D2/D4
(the orbit class is kept at eccentricities 0.1, 0.5 and 0.9, its easiest, middle and hardest).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Problem", "PROBLEMS", "CLASSES"]

Field = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Problem:
    """One DETEST problem: ``y' = field(t, y)``, ``y(0) = y0``, integrated to ``t1``."""

    name: str
    klass: str
    description: str
    y0: tuple[float, ...]
    field: Field
    t1: float = 20.0


def _stack(*parts: Tensor) -> Tensor:
    return torch.stack(torch.broadcast_tensors(*parts), dim=-1)


def _t(t: Tensor, entry: Tensor) -> Tensor:
    """The time shaped like one entry ``y[..., i]``: ``(batch,)``, or a scalar for a single state."""
    return t if t.dim() == 0 else t.reshape(entry.shape)


def _chain(y: Tensor) -> Tensor:  # C1: y1' = -y1, y_i' = y_{i-1} - y_i, y10' = y9
    return torch.cat([-y[..., :1], y[..., :-2] - y[..., 1:-1], y[..., -2:-1]], dim=-1)


def _weighted_chain(y: Tensor) -> Tensor:  # C2: y_i' = (i - 1) y_{i-1} - i y_i, y10' = 9 y9
    k = torch.arange(1, y.shape[-1] - 1, dtype=y.dtype, device=y.device)
    return torch.cat([-y[..., :1], k * y[..., :-2] - (k + 1) * y[..., 1:-1], (k[-1] + 1) * y[..., -2:-1]], dim=-1)


def _heat(y: Tensor) -> Tensor:  # C3/C4: y_i' = y_{i-1} - 2 y_i + y_{i+1}, zero ends
    pad = torch.nn.functional.pad(y, (1, 1))
    return pad[..., :-2] - 2 * y + pad[..., 2:]


def _radius_spiral(y: Tensor) -> Tensor:  # B4
    r = (y[..., 0] ** 2 + y[..., 1] ** 2).sqrt()
    return _stack(-y[..., 1] - y[..., 0] * y[..., 2] / r, y[..., 0] - y[..., 1] * y[..., 2] / r, y[..., 0] / r)


def _bessel(t: Tensor, y: Tensor) -> Tensor:  # E1
    s = _t(t, y[..., 0]) + 1
    return _stack(y[..., 1], -y[..., 1] / s - (1 - 0.25 / s**2) * y[..., 0])


def _orbit(eps: float) -> Problem:
    def field(t: Tensor, y: Tensor) -> Tensor:
        r3 = (y[..., 0] ** 2 + y[..., 1] ** 2) ** 1.5
        return _stack(y[..., 2], y[..., 3], -y[..., 0] / r3, -y[..., 1] / r3)

    name = {0.1: "D1", 0.3: "D2", 0.5: "D3", 0.7: "D4", 0.9: "D5"}[eps]
    return Problem(name, "D", f"Kepler orbit, eccentricity {eps}",
                   (1 - eps, 0.0, 0.0, math.sqrt((1 + eps) / (1 - eps))), field)


def _unit(n: int) -> tuple[float, ...]:
    return (1.0,) + (0.0,) * (n - 1)


PROBLEMS: tuple[Problem, ...] = (
    Problem("A1", "A", "exponential decay", (1.0,), lambda t, y: -y),
    Problem("A2", "A", "y' = -y^3 / 2", (1.0,), lambda t, y: -(y**3) / 2),
    Problem("A3", "A", "y' = y cos t", (1.0,), lambda t, y: y * torch.cos(_t(t, y[..., 0]))[..., None]),
    Problem("A4", "A", "logistic", (1.0,), lambda t, y: y / 4 * (1 - y / 20)),
    Problem("A5", "A", "spiral, y' = (y - t) / (y + t)", (4.0,),
            lambda t, y: (y - _t(t, y[..., 0])[..., None]) / (y + _t(t, y[..., 0])[..., None])),
    Problem("B1", "B", "Lotka–Volterra", (1.0, 3.0),
            lambda t, y: _stack(2 * (y[..., 0] - y[..., 0] * y[..., 1]), -(y[..., 1] - y[..., 0] * y[..., 1]))),
    Problem("B2", "B", "linear chemical reaction", (2.0, 0.0, 1.0),
            lambda t, y: _stack(-y[..., 0] + y[..., 1], y[..., 0] - 2 * y[..., 1] + y[..., 2], y[..., 1] - y[..., 2])),
    Problem("B3", "B", "nonlinear chemical reaction", (1.0, 0.0, 0.0),
            lambda t, y: _stack(-y[..., 0], y[..., 0] - y[..., 1] ** 2, y[..., 1] ** 2)),
    Problem("B4", "B", "spiral with a radius equation", (3.0, 0.0, 0.0), lambda t, y: _radius_spiral(y)),
    Problem("B5", "B", "Euler's rigid body", (0.0, 1.0, 1.0),
            lambda t, y: _stack(y[..., 1] * y[..., 2], -y[..., 0] * y[..., 2], -0.51 * y[..., 0] * y[..., 1])),
    Problem("C1", "C", "radioactive chain, 10 equations", _unit(10), lambda t, y: _chain(y)),
    Problem("C2", "C", "chain with rising rates, 10 equations", _unit(10), lambda t, y: _weighted_chain(y)),
    Problem("C3", "C", "heat equation, 10 points", _unit(10), lambda t, y: _heat(y)),
    Problem("C4", "C", "heat equation, 51 points", _unit(51), lambda t, y: _heat(y)),
    _orbit(0.1),
    _orbit(0.5),
    _orbit(0.9),
    Problem("E1", "E", "Bessel-type, y'' + y'/(t+1) + (1 - 1/(4(t+1)^2)) y = 0",
            (0.6713967071418030, 0.09540051444747446), _bessel),
    Problem("E2", "E", "van der Pol, mu = 1", (2.0, 0.0),
            lambda t, y: _stack(y[..., 1], (1 - y[..., 0] ** 2) * y[..., 1] - y[..., 0])),
    Problem("E3", "E", "forced Duffing-type", (0.0, 0.0),
            lambda t, y: _stack(y[..., 1], y[..., 0] ** 3 / 6 - y[..., 0] + 2 * torch.sin(2.78535 * _t(t, y[..., 0])))),
    Problem("E4", "E", "falling body with drag", (30.0, 0.0),
            lambda t, y: _stack(y[..., 1], 0.032 - 0.4 * y[..., 1] ** 2)),
    Problem("E5", "E", "pursuit curve", (0.0, 0.0),
            lambda t, y: _stack(y[..., 1], (1 + y[..., 1] ** 2).sqrt() / (25 - _t(t, y[..., 0])))),
)

CLASSES = {"A": "single equations", "B": "small systems", "C": "moderate systems", "D": "orbit equations",
           "E": "higher-order equations"}
