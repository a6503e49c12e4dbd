"""Dense output: the solution between accepted steps from the step's own stages, and the output-time recorder.

``u(s + θh) ≈ u + h * sum_i b_i(θ) k_i`` with the tableau's continuous extension (see
:mod:`~pydeq._ode.tableau`): Tsit5 and Dopri5 order 4, BS3 and RK4 order 3, the second-order methods order 2,
Euler order 1. No extra evaluation of the field; the interpolant is differentiable in the stages, so
back-propagation through the solver reaches every output. The multistep VCAB3 has no tableau: its extension, the
step's own polynomial integrated to ``θ``, is :func:`~pydeq._ode.vcab3.ab_interpolate`.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .integrate import StepRecord
from .step import per_sample
from .tableau import ButcherTableau

__all__ = ["interpolate", "OutputRecorder"]


@functools.lru_cache(maxsize=64)
def _dense(tab: ButcherTableau, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.tensor(tab.dense, dtype=dtype, device=device)  # (stages, degree)


def interpolate(tab: ButcherTableau, u: Tensor, h: Tensor, stages: Tensor | list[Tensor], theta: Tensor) -> Tensor:
    """``u + h * sum_i b_i(θ) k_i`` per sample, for ``θ, h: (batch,)`` and the stages of one step from ``u``."""
    D = _dense(tab, u.dtype, u.device)
    powers = theta[:, None] ** torch.arange(1, D.shape[1] + 1, device=u.device, dtype=u.dtype)
    w = (powers @ D.T) * h[:, None]  # (batch, stages)
    if isinstance(stages, Tensor):  # stage-major buffer (no autograd): one batched product
        flat = stages.reshape(stages.shape[0], stages.shape[1], -1)
        return u + torch.einsum("bs,sbn->bn", w, flat).reshape(u.shape)
    incr = sum(per_sample(w[:, i], u) * k for i, k in enumerate(stages) if any(tab.dense[i]))
    return u + incr


class OutputRecorder:
    """Fills ``ys[:, j] = u(s_j)`` as each sample's steps pass its output times ``s: (batch, n)``.

    An output inside a step comes from :func:`interpolate`; one at the step's end is the step's end state
    itself. Recording starts after each sample's clock ``start: (batch,)`` (outputs at or before it are left
    to the caller: the forward solve writes ``u0`` at ``s0``). Writes are in place, each sample at its own
    index; autograd records them.
    """

    def __init__(self, tab: ButcherTableau, s: Tensor, like: Tensor, start: Tensor):
        self.tab, self.s = tab, s
        self.ys = like.new_zeros((like.shape[0], s.shape[1], *like.shape[1:]))
        self.rows = torch.arange(like.shape[0], device=like.device)
        self._advance(torch.searchsorted(s, start[:, None].contiguous(), right=True).squeeze(1))

    def _advance(self, nxt: Tensor) -> None:
        """Next output index per sample, and its time (``inf`` once every output is written)."""
        self.next = nxt
        pending = self.s.gather(1, nxt.clamp_max(self.s.shape[1] - 1)[:, None]).squeeze(1)
        self.due_at = torch.where(nxt < self.s.shape[1], pending, torch.full_like(pending, torch.inf))

    def __call__(self, rec: StepRecord) -> None:
        if not bool((rec.accept & (rec.s_next >= self.due_at)).any()):  # most steps pass no output time
            return
        upto = torch.searchsorted(self.s, rec.s_next[:, None].contiguous(), right=True).squeeze(1)
        upto = torch.where(rec.accept, torch.maximum(upto, self.next), self.next)
        count = int((upto - self.next).max())
        last = self.s.shape[1] - 1
        for i in range(count):
            j = self.next + i
            write, col = j < upto, j.clamp_max(last)
            s_j = self.s.gather(1, col[:, None]).squeeze(1)
            h = torch.where(rec.h > 0, rec.h, torch.ones_like(rec.h))
            theta = ((s_j - rec.s) / h).clamp(0.0, 1.0)
            value = interpolate(self.tab, rec.u, rec.h, rec.step.stages, theta)
            at_end = per_sample(write & (s_j >= rec.s_next), value)
            value = torch.where(at_end, rec.u_next, value)
            old = self.ys[self.rows, col]
            self.ys[self.rows, col] = torch.where(per_sample(write, value), value, old)
        self._advance(upto)
