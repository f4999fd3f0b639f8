"""The Poisson system contract: a symmetric 5-point variable-coefficient Laplacian on a grid.

Cell (i, j) has i along x and j along y; the flat index is k = i * ny + j (C order of an
(nx, ny) array). Row k of A reads

    (A p)_k = diag_k p_k - cx[i-1,j] p[i-1,j] - cx[i,j] p[i+1,j] - cy[i,j-1] p[i,j-1] - cy[i,j] p[i,j+1]

with cx the coupling to the east neighbour (0 on the last column) and cy to the north
neighbour (0 on the top row). Dirichlet faces only add to diag. A connected component of
cells with no Dirichlet face makes A singular, with that component's indicator as a null
vector; `project` removes those null-space components so solvers work on the range of A.
Solid cells (obstacles) keep the grid's shape as identity rows: every face touching one has
coupling 0 and its diag is 1; `decoupled` marks them (and any other row without couplings).

A PoissonSystem is checked when it is made, in a few O(N) tensor operations: finite entries,
diag > 0, couplings >= 0 and diag >= the sum of a cell's couplings (weak diagonal dominance).
Symmetric by construction, such a matrix is positive definite, or semi-definite with exactly
the floating components' indicators as null space, which is what every solver here needs; any
other matrix is a ValueError naming the first offending cell. `check_vector` is the same gate
for right-hand sides and initial guesses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
from scipy import ndimage
import torch

from .compiled import mark_dynamic

# A cell is grounded (touches a Dirichlet face) when its Dirichlet weight diag - sum(couplings)
# exceeds this fraction of max |diag|: far above the round-off of that difference.
NULL_TOL = 1e-10
# Weak diagonal dominance holds when diag - sum(couplings) >= -DOMINANCE_EPS * eps(dtype) * diag:
# the round-off of that difference (four additions, or float32 copies of float64 values).
DOMINANCE_EPS = 64
# Up to this many floating components, `project` takes their means with one small dense product; more
# (a porous domain's sealed pockets) by a scatter over component labels.
DENSE_NULL = 4


def check_grid(grid: object, name: str = "grid") -> tuple[int, int]:
    """(nx, ny) as Python ints from a pair of integers >= 1; anything else names `name`."""
    if not isinstance(grid, (tuple, list)) or len(grid) != 2:
        raise TypeError(f"{name} must be a pair of integers (nx, ny), got {grid!r}")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in grid):
        raise TypeError(f"{name} must be two integers (nx, ny), got {tuple(grid)!r}")
    nx, ny = int(grid[0]), int(grid[1])
    if nx < 1 or ny < 1:
        raise ValueError(f"{name} must be at least 1x1, got {nx}x{ny}")
    return nx, ny


def _marked(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors, their first dimension (the floating-component count, which varies from system to system)
    marked dynamic: one compiled PCG chunk serves all counts."""
    for t in tensors:
        mark_dynamic(t, 0)
    return tensors


