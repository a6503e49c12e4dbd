"""The record every pydeq solve returns: the answer, per-sample status and the statistics."""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Status", "Solution", "BackwardStats", "ConvergenceError", "ConvergenceWarning", "NonFiniteError",
           "report_failures"]


class Status(enum.IntEnum):
    """Per-sample outcome of a solve. ``status.message`` says what to change."""

    SUCCESS = 0
    MAX_STEPS = 1
    NONFINITE = 2
    STAGNATED = 3
    STEP_TOO_SMALL = 4

    @property
    def message(self) -> str:
        return _MESSAGES[self]


_MESSAGES = {
    Status.SUCCESS: "converged",
    Status.MAX_STEPS: (
        "max steps reached before the tolerance was met: raise `max_steps`, loosen `rtol`/`atol`, "
        "or make f more contractive (e.g. spectral normalisation)"
    ),
    Status.NONFINITE: (
        "the iterate became NaN or Inf: f is not contractive at this point or the solver diverged; "
        "try damping, a smaller step, or a better-conditioned f"
    ),
    Status.STAGNATED: (
        "the residual stopped decreasing before the tolerance was met: loosen the tolerance or "
        "change solver"
    ),
    Status.STEP_TOO_SMALL: (
        "an ODE step was rejected at the smallest step allowed (dtmin): the solution changes faster than dtmin "
        "resolves (stiffness, a discontinuity or a blow-up); lower dtmin, loosen rtol/atol, or check the field"
    ),
}


class ConvergenceError(RuntimeError):
    """Raised when ``on_failure='raise'`` and some samples did not converge."""


class ConvergenceWarning(UserWarning):
    """Issued when ``on_failure='warn'`` and some samples did not converge."""


class NonFiniteError(FloatingPointError):
    """Raised when an iterate becomes NaN or Inf (unless ``on_failure='return'``)."""


@dataclass
class BackwardStats:
    """Filled in by the adjoint when the backward pass runs.

    Attributes:
        nfe: vector-Jacobian products (or f calls) the backward pass spent.
        residual: per-sample residual of the adjoint linear system, ``(batch,)``, when one was solved.
        ran: whether the backward pass has run.
    """

    nfe: int = 0
    residual: Tensor | None = None
    ran: bool = False


@dataclass
class Solution:
    """Result of a fixed-point or steady-state solve.

    Attributes:
        z: the answer, ``(batch, *state)``; carries the autograd graph chosen by the adjoint.
        residual: ``(batch,)`` norm of ``f(z) - z`` at each sample's returned iterate.
        status: ``(batch,)`` int64 tensor of :class:`Status` codes.
        nfe: forward calls of ``f`` (each on the whole batch).
        steps: ``(batch,)`` solver steps each sample took before it stopped.
        trace: per-step ``(batch,)`` residual norms when ``trace=True`` was asked, else ``None``.
        backward: statistics of the backward pass, filled in when it runs.
        extras: solver-specific data (Broyden factors, ODE times, ...).
    """

    z: Tensor
    residual: Tensor
    status: Tensor
    nfe: int
    steps: Tensor
    trace: list[Tensor] | None = None
    backward: BackwardStats = field(default_factory=BackwardStats)
    extras: dict = field(default_factory=dict)

    @property
    def converged(self) -> Tensor:
        """``(batch,)`` bool mask of samples that met the tolerance."""
        return self.status == int(Status.SUCCESS)

    @property
    def success(self) -> bool:
        """Whether every sample converged."""
        return bool(self.converged.all())

    def summary(self) -> str:
        """One line: how many samples converged, worst residual and nfe."""
        n = self.status.numel()
        worst = float(self.residual.max()) if n else 0.0
        return (
            f"{int(self.converged.sum())}/{n} converged, max residual {worst:.3g}, "
            f"nfe {self.nfe} forward / {self.backward.nfe} backward"
        )

    def failures(self) -> dict[Status, int]:
        """Count of samples per non-success status."""
        out = {}
        for s in Status:
            if s is Status.SUCCESS:
                continue
            c = int((self.status == int(s)).sum())
            if c:
                out[s] = c
        return out


def report_failures(solution: Solution, on_failure: str, what: str = "fixed-point solve") -> None:
    """Apply the ``on_failure`` policy to a finished solve."""
    failures = solution.failures()
    if not failures or on_failure == "return":
        return
    batch = solution.status.numel()
    parts = [f"{n}/{batch} samples: {s.name} ({s.message})" for s, n in failures.items()]
    msg = f"{what} did not converge for " + "; ".join(parts) + f". Worst residual {float(solution.residual.max()):.3g}."
    if Status.NONFINITE in failures:
        raise NonFiniteError(msg + " Pass on_failure='return' to inspect the solution instead.")
    if on_failure == "raise":
        raise ConvergenceError(msg)
    warnings.warn(msg, ConvergenceWarning, stacklevel=3)


def empty_status(batch: int, device: torch.device) -> Tensor:
    return torch.full((batch,), int(Status.MAX_STEPS), dtype=torch.int64, device=device)
