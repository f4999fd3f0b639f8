"""Geometric multigrid V-cycle preconditioner for variable-coefficient Poisson systems.

Cell-centred bilinear prolongation P (tensor product of the 1-D weights 3/4, 1/4) halves
each side, so any nx, ny works (an odd side keeps its last coarse cell). Coarse operators
are Galerkin products A_c = P^T A P, which keep jumps in 1/rho honest on every level; they
have up to 5 x 5 points (the cell-centred P widens the stencil), so every level is a torch
sparse CSR matrix and a cycle is a handful of sparse mat-vecs per level.

The triple product is linear in A's entries and its sparsity depends only on the grid
shape, so it is worked out once per shape (`_device_hierarchy`) as one sparse "Galerkin map"
per level; a new system then costs one sparse mat-vec per level to coarsen. The maps are most
of mgpcg's memory: about 80 entries per fine cell on the first level, 2.4 KB per cell in all.
Decoupled cells (solid cells' identity rows, see PoissonSystem.decoupled) are smoothed but kept out
of the coarse levels: P' = D P with D the indicator of the coupled cells, A_c = P'^T A P', since at
1,000:1 a diag of 1 beside water's 1e-3 would stand in for the water around it (unmasked, the
128x64 systems of synthetic.OBSTACLES at 1,000:1 take 16 to 69 iterations, masked 9 to 19). Coarse
rows left with no energy (all-solid coarse cells) are masked the same way on the next level and
skipped by its smoother. Damped Jacobi pre- and post-smoothing with equal sweeps, R = P'^T and an exact
(pseudo-)inverse on the coarsest level make the V-cycle symmetric positive definite, as PCG
needs.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse as sp
import torch

from .config import check_fields, is_int, is_positive
from .system import PoissonSystem, stencil_pattern


_GALERKIN_CHUNK = 1 << 17   # fine entries per chunk of the Galerkin map's construction (~16 MiB a temporary)
# A coarse row whose diagonal is below EMPTY_TOL * eps(dtype) times the restricted fine diagonal is
# round-off (a coarse function constant on a sealed pocket, or supported on solids only): far above
# the rounding of the Galerkin sum (about a hundred terms), far below any real coarse energy.
EMPTY_TOL = 1e3


@dataclass(frozen=True)
class MultigridConfig:
    smooth_steps: int = 2      # Jacobi sweeps before and after the coarse correction
    omega: float = 0.8         # Jacobi damping (< 2 / lambda_max(D^-1 A) = 1 for these stencils)
    coarsest: int = 64         # cells at or below which a level is solved densely

    def __post_init__(self) -> None:
        check_fields(self, {"smooth_steps": (is_int(1), "an integer >= 1"),
                            "omega": (lambda v: is_positive(v) and v <= 1, "a number in (0, 1]"),
                            "coarsest": (is_int(1), "an integer >= 1")})


def _prolong_1d(n: int) -> sp.csr_matrix:
    """Cell-centred linear interpolation from ceil(n/2) coarse cells to n fine cells."""
    c = (n + 1) // 2
    f = np.arange(n)
    home = f // 2
    other = np.where(f % 2 == 0, home - 1, home + 1)
    inside = (other >= 0) & (other < c) & (n > 1)
    rows = np.concatenate([f, f[inside]])
    cols = np.concatenate([home, other[inside]])
    vals = np.concatenate([np.where(inside, 0.75, 1.0), np.full(int(inside.sum()), 0.25)])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, c))


def _torch_csr(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, n_cols: int) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(indptr, indices, values, size=(len(indptr) - 1, n_cols),
                                       check_invariants=False)


def _stencil_pattern(nx: int, ny: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """CSR pattern of the 5-point stencil and, per CSR entry, its (slot, sign) in cat(diag, cx, cy)."""
    n = nx * ny
    rows, cols, slots, sign = stencil_pattern(nx, ny)
    a = sp.csr_matrix((np.arange(1, len(rows) + 1, dtype=np.float64), (rows, cols)), shape=(n, n))
    order = a.data.astype(np.int64) - 1  # CSR position -> original entry
    return a, np.stack([slots[order], sign[order]])


def _galerkin_map(a: sp.csr_matrix, p: sp.csr_matrix, coarse_ny: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Coarse pattern of P^T A P and the map G with coarse values = G @ fine values (CSR data order).

    The pattern is P^T |A| P's (positive weights cannot cancel); each fine entry's contributions
    find their coarse slot through a dense table over the (2R+1)^2 grid offsets a coarse row spans.
    """
    nc = p.shape[1]
    width = int(np.diff(p.indptr).max())
    pidx = np.zeros((p.shape[0], width), dtype=np.int64)
    pw = np.zeros((p.shape[0], width))
    for k in range(width):  # at most 4 parents per fine cell
        has = np.diff(p.indptr) > k
        pidx[has, k] = p.indices[p.indptr[:-1][has] + k]
        pw[has, k] = p.data[p.indptr[:-1][has] + k]
    ones = sp.csr_matrix((np.ones(a.nnz), a.indices, a.indptr), shape=a.shape)
    coarse = (p.T @ ones @ p).tocsr()
    coarse.sort_indices()
    coarse.data[:] = 1.0
    gx, gy = np.divmod(np.arange(nc), coarse_ny)   # coarse cell -> grid coordinates
    crow = np.repeat(np.arange(nc), np.diff(coarse.indptr))
    dx, dy = gx[coarse.indices] - gx[crow], gy[coarse.indices] - gy[crow]
    reach = int(max(np.abs(dx).max(), np.abs(dy).max()))
    span = 2 * reach + 1
    table = np.full((nc, span * span), -1, dtype=np.int64)
    table[crow, (dx + reach) * span + dy + reach] = np.arange(coarse.nnz)

    rows = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))
    # G's columns in CSC order: fine entry e has (parents of its row) x (parents of its column) products
    parents = np.diff(p.indptr)
    indptr = np.concatenate([[0], np.cumsum(parents[rows] * parents[a.indices])])
    values, slots = np.empty(indptr[-1]), np.empty(indptr[-1], dtype=np.int32)
    for lo in range(0, a.nnz, _GALERKIN_CHUNK):   # filled in chunks of fine entries: bounded temporaries
        r, c = rows[lo:lo + _GALERKIN_CHUNK], a.indices[lo:lo + _GALERKIN_CHUNK]
        w = pw[r][:, :, None] * pw[c][:, None, :]   # (fine entry, parent of row, parent of col)
        keep = w != 0
        ci = np.broadcast_to(pidx[r][:, :, None], w.shape)[keep]
        cj = np.broadcast_to(pidx[c][:, None, :], w.shape)[keep]
        out = slice(indptr[lo], indptr[lo + len(r)])
        slots[out] = table[ci, (gx[cj] - gx[ci] + reach) * span + gy[cj] - gy[ci] + reach]
        values[out] = w[keep]
    g = sp.csc_matrix((values, slots, indptr), shape=(coarse.nnz, len(rows)))
    return coarse, g.tocsr()


