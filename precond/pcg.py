"""Preconditioned conjugate gradient in torch, on CPU or CUDA.

`pcg` iterates on the range of A when A is singular (all-Neumann components): the
right-hand side and every preconditioned residual are projected, so the pressure never
drifts. It stops at a relative residual `tol` of that projected system (||P b - A x|| / ||P b||)
or at `maxiter`, and says honestly which of the two happened.

What it reports is recomputed at the end in float64 from the returned x and the b it was
given: `residual` = ||b - A x|| / ||b||. When b has a component in A's null space (an
inconsistent right-hand side: a closed box whose sources do not sum to zero), no x can remove
it: `rhs_projected` is its relative size, `residual` never goes below it, and `converged`
refers to the projected system. Past `tol` the note says so.
"""
from __future__ import annotations

import math
import time
from functools import partial
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .compiled import Compiled
from .system import PoissonSystem


class Preconditioner(Protocol):
    """Build once per system with `setup`, then `apply` to many residuals: z ~= A^-1 r.

    `apply` must be a static tensor program (no `.item()`, no value-dependent control flow) for
    `pcg(..., compiled=True)` to compile it. Optional: `observe(iterations)`, told each solve's
    iterations by Solver, and `setup_reused`, True when the last setup kept part of an earlier one."""

    name: str

    def setup(self, system: PoissonSystem) -> None: ...

    def apply(self, r: torch.Tensor) -> torch.Tensor: ...


@dataclass
class SolveResult:
    """What a solve returns: the answer plus an honest account of how it got there."""

    x: torch.Tensor
    iterations: int
    residual: float  # ||b - A x|| / ||b|| in float64 from the returned x and the given b; >= rhs_projected
    converged: bool  # the projected system P b reached tol (P = I when A is regular)
    seconds: float
    method: str
    history: list[float] = field(default_factory=list)  # ||P b - A x|| / ||P b|| per iteration (0 first)
    setup_seconds: float = 0.0
    fell_back: bool = False
    primary_iterations: int = 0  # iterations spent by the primary method before a fallback
    note: str = ""
    rhs_projected: float = 0.0  # ||b - P b|| / ||b||: the null-space part of b, removed before solving
    setup_reused: bool = False  # part of the set-up came from an earlier system (HTP's network output)
    compiled: bool = False      # the iterations ran as torch.compile'd chunks


