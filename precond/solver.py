"""One entry point for every solver: pick a preconditioner by name, build it, run PCG.

`Solver` is what the simulator holds (build once, solve every frame); `solve` is the
one-call form for scipy matrices, for use outside the simulator. A preconditioner that
cannot be built (e.g. a missing HTP checkpoint) or a solve that does not converge falls
back to `fallback` (mgpcg by default); the result says so (`fell_back`, `note`).
"""
from __future__ import annotations

import importlib
import time
import warnings
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from .pcg import Preconditioner, SolveResult, pcg
from .system import PoissonSystem


class PreconditionerUnavailable(RuntimeError):
    """A preconditioner cannot be built here (missing/corrupt checkpoint, unsupported layout)."""


# name -> "module:factory"; modules are imported on first use so optional pieces stay optional.
_REGISTRY: dict[str, str] = {
    "none": "precond.jacobi:Identity",
    "jacobi": "precond.jacobi:Jacobi",
    "ic0": "precond.ic0:IC0",
    "mgpcg": "precond.multigrid:Multigrid",
    "htp": "precond.htp:HTP",
    "neural_spai": "precond.neural_spai:NeuralSPAI",
}
METHODS: tuple[str, ...] = tuple(_REGISTRY)


def make_preconditioner(name: str) -> Preconditioner:
    if name not in _REGISTRY:
        raise ValueError(f"unknown solver {name!r}; expected one of: {', '.join(_REGISTRY)}")
    module, attr = _REGISTRY[name].split(":")
    factory: Callable[[], Preconditioner] = getattr(importlib.import_module(module), attr)
    return factory()


class Solver:
    """Build once, solve many: `Solver("mgpcg").solve(system, b)` per frame.

    `precond`: a ready preconditioner to use instead of building `method`'s default one
    (e.g. `Solver("htp", precond=HTP("my_htp.pt"))`).
    """

    def __init__(self, method: str = "mgpcg", tol: float = 1e-6, maxiter: int | None = None,
                 fallback: str | None = "mgpcg", precond: Preconditioner | None = None) -> None:
        if method not in _REGISTRY:
            raise ValueError(f"unknown solver {method!r}; expected one of: {', '.join(_REGISTRY)}")
        if not tol > 0:
            raise ValueError(f"tolerance must be > 0, got {tol}")
        self.method, self.tol, self.maxiter = method, float(tol), maxiter
        self.fallback = fallback if fallback != method else None
        self._precond: Preconditioner | None = precond
        self._unavailable: str = ""
        self._fallback_precond: Preconditioner | None = None

    def _primary(self) -> Preconditioner | None:
        if self._precond is None and not self._unavailable:
            try:
                self._precond = make_preconditioner(self.method)
            except PreconditionerUnavailable as err:
                self._unavailable = str(err)
                warnings.warn(f"solver {self.method!r} unavailable ({err}); using {self.fallback!r} instead",
                              stacklevel=3)
        return self._precond

    def _run(self, precond: Preconditioner, system: PoissonSystem, b: torch.Tensor,
             x0: torch.Tensor | None, maxiter: int | None) -> SolveResult:
        t0 = time.perf_counter()
        precond.setup(system)
        if system.device.type == "cuda":
            torch.cuda.synchronize(system.device)
        t_setup = time.perf_counter() - t0
        res = pcg(system, b, precond, self.tol, maxiter, x0)
        res.setup_seconds = t_setup
        res.seconds += t_setup
        return res

    def solve(self, system: PoissonSystem, b: torch.Tensor, x0: torch.Tensor | None = None) -> SolveResult:
        """Solve A x = b; falls back (and says so) when the primary method fails."""
        precond = self._primary()
        first: SolveResult | None = None
        if precond is not None:
            first = self._run(precond, system, b, x0, self.maxiter)
            if first.converged or self.fallback is None:
                return first
        if self.fallback is None:
            raise PreconditionerUnavailable(self._unavailable)
        if self._fallback_precond is None:
            self._fallback_precond = make_preconditioner(self.fallback)
        res = self._run(self._fallback_precond, system, b, x0, None)  # the fallback gets its default cap
        res.fell_back = True
        why = self._unavailable or (first.note if first is not None else "")
        res.note = f"{self.method} -> {self.fallback}: {why}"
        if first is not None:
            res.seconds += first.seconds
            res.primary_iterations = first.iterations
        return res


def solve(A: sp.spmatrix, b: np.ndarray, grid: tuple[int, int], method: str = "mgpcg", tol: float = 1e-6,
          maxiter: int | None = None, device: str = "cpu") -> SolveResult:
    """Solve a 5-point SPD (or all-Neumann, consistent) system given as scipy sparse + grid shape.

    Returns a SolveResult whose `x` is a numpy vector in the order of `b`.
    """
    system = PoissonSystem.from_csr(A, grid, device=device)
    b_t = torch.as_tensor(np.asarray(b, dtype=np.float64).reshape(-1), device=device)
    if b_t.numel() != system.n:
        raise ValueError(f"b has {b_t.numel()} entries but the grid {grid[0]}x{grid[1]} has {system.n} cells")
    res = Solver(method, tol, maxiter).solve(system, b_t)
    res.x = res.x.detach().cpu().numpy()
    return res