def _hierarchy(nx: int, ny: int, coarsest: int) -> dict:
    """Everything about the levels that depends only on the grid shape, in scipy (not cached: the
    device tensors made from it are, and share its large arrays)."""
    fine, stencil = _stencil_pattern(nx, ny)
    levels, a = [], fine
    while nx * ny > coarsest and max(nx, ny) > 1:
        p = sp.kron(_prolong_1d(nx), _prolong_1d(ny), format="csr")
        coarse, g = _galerkin_map(a, p, (ny + 1) // 2)
        rows = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))
        levels.append(dict(a=a, rows=rows, diag=np.flatnonzero(rows == a.indices), p=p, r=p.T.tocsr(), g=g))
        a, nx, ny = coarse, (nx + 1) // 2, (ny + 1) // 2
    rows = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))
    return dict(stencil=stencil, levels=levels,
                coarse=dict(n=a.shape[0], rows=rows, indices=a.indices, diag=np.flatnonzero(rows == a.indices)))


@lru_cache(maxsize=8)
def _device_hierarchy(nx: int, ny: int, coarsest: int, dtype: torch.dtype, device: str) -> dict:
    """The shape-only tensors of `_hierarchy` on one device and dtype."""
    h = _hierarchy(nx, ny, coarsest)
    t = lambda x, dt=torch.int32: torch.as_tensor(x, dtype=dt, device=device)  # int32 CSR: faster sparse mat-vecs
    csr = lambda m: _torch_csr(t(m.indptr), t(m.indices), t(m.data, dtype), m.shape[1])
    levels = [dict(indptr=t(lv["a"].indptr), indices=t(lv["a"].indices), rows=t(lv["rows"]), diag=t(lv["diag"]), p=csr(lv["p"]), r=csr(lv["r"]),
                   g=csr(lv["g"])) for lv in h["levels"]]
    c = h["coarse"]
    coarse = dict(n=c["n"], rows=t(c["rows"]), indices=t(c["indices"]), diag=t(c["diag"]),
                  pos=t(c["rows"] * c["n"] + c["indices"], torch.long))
    return dict(slots=t(h["stencil"][0]), sign=t(h["stencil"][1], dtype), levels=levels, coarse=coarse)