def check_settings(tol: object, maxiter: object) -> None:
    """tol must be a number in (0, 1), maxiter None or an integer >= 1; anything else names the argument."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating, np.integer)):
        raise TypeError(f"tol must be a number in (0, 1), got {tol!r}")
    if not 0.0 < float(tol) < 1.0:
        raise ValueError(f"tol: tolerance must be > 0 and < 1 (a relative residual), got {tol!r}")
    if maxiter is not None and (isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer))):
        raise TypeError(f"maxiter must be None or an integer >= 1, got {maxiter!r}")
    if maxiter is not None and maxiter < 1:
        raise ValueError(f"maxiter must be None or an integer >= 1, got {maxiter!r}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _chunk(system: PoissonSystem, precond: Preconditioner, x: torch.Tensor, r: torch.Tensor, p: torch.Tensor,
           rz: torch.Tensor, atol: torch.Tensor, left: torch.Tensor, k: int) -> tuple[torch.Tensor, ...]:
    """k PCG iterations as one static tensor program: no host synchronisation, no value-dependent
    control flow. An iteration starts from the residual r: z = M r, the new direction p, then x and r.
    The first chunk of a solve starts from p = 0 (and any rz != 0), so every apply of M, the first
    included, runs inside a chunk. `pcg` calls it only while the residual is above tolerance. Once the
    residual norm reaches `atol` (or is not finite) at a step, or after `left` steps, the later steps of
    the chunk leave x and r as they are, so the result is that of stopping exactly there (p and rz go on
    changing, harmlessly: the caller stops). Returns (x, r, p, rz, ||r|| after every step)."""
    norms: list[torch.Tensor] = []
    live: torch.Tensor | None = None      # every step so far went on; only later steps of a chunk need it
    for i in range(k):
        z = system.project(precond.apply(r))
        rz_new = torch.dot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
        q = system.matvec(p)
        alpha = rz / torch.dot(p, q)
        if live is None:
            x, r = x + alpha * p, r - alpha * q
        else:
            x, r = torch.where(live, x + alpha * p, x), torch.where(live, r - alpha * q, r)
        norm = torch.linalg.vector_norm(r)
        norms.append(norm)
        if i + 1 < k:
            go = (norm > atol) & (left > i + 1)          # False for a NaN norm too
            live = go if live is None else live & go
    return x, r, p, rz, torch.stack(norms)


def chunk_key(method: str, nx: int, ny: int, k: int) -> tuple[str, str]:
    """What one compiled PCG chunk program is for: (preconditioner name, grid and chunk length)."""
    return method, f"{nx}x{ny}, {k} iterations a chunk"


CHUNK_PROGRAM = Compiled(_chunk, "the PCG chunk",
                         lambda system, precond, *rest: chunk_key(precond.name, system.nx, system.ny, rest[-1]))


def pcg(system: PoissonSystem, b: torch.Tensor, precond: Preconditioner, tol: float = 1e-6,
        maxiter: int | None = None, x0: torch.Tensor | None = None, chunk: int = 1,
        compiled: bool = False) -> SolveResult:
    """Solve A x = b by PCG; `precond` must be set up for `system` and be symmetric positive definite.

    The iterations run in chunks of `chunk` (see `_chunk`), the convergence test between chunks;
    `compiled` runs each chunk as one torch.compile'd program (see compiled.py). Iterations and
    answer do not depend on either: a chunk that converges part-way is cut at that iteration."""
    t0 = time.perf_counter()
    check_settings(tol, maxiter)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    given = system.check_vector(b, "b")
    x0 = None if x0 is None else system.check_vector(x0, "x0")
    maxiter = int(maxiter) if maxiter is not None else max(500, 20 * max(system.shape))
    b = system.project(given.to(system.dtype))
    bnorm = float(torch.linalg.vector_norm(b))
    x = torch.zeros_like(b) if x0 is None or bnorm == 0.0 else system.project(x0.to(b.dtype).clone())
    history = [0.0]
    it = 0
    if bnorm > 0.0:
        r = b - system.matvec(x)
        p, rz = torch.zeros_like(r), torch.ones((), dtype=r.dtype, device=r.device)   # see _chunk
        history = [float(torch.linalg.vector_norm(r)) / bnorm]
        atol = torch.tensor(tol * bnorm, dtype=b.dtype, device=b.device)
        run = partial(CHUNK_PROGRAM, b.device) if compiled else _chunk
        stopped = history[-1] <= tol                  # a NaN start takes one step, then stops
        while not stopped and it < maxiter:
            left = torch.tensor(maxiter - it, device=b.device)
            x, r, p, rz, norms = run(system, precond, x, r, p, rz, atol, left, chunk)
            for value in (norms / bnorm).tolist()[:maxiter - it]:   # the one host synchronisation a chunk
                it += 1
                history.append(value)
                stopped = value <= tol or not math.isfinite(value)
                if stopped:
                    break
    x = system.project(x)
    residual, projected_residual, removed = _account(system, given, x)
    converged = bool(history[-1] <= tol and projected_residual <= 2.0 * tol)
    _sync(b.device)
    notes = []
    if removed > tol:
        notes.append(f"inconsistent right-hand side: its null-space part ({removed:.1e} of ||b||) was projected out")
    if not converged:
        notes.append(f"no convergence to {tol:g} in {it} iterations (residual {projected_residual:.2e})")
    return SolveResult(x, it, residual, converged, time.perf_counter() - t0, precond.name, history,
                       note="; ".join(notes), rhs_projected=removed)


def _account(system: PoissonSystem, b: torch.Tensor, x: torch.Tensor) -> tuple[float, float, float]:
    """(||b - A x|| / ||b||, ||P b - A x|| / ||P b||, ||b - P b|| / ||b||) in float64, against the given b."""
    b = b.to(torch.float64)
    ax = system.matvec(x.to(torch.float64))     # float64: the coefficients promote exactly
    pb = system.project(b)
    norm = lambda v: float(torch.linalg.vector_norm(v))
    b_norm, pb_norm = norm(b), norm(pb)
    residual = norm(b - ax) / b_norm if b_norm > 0 else 0.0
    projected = norm(pb - ax) / pb_norm if pb_norm > 0 else 0.0
    return residual, projected, system.null_component(b)
