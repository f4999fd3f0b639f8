"""One entry point for every solver: pick a preconditioner by name, build it, run PCG.

`Solver` is what the simulator holds (build once, solve every frame); `solve` is the
one-call form for scipy matrices, for use outside the simulator. A preconditioner that
cannot be built or set up (e.g. a missing or unusable checkpoint: PreconditionerUnavailable)
or a solve that does not converge falls back to `fallback` (mgpcg by default); the result
says so (`fell_back`, `note`), and an unavailable method is warned about once, in one line.

Input is checked cheaply (O(N) tensor operations): the matrix when its PoissonSystem is
made, tol and maxiter by `check_settings` when a Solver is, b and x0 by
`PoissonSystem.check_vector` in pcg. Bad input is a ValueError or TypeError naming the argument and what was
expected, for every method alike.
"""
from __future__ import annotations

import importlib
import os
import time
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from .compiled import load_compiler
from .pcg import CHUNK_PROGRAM, Preconditioner, SolveResult, check_settings, chunk_key, pcg
from .system import PoissonSystem, check_grid


# Intra-op threads of a CPU solve. On this project's 2-core machines, with another process busy on
# the other core, two threads took 68x (jacobi), 190x (mgpcg) and 79x (htp) the time of one at
# N = 8,192, 1,000:1 (OpenMP threads waiting on each other); with the machine quiet, two threads made
# a 128x64 dam-break frame 15-25 % faster (htp and mgpcg alike). So "auto" (the default) solves on one
# thread while other processes keep the machine busy and leaves torch's setting otherwise.
CPU_THREADS: int | str | None = "auto"
BUSY_LOAD = 0.5   # "busy": the 1-minute load average, less this process's own CPU use, above this


class _Load:
    """This process's CPU use (cores) since the last look, to tell its own load from others'."""

    def __init__(self) -> None:
        self.wall, self.cpu, self.own = time.monotonic(), time.process_time(), 0.0

    def others_busy(self) -> bool:
        wall, cpu = time.monotonic(), time.process_time()
        if wall - self.wall >= 1.0:                       # refresh at most once a second
            self.own = (cpu - self.cpu) / (wall - self.wall)
            self.wall, self.cpu = wall, cpu
        try:
            load = os.getloadavg()[0]
        except OSError:                                   # no load average on this platform
            return False
        return load - self.own > BUSY_LOAD


_LOAD = _Load()


# Iterations per compiled chunk (CPU, N = 8,192): 4 and 8 ran alike and far faster than 1; 4 compiles
# in half the time of 8 and wastes fewer steps after convergence.
COMPILED_CHUNK = 4


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


def _check_method(name: object, argument: str = "") -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown solver {name!r}{argument}; expected one of: {', '.join(_REGISTRY)}")


def make_preconditioner(name: str) -> Preconditioner:
    _check_method(name)
    module, attr = _REGISTRY[name].split(":")
    factory: Callable[[], Preconditioner] = getattr(importlib.import_module(module), attr)
    return factory()