class Multigrid:
    """mgpcg: one V-cycle of geometric multigrid per PCG iteration."""

    name = "mgpcg"

    def __init__(self, config: MultigridConfig | None = None) -> None:
        self.config = config or MultigridConfig()

    def setup(self, system: PoissonSystem) -> None:
        cfg = self.config
        h = _device_hierarchy(system.nx, system.ny, cfg.coarsest, system.dtype, str(system.device))
        flat = torch.cat([system.diag.reshape(-1), system.cx.reshape(-1), system.cy.reshape(-1)])
        pick = lambda v, index: v.index_select(0, index)     # int32 indices: several times faster than v[index]
        vals = pick(flat, h["slots"]) * h["sign"]
        live = (~system.decoupled).reshape(-1).to(system.dtype)
        tol = EMPTY_TOL * torch.finfo(system.dtype).eps
        self.levels = []
        for lv, below in zip(h["levels"], h["levels"][1:] + [h["coarse"]]):
            d = pick(vals, lv["diag"])
            w = torch.where(d > 0, cfg.omega / d, torch.zeros_like(d))     # an empty coarse row stays 0
            smooth = -pick(w, lv["rows"]) * vals
            smooth[lv["diag"]] += 1.0
            csr = lambda v: _torch_csr(lv["indptr"], lv["indices"], v, len(lv["indptr"]) - 1)
            self.levels.append(dict(a=csr(vals), s=csr(smooth), w=w, p=lv["p"], r=lv["r"], live=live))
            coarse = lv["g"] @ (vals * pick(live, lv["rows"]) * pick(live, lv["indices"]))
            # a coarse row is empty when its energy is round-off of the fine entries it sums
            live = (pick(coarse, below["diag"]) > tol * (lv["r"] @ (live * d))).to(system.dtype)
            vals = coarse * pick(live, below["rows"]) * pick(live, below["indices"])
        nc = h["coarse"]["n"]
        dense = torch.zeros(nc * nc, dtype=torch.float64, device=system.device)
        dense[h["coarse"]["pos"]] = vals.double()
        # The pseudo-inverse equals the inverse on a regular coarse matrix and keeps a
        # singular (all-Neumann) one, or its empty rows, from amplifying its null space.
        self.coarse_inv = torch.linalg.pinv(dense.view(nc, nc), hermitian=True, rtol=1e-12).to(system.dtype)

    def apply(self, r: torch.Tensor) -> torch.Tensor:
        return self._cycle(0, r)

    def _cycle(self, level: int, b: torch.Tensor) -> torch.Tensor:
        if level == len(self.levels):
            return self.coarse_inv @ b
        lv = self.levels[level]
        c = lv["w"] * b
        x = c
        for _ in range(self.config.smooth_steps - 1):
            x = c + lv["s"] @ x
        residual = b - lv["a"] @ x
        x = x + lv["live"] * (lv["p"] @ self._cycle(level + 1, lv["r"] @ (lv["live"] * residual)))
        for _ in range(self.config.smooth_steps):
            x = c + lv["s"] @ x
        return x
