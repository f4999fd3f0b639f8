"""Preconditioned conjugate gradient in torch, on CPU or CUDA.

`pcg` iterates on the range of A when A is singular (all-Neumann components): the
right-hand side and every preconditioned residual are projected, so the pressure never
drifts. It stops at a relative residual `tol` (||b - A x|| / ||b||) or at `maxiter`, and
says honestly which of the two happened.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .system import PoissonSystem


class Preconditioner(Protocol):
    """Build once per system with `setup`, then `apply` to many residuals: z ~= A^-1 r."""

    name: str

    def setup(self, system: PoissonSystem) -> None: ...

    def apply(self, r: torch.Tensor) -> torch.Tensor: ...


@dataclass
class SolveResult:
    """What a solve returns: the answer plus an honest account of how it got there."""

    x: torch.Tensor
    iterations: int
    residual: float  # final relative residual ||b - A x|| / ||b||, recomputed from x
    converged: bool
    seconds: float
    method: str
    history: list[float] = field(default_factory=list)  # relative residual per iteration (0 first)
    setup_seconds: float = 0.0
    fell_back: bool = False
    primary_iterations: int = 0  # iterations spent by the primary method before a fallback
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pcg(system: PoissonSystem, b: torch.Tensor, precond: Preconditioner, tol: float = 1e-6,
        maxiter: int | None = None, x0: torch.Tensor | None = None) -> SolveResult:
    """Solve A x = b by PCG; `precond` must be set up for `system` and be symmetric positive definite."""
    t0 = time.perf_counter()
    maxiter = int(maxiter) if maxiter is not None else max(500, 20 * max(system.shape))
    b = system.project(b.reshape(-1).to(system.dtype))
    x = torch.zeros_like(b) if x0 is None else system.project(x0.reshape(-1).to(b.dtype).clone())
    bnorm = float(torch.linalg.vector_norm(b))
    if bnorm == 0.0 or not math.isfinite(bnorm):
        ok = bnorm == 0.0
        return SolveResult(torch.zeros_like(b), 0, 0.0 if ok else float("nan"), ok,
                           time.perf_counter() - t0, precond.name, [0.0] if ok else [],
                           note="" if ok else "right-hand side is not finite")
    r = b - system.matvec(x)
    z = system.project(precond.apply(r))
    p = z.clone()
    rz = torch.dot(r, z)
    history = [float(torch.linalg.vector_norm(r)) / bnorm]
    it = 0
    while not history[-1] <= tol and it < maxiter:     # a NaN start takes one step, then stops
        q = system.matvec(p)
        alpha = rz / torch.dot(p, q)
        x += alpha * p
        r -= alpha * q
        it += 1
        history.append(float(torch.linalg.vector_norm(r) / bnorm))
        if history[-1] <= tol or not math.isfinite(history[-1]):
            break
        z = system.project(precond.apply(r))
        rz_new = torch.dot(r, z)
        beta = rz_new / rz
        rz = rz_new
        p.mul_(beta).add_(z)
    x = system.project(x)
    true_res = float(torch.linalg.vector_norm(b - system.matvec(x))) / bnorm
    converged = bool(history[-1] <= tol and true_res <= 2.0 * tol)
    _sync(b.device)
    note = "" if converged else f"no convergence to {tol:g} in {it} iterations (residual {true_res:.2e})"
    return SolveResult(x, it, true_res, converged, time.perf_counter() - t0, precond.name, history, note=note)
