"""Geometric multigrid V-cycle preconditioner for variable-coefficient Poisson systems.

Cell-centred bilinear prolongation P (tensor product of the 1-D weights 3/4, 1/4) halves
each side, so any nx, ny works (an odd side keeps its last coarse cell). Coarse operators
are Galerkin products A_c = P^T A P, which keep jumps in 1/rho honest at every level; they
are 9-point, so every level is a torch sparse CSR matrix and the cycle is a few batched
sparse mat-vecs per level. Damped Jacobi pre- and post-smoothing with the same sweeps, R =
P^T and an exact (pseudo-)inverse on the coarsest level make the V-cycle symmetric positive
(semi-)definite, as PCG needs.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse as sp
import torch

from .system import PoissonSystem


@dataclass
class MultigridConfig:
    smooth_steps: int = 2      # Jacobi sweeps before and after the coarse correction
    omega: float = 0.8         # Jacobi damping (< 2 / lambda_max(D^-1 A) = 1 for these stencils)
    coarsest: int = 64         # cells at or below which the level is solved densely


def _prolong_1d(n: int) -> tuple[sp.csr_matrix, int]:
    """Cell-centred linear interpolation from ceil(n/2) coarse cells to n fine cells."""
    c = (n + 1) // 2
    f = np.arange(n)
    home = f // 2
    other = np.where(f % 2 == 0, home - 1, home + 1)
    inside = (other >= 0) & (other < c)
    rows = np.concatenate([f, f[inside]])
    cols = np.concatenate([home, other[inside]])
    vals = np.concatenate([np.where(inside, 0.75, 1.0), np.full(int(inside.sum()), 0.25)])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, c)), c


@lru_cache(maxsize=64)
def _hierarchy(nx: int, ny: int, coarsest: int) -> tuple[tuple[sp.csr_matrix, ...], tuple[tuple[int, int], ...]]:
    """Prolongations and level shapes for one grid, computed once per shape."""
    ps, shapes = [], [(nx, ny)]
    while nx * ny > coarsest and max(nx, ny) > 1:
        px, cnx = _prolong_1d(nx) if nx > 1 else (sp.identity(1, format="csr"), 1)
        py, cny = _prolong_1d(ny) if ny > 1 else (sp.identity(1, format="csr"), 1)
        ps.append(sp.kron(px, py, format="csr"))
        nx, ny = cnx, cny
        shapes.append((nx, ny))
    return tuple(ps), tuple(shapes)


def _torch_csr(a: sp.spmatrix, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    a = sp.csr_matrix(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(torch.as_tensor(a.indptr, dtype=torch.int64),
                                       torch.as_tensor(a.indices, dtype=torch.int64),
                                       torch.as_tensor(a.data, dtype=dtype), size=a.shape,
                                       check_invariants=False).to(device)


def _spmv(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (a @ x.unsqueeze(-1)).squeeze(-1)


class Multigrid:
    """mgpcg: one V-cycle of geometric multigrid per PCG iteration."""

    name = "mgpcg"

    def __init__(self, config: MultigridConfig | None = None) -> None:
        self.config = config or MultigridConfig()

    def setup(self, system: PoissonSystem) -> None:
        cfg = self.config
        dev, dt = system.device, system.dtype
        ps, self.shapes = _hierarchy(system.nx, system.ny, cfg.coarsest)
        a = system.to_csr()
        self.ops: list[torch.Tensor] = []          # A on every level but the coarsest
        self.inv_diag: list[torch.Tensor] = []
        self.prolong: list[torch.Tensor] = []
        self.restrict: list[torch.Tensor] = []
        for p in ps:
            self.ops.append(_torch_csr(a, dt, dev))
            self.inv_diag.append(torch.as_tensor(cfg.omega / a.diagonal(), dtype=dt, device=dev))
            self.prolong.append(_torch_csr(p, dt, dev))
            self.restrict.append(_torch_csr(p.T, dt, dev))
            a = (p.T @ a @ p).tocsr()
        dense = torch.as_tensor(a.toarray(), dtype=torch.float64)
        # The pseudo-inverse equals the inverse on a regular coarse matrix and keeps a
        # singular (all-Neumann) one from amplifying its null space.
        self.coarse_inv = torch.linalg.pinv(dense, hermitian=True, rtol=1e-12).to(dtype=dt, device=dev)

    def apply(self, r: torch.Tensor) -> torch.Tensor:
        return self._cycle(0, r)

    def _cycle(self, level: int, b: torch.Tensor) -> torch.Tensor:
        if level == len(self.ops):
            return self.coarse_inv @ b
        a, w = self.ops[level], self.inv_diag[level]
        x = w * b
        for _ in range(self.config.smooth_steps - 1):
            x = x + w * (b - _spmv(a, x))
        x = x + _spmv(self.prolong[level], self._cycle(level + 1, _spmv(self.restrict[level], b - _spmv(a, x))))
        for _ in range(self.config.smooth_steps):
            x = x + w * (b - _spmv(a, x))
        return x