@lru_cache(maxsize=16)
def stencil_pattern(nx: int, ny: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A's 5-point pattern on an (nx, ny) grid as COO (rows, cols, slot, sign), entries grouped as
    self, east, west, north, south: entry e is sign[e] * flat[slot[e]] with flat = [diag | cx | cy]
    (each flattened in cell order), so A's values are one gather of the stencil arrays."""
    n = nx * ny
    k = np.arange(n).reshape(nx, ny)
    rows = np.concatenate([k.ravel(), k[:-1].ravel(), k[1:].ravel(), k[:, :-1].ravel(), k[:, 1:].ravel()])
    cols = np.concatenate([k.ravel(), k[1:].ravel(), k[:-1].ravel(), k[:, 1:].ravel(), k[:, :-1].ravel()])
    # east and west of a pair both read cx of its western cell, north and south cy of its southern one
    slot = np.concatenate([k.ravel(), n + k[:-1].ravel(), n + k[:-1].ravel(),
                           2 * n + k[:, :-1].ravel(), 2 * n + k[:, :-1].ravel()])
    sign = np.concatenate([np.ones(n), -np.ones(len(rows) - n)])
    for a in (rows, cols, slot, sign):
        a.flags.writeable = False
    return rows, cols, slot, sign


@dataclass
class PoissonSystem:
    """Stencil arrays of A, each shaped (nx, ny), as torch tensors on one device."""

    diag: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    _null: tuple[torch.Tensor, torch.Tensor | None] | None = field(default=None, init=False, repr=False)
    _decoupled: torch.Tensor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self._check_arrays()
        self.cx = self.cx.clone()
        self.cy = self.cy.clone()
        self.cx[-1, :] = 0.0
        self.cy[:, -1] = 0.0
        dirichlet = self.dirichlet()
        self._check_spd(dirichlet)
        self._null = self._null_space(dirichlet)

    # ------------------------------------------------------------------ checks
    def _check_arrays(self) -> None:
        arrays = {"diag": self.diag, "cx": self.cx, "cy": self.cy}
        for name, a in arrays.items():
            if not isinstance(a, torch.Tensor):
                raise TypeError(f"{name} must be a torch tensor, got {type(a).__name__}")
            if not a.is_floating_point():
                raise TypeError(f"{name} must be a real floating-point tensor, got {a.dtype}")
        if len({a.dtype for a in arrays.values()}) > 1 or len({a.device for a in arrays.values()}) > 1:
            raise TypeError("diag, cx, cy must share one dtype and device; got "
                            + ", ".join(f"{a.dtype} on {a.device}" for a in arrays.values()))
        if not (self.diag.shape == self.cx.shape == self.cy.shape) or self.diag.dim() != 2:
            raise ValueError(
                f"diag, cx, cy must share one (nx, ny) shape; got {tuple(self.diag.shape)}, "
                f"{tuple(self.cx.shape)}, {tuple(self.cy.shape)}")
        if self.diag.numel() == 0:
            raise ValueError(f"the grid must be at least 1x1, got {self.nx}x{self.ny}")

    def _check_spd(self, dirichlet: torch.Tensor) -> None:
        """One fused test on the fast path; the first offending cell is looked for only on failure."""
        slack = DOMINANCE_EPS * torch.finfo(self.dtype).eps
        # any NaN or inf in diag, cx, cy reaches dirichlet; a NaN low fails both comparisons
        lows = torch.stack([self.diag.min(), self.cx.min(), self.cy.min(), (dirichlet + slack * self.diag).min()])
        diag_low, *others = lows.tolist()
        if bool(torch.isfinite(dirichlet).all()) and diag_low > 0 and min(others) >= 0:
            return
        rules = [("diag", self.diag, ~torch.isfinite(self.diag), "finite entries"),
                 ("cx", self.cx, ~torch.isfinite(self.cx), "finite entries"),
                 ("cy", self.cy, ~torch.isfinite(self.cy), "finite entries"),
                 ("diag", self.diag, ~(self.diag > 0), "diag > 0 (a cell without an unknown is an identity row)"),
                 ("cx", self.cx, self.cx < 0, "couplings cx >= 0 (off-diagonal entries <= 0)"),
                 ("cy", self.cy, self.cy < 0, "couplings cy >= 0 (off-diagonal entries <= 0)"),
                 ("diag - couplings", dirichlet, dirichlet < -slack * self.diag,
                  "diag >= the sum of the cell's couplings (weak diagonal dominance)")]
        for name, values, bad, expected in rules:
            if bool(bad.any()):
                k = int(torch.nonzero(bad.reshape(-1))[0])
                i, j = divmod(k, self.ny)
                raise ValueError(f"A is not a symmetric positive (semi-)definite 5-point matrix: {name} at cell "
                                 f"({i}, {j}) (row {k}) is {float(values.reshape(-1)[k]):.6g}; expected {expected}")

    def check_vector(self, v: object, name: str) -> torch.Tensor:
        """v as a flat vector of this system's n entries: a real, finite torch tensor on its device."""
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(v).__name__}")
        if v.is_complex() or v.dtype == torch.bool:
            raise TypeError(f"{name} must be real, got {v.dtype}")
        if v.numel() != self.n:
            raise ValueError(f"{name} has {v.numel()} entries but the {self.nx}x{self.ny} grid has {self.n} cells")
        if v.device != self.device:
            raise ValueError(f"{name} is on {v.device} but the system is on {self.device}")
        v = v.reshape(-1)
        if not bool(torch.isfinite(v).all()):
            k = int(torch.nonzero(~torch.isfinite(v))[0])
            raise ValueError(f"{name} is not finite: entry {k} is {float(v[k])}; expected finite values")
        return v

    # ------------------------------------------------------------------ shape
    @property
    def shape(self) -> tuple[int, int]:
        return int(self.diag.shape[0]), int(self.diag.shape[1])

    @property
    def nx(self) -> int:
        return self.shape[0]

    @property
    def ny(self) -> int:
        return self.shape[1]

    @property
    def n(self) -> int:
        return self.nx * self.ny

    @property
    def device(self) -> torch.device:
        return self.diag.device

    @property
    def dtype(self) -> torch.dtype:
        return self.diag.dtype

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "PoissonSystem":
        kw = dict(device=device, dtype=dtype)
        return PoissonSystem(self.diag.to(**kw), self.cx.to(**kw), self.cy.to(**kw))

    # ------------------------------------------------------------------ stencil
    @property
    def west(self) -> torch.Tensor:
        """(nx, ny) coupling to the west neighbour: cx shifted one column east, 0 on the first column."""
        w = torch.zeros_like(self.cx)
        w[1:] = self.cx[:-1]
        return w

    @property
    def south(self) -> torch.Tensor:
        """(nx, ny) coupling to the south neighbour: cy shifted one row north, 0 on the bottom row."""
        s = torch.zeros_like(self.cy)
        s[:, 1:] = self.cy[:, :-1]
        return s

    # ------------------------------------------------------------------ operator
    def matvec(self, p: torch.Tensor) -> torch.Tensor:
        """A @ p for a flat vector p of length n (or a batch shaped (..., n))."""
        batch = p.shape[:-1]
        q = p.reshape(*batch, self.nx, self.ny)
        out = self.diag * q
        east = self.cx[:-1] * q[..., 1:, :]
        west = self.cx[:-1] * q[..., :-1, :]
        north = self.cy[:, :-1] * q[..., :, 1:]
        south = self.cy[:, :-1] * q[..., :, :-1]
        out[..., :-1, :] -= east
        out[..., 1:, :] -= west
        out[..., :, :-1] -= north
        out[..., :, 1:] -= south
        return out.reshape(*batch, self.n)

    @property
    def decoupled(self) -> torch.Tensor:
        """(nx, ny) bool: cells whose row has no coupling, each its own 1 x 1 block of A. These are
        solid cells (identity rows) and fluid cells walled in on all four sides; solvers keep them
        out of coarse spaces, where their diagonal would stand for the cells they do not couple to."""
        if self._decoupled is None:
            self._decoupled = (self.cx == 0) & (self.west == 0) & (self.cy == 0) & (self.south == 0)
        return self._decoupled

    def dirichlet(self) -> torch.Tensor:
        """diag minus the sum of the couplings: each cell's Dirichlet (or identity) weight."""
        return self.diag - self.cx - self.west - self.cy - self.south

    # ------------------------------------------------------------------ null space
    def _null_space(self, dirichlet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The floating components (no Dirichlet weight), or None if A is regular, as (cells, counts): up to
        DENSE_NULL components their indicators, a dense (m, n) 0/1 tensor, more each cell's component label
        with grounded cells in a last dummy bucket; counts: the components' cells (and the bucket's)."""
        grounded_cell = dirichlet.abs().reshape(-1) > NULL_TOL * self.diag.abs().max()
        if bool(grounded_cell.all()):
            return None
        if bool((self.cx[:-1] > 0).all()) and bool((self.cy[:, :-1] > 0).all()):
            # Every neighbour pair is coupled: one component, no graph search needed.
            if bool(grounded_cell.any()):
                return None
            return _marked(torch.ones(1, self.n, dtype=self.dtype, device=self.device),
                           torch.full((1,), float(self.n), dtype=self.dtype, device=self.device))
        ncomp, labels = self._components()
        labels_t = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        floating = torch.bincount(labels_t[grounded_cell], minlength=ncomp) == 0
        if not bool(floating.any()):
            return None
        # Map floating components to 0..m-1; grounded cells to m (a dummy bucket, never projected).
        m = int(floating.sum())
        remap = torch.full((floating.shape[0],), m, dtype=torch.long, device=self.device)
        remap[floating] = torch.arange(m, device=self.device)
        cell_label = remap[labels_t]
        counts = torch.bincount(cell_label, minlength=m + 1).to(self.dtype)
        if m <= DENSE_NULL:
            indicator = torch.zeros(m + 1, self.n, dtype=self.dtype, device=self.device)
            indicator[cell_label, torch.arange(self.n, device=self.device)] = 1.0
            return _marked(indicator[:m], counts[:m])
        mark_dynamic(counts, 0)
        return cell_label, counts

    def _components(self) -> tuple[int, np.ndarray]:
        """Connected components of A's graph: (count, a label per cell). Where every two neighbouring cells
        that are not decoupled are coupled (the simulator's systems, solids or not), they are the
        4-connected regions of those cells, labelled on the grid; the decoupled cells, grounded each by
        its own diagonal, share label 0. Any other matrix takes a graph search."""
        live = ~self.decoupled
        gap_x = live[:-1] & live[1:] & (self.cx[:-1] == 0)
        gap_y = live[:, :-1] & live[:, 1:] & (self.cy[:, :-1] == 0)
        if bool(gap_x.any()) or bool(gap_y.any()):
            return csgraph.connected_components(self._graph(), directed=False)
        labels, regions = ndimage.label(live.cpu().numpy())
        return regions + 1, labels.reshape(-1)

    @property
    def singular(self) -> bool:
        return self._null is not None

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """Remove the mean of v over every floating component (identity when A is regular)."""
        if self._null is None:
            return v
        cells, counts = self._null
        if cells.dim() == 2:
            cells = cells.to(v.dtype)  # the system's own dtype: no copy
            return v - ((cells @ v) / counts.to(v.dtype)) @ cells
        sums = torch.zeros(counts.shape[0], dtype=v.dtype, device=v.device)
        sums.index_add_(0, cells, v)
        means = sums / counts.to(v.dtype)
        means[-1] = 0.0
        return v - means[cells]

    def null_component(self, v: torch.Tensor) -> float:
        """||v - project(v)|| / ||v|| in float64: how far A x = v is from solvable (0 when A is regular)."""
        if self._null is None:
            return 0.0
        v = v.reshape(-1).to(torch.float64)
        norm = float(torch.linalg.vector_norm(v))
        return float(torch.linalg.vector_norm(v - self.project(v))) / norm if norm > 0 else 0.0

    # ------------------------------------------------------------------ sparse export / import
    def _graph(self) -> sp.csr_matrix:
        a = self.to_csr()
        a.setdiag(0)
        a.eliminate_zeros()
        return a

    def to_csr(self) -> sp.csr_matrix:
        """A as scipy CSR in the cell order k = i * ny + j."""
        rows, cols, slot, sign = stencil_pattern(*self.shape)
        flat = torch.cat([self.diag.reshape(-1), self.cx.reshape(-1), self.cy.reshape(-1)])
        vals = flat.detach().cpu().double().numpy()[slot] * sign
        a = sp.coo_matrix((vals, (rows, cols)), shape=(self.n, self.n)).tocsr()
        a.eliminate_zeros()
        return a

    @classmethod
    def from_csr(cls, a: sp.spmatrix | np.ndarray, grid: tuple[int, int], device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64) -> "PoissonSystem":
        """Read a symmetric 5-point matrix (scipy sparse, or a dense 2-D numpy array) on an (nx, ny)
        grid; anything off the stencil, complex or not finite is an error."""
        nx, ny = check_grid(grid)
        n = nx * ny
        if not (sp.issparse(a) or (isinstance(a, np.ndarray) and a.ndim == 2)):
            raise TypeError(f"A must be a scipy sparse matrix or a 2-D numpy array, got {type(a).__name__}")
        if np.iscomplexobj(a) or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise TypeError(f"A must be real, got dtype {a.dtype}")
        if a.shape != (n, n):
            raise ValueError(f"matrix is {a.shape[0]}x{a.shape[1]} but grid {nx}x{ny} needs {n}x{n}")
        coo = sp.coo_matrix(a)
        r, c, v = coo.row, coo.col, coo.data.astype(np.float64)
        if not np.isfinite(v).all():
            k = int(np.flatnonzero(~np.isfinite(v))[0])
            raise ValueError(f"A is not finite: entry ({r[k]}, {c[k]}) is {v[k]}; expected finite values")
        keep = v != 0
        r, c, v = r[keep], c[keep], v[keep]
        d = np.zeros(n)
        cx = np.zeros((nx, ny))
        cy = np.zeros((nx, ny))
        on_diag = r == c
        np.add.at(d, r[on_diag], v[on_diag])
        ri, rj = np.divmod(r, ny)
        ci, cj = np.divmod(c, ny)
        east = (ci == ri + 1) & (cj == rj)
        north = (ci == ri) & (cj == rj + 1)
        west = (ci == ri - 1) & (cj == rj)
        south = (ci == ri) & (cj == rj - 1)
        bad = ~(on_diag | east | north | west | south)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"entry ({r[k]}, {c[k]}) is not on the 5-point stencil of a {nx}x{ny} grid "
                f"(order k = i*ny + j); expected only self, east, west, north, south couplings")
        np.add.at(cx, (ri[east], rj[east]), -v[east])
        np.add.at(cy, (ri[north], rj[north]), -v[north])
        cx_w = np.zeros((nx, ny))
        cy_s = np.zeros((nx, ny))
        np.add.at(cx_w, (ci[west], cj[west]), -v[west])
        np.add.at(cy_s, (ci[south], cj[south]), -v[south])
        scale = max(np.abs(v).max(initial=0.0), 1e-300)
        if np.abs(cx - cx_w).max() > 1e-12 * scale or np.abs(cy - cy_s).max() > 1e-12 * scale:
            raise ValueError("matrix is not symmetric: a PoissonSystem needs A == A.T")
        t = lambda x: torch.as_tensor(x, dtype=dtype, device=device)
        return cls(t(d.reshape(nx, ny)), t(cx), t(cy))
