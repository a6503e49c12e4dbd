r"""The parameter integral of the continuous adjoints, ``g = ∫ a^T ∂F/∂θ(t, u(t)) dt``, summed over the backward
solve's accepted steps with the backward method's own weights, each sample with its own steps.

The parameters are shared by the batch, so ``g`` is never a per-sample state: each evaluation of the backward
field keeps its graph ``(F, a)``, and the parameter VJP is taken over the whole batch with the cotangent
``w_b a_b`` (``w_b`` the evaluation's quadrature weight for sample ``b``). The error norm of the backward solve
therefore covers ``a`` only (a seminorm; Kidger, Chen & Lyons, "Hey, that's not an ODE", ICML 2021).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor

from .integrate import StepRecord
from .solvers import AbstractODESolver
from .step import VectorField, per_sample
from .vcab3 import VCAB3

__all__ = ["AbstractQuadrature", "RKQuadrature", "AdamsQuadrature", "parameter_quadrature"]


def parameter_quadrature(params: tuple[Tensor, ...], solver: AbstractODESolver) -> AbstractQuadrature:
    """The quadrature that matches the backward method: VCAB3's weights, else the tableau's ``b``."""
    return AdamsQuadrature(params) if isinstance(solver, VCAB3) else RKQuadrature(params, solver.tableau.b)


class AbstractQuadrature(abc.ABC):
    """:meth:`vjp` evaluates the field and ``a^T ∂F/∂u`` and keeps ``(F, a)``; :meth:`accumulate`, an observer of
    the backward loop, adds the accepted steps' terms to ``grads``; :meth:`finish` closes an output interval."""

    def __init__(self, params: tuple[Tensor, ...]):
        self.params = params
        self.records: list[tuple[Tensor, Tensor]] = []
        self.grads = [torch.zeros_like(q) for q in params]

    def vjp(self, fn: VectorField, s: Tensor, u: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        """``(F(s, u), a^T ∂F/∂u(s, u))``, both detached."""
        with torch.enable_grad():
            u_in = u.detach().requires_grad_(True)
            f = fn(s, u_in)
            vjp = None
            if f.requires_grad:
                (vjp,) = torch.autograd.grad(f, u_in, a, retain_graph=bool(self.params), allow_unused=True)
        self.records.append((f, a))
        return f.detach(), torch.zeros_like(u) if vjp is None else vjp.to(u.dtype)

    @abc.abstractmethod
    def accumulate(self, rec: StepRecord) -> None:
        """Add the terms of the accepted samples of the step just taken (or keep them for later)."""

    @abc.abstractmethod
    def finish(self) -> None:
        """The interval's backward solve ended: add whatever is still held, start afresh."""

    def _add(self, terms: list[tuple[Tensor, Tensor, Tensor]]) -> None:
        """``grads += sum over (f, w, a) of (w a)^T ∂f/∂θ``, ``w: (batch,)`` per sample, in one VJP."""
        terms = [(f, w, a) for f, w, a in terms if f.requires_grad]
        if not self.params or not terms:
            return
        cots = [per_sample(w, a).to(a.dtype) * a for _, w, a in terms]
        grads = torch.autograd.grad([f for f, _, _ in terms], self.params, cots, allow_unused=True)
        for acc, gq in zip(self.grads, grads, strict=True):
            if gq is not None:
                acc.add_(gq)


class RKQuadrature(AbstractQuadrature):
    """``g = sum over accepted backward steps of h * sum_i b_i a_i^T ∂F/∂θ(u_i)``. It needs every stage of a step
    within the step, so the backward loop runs without FSAL."""

    def __init__(self, params: tuple[Tensor, ...], b: tuple[float, ...]):
        super().__init__(params)
        self.b = b

    def accumulate(self, rec: StepRecord) -> None:
        stages, self.records = self.records[-len(self.b):], []
        if not self.params or not bool(rec.accept.any()):
            return
        w = torch.where(rec.accept, rec.h, torch.zeros_like(rec.h))
        self._add([(f, bi * w, a) for bi, (f, a) in zip(self.b, stages, strict=True) if bi != 0.0])

    def finish(self) -> None:
        self.records = []


@dataclass
class _Held:
    """One evaluation ``(f, a)`` waiting for its weights: ``age: (batch,)`` accepted steps of each sample since it
    became that sample's ``F_n`` (3: it adds to no step any more)."""

    f: Tensor
    a: Tensor
    weight: Tensor
    age: Tensor


class AdamsQuadrature(AbstractQuadrature):
    r"""``g = sum over accepted VCAB3 steps of sum_j beta_j a_{n-j}^T ∂F/∂θ(u_{n-j})``: the adjoint's own weights.

    An evaluation enters up to three steps of a sample (as ``F_n``, then ``F_{n-1}``, ``F_{n-2}``), and the samples
    accept at their own pace, so each evaluation's weight is collected per sample and its parameter VJP taken
    once, when no sample can add to it: three accepted steps later, the sample stopped, or the interval ended
    (:meth:`finish`; ``a`` jumps at output times, so each interval starts a fresh history). Meanwhile the graphs
    of a few evaluations of ``F`` are held (about three, more while samples reject steps).
    """

    def __init__(self, params: tuple[Tensor, ...]):
        super().__init__(params)
        self.held: list[_Held] = []
        self.fresh = True

    def accumulate(self, rec: StepRecord) -> None:
        records, self.records = self.records, []
        if not self.params:
            return
        if self.fresh:  # the interval's first pass: F at its start came first (before initial_dt's probe)
            f, a = records[0]
            self.held.append(_Held(f, a, torch.zeros_like(rec.h), torch.zeros_like(rec.accept, dtype=torch.long)))
            self.fresh = False
        weights = rec.step.weights * rec.accept[:, None].to(rec.h.dtype)
        moves = (rec.accept | (rec.h == 0)).long()  # a stopped sample adds to nothing any more
        for held in self.held:
            current = held.age < 3
            held.weight = held.weight + current * weights.gather(1, held.age.clamp_max(2)[:, None]).squeeze(1)
            held.age = (held.age + moves).clamp_max(3)
        f, a = records[-1]  # the pass's one call: the next F_n of the samples that accepted
        born = torch.where(rec.accept, 0, 3)
        self.held.append(_Held(f, a, torch.zeros_like(rec.h), born))
        done = torch.stack([held.age for held in self.held]).ge(3).all(1).tolist()  # one sync a pass
        self._take([held for held, d in zip(self.held, done, strict=True) if d])
        self.held = [held for held, d in zip(self.held, done, strict=True) if not d]

    def finish(self) -> None:
        self._take(self.held)
        self.held, self.records, self.fresh = [], [], True

    def _take(self, finished: list[_Held]) -> None:
        """The parameter VJP of the evaluations no sample adds to any more, skipping those none used (the
        evaluations of rejected steps)."""
        if not finished:
            return
        used = torch.stack([held.weight for held in finished]).ne(0).any(1).tolist()
        self._add([(held.f, held.weight, held.a) for held, u in zip(finished, used, strict=True) if u])