class Solver:
    """Build once, solve many: `Solver("mgpcg").solve(system, b)` per frame.

    `precond`: a ready preconditioner to use instead of building `method`'s default one
    (e.g. `Solver("htp", precond=HTP("my_htp.pt"))`). Every system gets a set-up; what a
    preconditioner may keep across set-ups is its own business (HTP keeps its network's output,
    see htp.NetworkReuse: its `setup_reused` says so), and one with an `observe(iterations)`
    method is told each solve's iterations. `compiled`: run PCG as torch.compile'd chunks of
    `chunk` iterations (default 4 compiled, 1 eager: see pcg and compiled.py). `threads`: torch's
    intra-op threads during a CPU solve, restored afterwards: a number, None (torch's setting) or
    "auto" (the default, CPU_THREADS: one while other processes keep the machine busy).
    """

    def __init__(self, method: str = "mgpcg", tol: float = 1e-6, maxiter: int | None = None,
                 fallback: str | None = "mgpcg", precond: Preconditioner | None = None,
                 compiled: bool = False, chunk: int | None = None, threads: int | str | None = CPU_THREADS) -> None:
        _check_method(method)
        if fallback is not None:
            _check_method(fallback, " for fallback")
        check_settings(tol, maxiter)
        if not isinstance(compiled, bool):
            raise TypeError(f"compiled must be True or False, got {compiled!r}")
        if compiled:
            load_compiler()
        chunk = (COMPILED_CHUNK if compiled else 1) if chunk is None else chunk
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be None or an integer >= 1, got {chunk!r}")
        if threads not in (None, "auto") and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be None, 'auto' or an integer >= 1, got {threads!r}")
        self.method, self.tol, self.maxiter = method, float(tol), maxiter
        self.compiled, self.chunk, self.threads = compiled, chunk, threads
        self.fallback = fallback if fallback != method else None
        self._precond: Preconditioner | None = precond
        # why the primary cannot serve: key None for every grid (it cannot be built), else per grid shape
        self._unavailable: dict[tuple[int, int] | None, str] = {}
        self._fallback_precond: Preconditioner | None = None

    def _mark_unavailable(self, shape: tuple[int, int] | None, err: PreconditionerUnavailable) -> None:
        """Remember why (for every grid, or this one) and warn once; with no fallback, raise it."""
        self._unavailable[shape] = str(err)
        if self.fallback is None:
            raise err
        warnings.warn(f"solver {self.method!r} unavailable ({err}); using {self.fallback!r} instead", stacklevel=4)

    def _why_unavailable(self, shape: tuple[int, int]) -> str:
        return self._unavailable.get(None) or self._unavailable.get(shape, "")

    def _primary(self) -> Preconditioner | None:
        if self._precond is None and None not in self._unavailable:
            try:
                self._precond = make_preconditioner(self.method)
            except PreconditionerUnavailable as err:
                self._mark_unavailable(None, err)
        return self._precond

    def _run(self, precond: Preconditioner, system: PoissonSystem, b: torch.Tensor,
             x0: torch.Tensor | None, maxiter: int | None) -> SolveResult:
        t0 = time.perf_counter()
        precond.setup(system)
        if system.device.type == "cuda":
            torch.cuda.synchronize(system.device)
        t_setup = time.perf_counter() - t0
        with torch.no_grad():
            res = pcg(system, b, precond, self.tol, maxiter, x0, self.chunk, self.compiled)
        res.setup_seconds = t_setup
        res.seconds += t_setup
        observe = getattr(precond, "observe", None)
        if observe is not None:
            observe(res.iterations)
        res.setup_reused = bool(getattr(precond, "setup_reused", False))
        res.compiled = self.compiled and CHUNK_PROGRAM.is_compiled(precond.name)
        return res

    def compile_pending(self, nx: int, ny: int) -> str:
        """A line saying the next solve on an nx x ny grid will compile first (and stall for it), or ""."""
        if not self.compiled or not CHUNK_PROGRAM.cold(chunk_key(self.method, nx, ny, self.chunk)):
            return ""
        return (f"compiling the {self.method} solve for {nx}x{ny} (once per grid shape: about a second from "
                f"the disk cache, up to a minute the first time on this machine)")

    @contextmanager
    def threads_scope(self, device: torch.device | str = "cpu") -> Iterator[None]:
        """torch's intra-op threads as this solver's `threads` policy sets them, restored on exit: `solve`
        runs in it, and a caller building the solver's systems (small tensor work) can run in it too."""
        threads = 1 if self.threads == "auto" and _LOAD.others_busy() else self.threads
        if threads in (None, "auto") or torch.device(device).type != "cpu":
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def solve(self, system: PoissonSystem, b: torch.Tensor, x0: torch.Tensor | None = None) -> SolveResult:
        """Solve A x = b; falls back (and says so) when the primary method is unavailable or fails.

        A singular A (all-Neumann components) is solved on its range: b's null-space part is
        projected out and reported as `rhs_projected` (see pcg)."""
        with self.threads_scope(system.device):
            return self._solve(system, b, x0)

    def _solve(self, system: PoissonSystem, b: torch.Tensor, x0: torch.Tensor | None) -> SolveResult:
        precond = self._primary()
        first: SolveResult | None = None
        if precond is not None and not self._why_unavailable(system.shape):
            try:
                first = self._run(precond, system, b, x0, self.maxiter)
            except PreconditionerUnavailable as err:   # e.g. a checkpoint read for this grid in setup
                self._mark_unavailable(system.shape, err)
            else:
                if first.converged or self.fallback is None:
                    return first
        if self.fallback is None:
            raise PreconditionerUnavailable(self._why_unavailable(system.shape))
        if self._fallback_precond is None:
            self._fallback_precond = make_preconditioner(self.fallback)
        res = self._run(self._fallback_precond, system, b, x0, None)  # the fallback gets its default cap
        res.fell_back = True
        why = self._why_unavailable(system.shape) or (first.note if first is not None else "")
        res.note = f"{self.method} -> {self.fallback}: {why}" + (f"; {res.note}" if res.note else "")
        if first is not None:
            res.seconds += first.seconds
            res.primary_iterations = first.iterations
        return res


def _check_device(device: object) -> torch.device:
    """A torch device this process can use: 'cpu', or 'cuda' / 'cuda:k' where CUDA is available."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu' or 'cuda[:k]', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:k]', got {device!r}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: CUDA is not available here; expected 'cpu'")
        if (dev.index or 0) >= count:
            raise ValueError(f"device {device!r}: this machine has cuda:0 to cuda:{count - 1}")
    return dev


def solve(A: sp.spmatrix | np.ndarray, b: np.ndarray, grid: tuple[int, int], method: str = "mgpcg",
          tol: float = 1e-6, maxiter: int | None = None, device: str = "cpu", project: bool = False) -> SolveResult:
    """Solve a 5-point SPD (or all-Neumann) system given as scipy sparse (or dense numpy) + grid shape.

    Returns a SolveResult whose `x` is a numpy vector in the order of `b`. A singular A with a
    right-hand side whose null-space part exceeds `tol` (relative to ||b||) has no solution: it
    is a ValueError unless `project=True`, which solves the projected system and reports the
    part removed as `rhs_projected` (then `residual` >= `rhs_projected`).
    """
    solver = Solver(method, tol, maxiter)            # method, tol, maxiter checked before any work
    dev = _check_device(device)
    nx, ny = check_grid(grid)
    system = PoissonSystem.from_csr(A, (nx, ny), device=dev)
    b_np = np.asarray(b)
    if np.iscomplexobj(b_np) or not (np.issubdtype(b_np.dtype, np.number) or b_np.dtype == bool):
        raise TypeError(f"b must be a real vector, got dtype {b_np.dtype}")
    if b_np.size != system.n:
        raise ValueError(f"b has {b_np.size} entries but the grid {nx}x{ny} has {system.n} cells")
    b_t = system.check_vector(torch.as_tensor(b_np.astype(np.float64).reshape(-1), device=dev), "b")
    removed = system.null_component(b_t)
    if removed > tol and not project:
        raise ValueError(
            f"b is inconsistent with the singular A (a component without Dirichlet faces): its null-space part "
            f"is {removed:.2e} of ||b||, above tol={tol:g}; expected b summing to zero over every such "
            f"component, or pass project=True to solve the projected system")
    res = solver.solve(system, b_t)
    res.x = res.x.detach().cpu().numpy()
    return res
