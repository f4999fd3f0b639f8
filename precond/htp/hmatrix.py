"""The HTP operator: an SPD approximate inverse built from H-matrix blocks, applied as a symmetric sweep.

The blocks are those of a weak-admissibility H-matrix on the cluster tree:

* leaf blocks D_i (dense, L x L): s_i (B_i B_i^T + eps A_ii^-1) with B_i = L_i^-T + Q_i K_i Q_i^T, the
  leaf's block-Jacobi factor plus the network's correction K_i in the harmonic basis Q_i (analytic.py);
* far-field factors (rank r, one per inner cluster c at every depth): S_c = R_c T_c T_c^T R_c^T on the
  cluster's coarse coordinates, with V_c = [Q_i C_i]_{i in c} its coarse functions (coarse.py), R_c the
  Galerkin factor (R_c R_c^T = (V_c^T A V_c)^-1) and T_c = I + X_c the network's correction.

Summed, these blocks make an additive multilevel preconditioner, whose PCG iterations grow with N
(each level corrects on its own, and the levels' errors add). Here they are composed
multiplicatively, as a V-cycle composes smoother and coarse grids: each step corrects the residual
the steps before it left,

    x  = D r                                    (the leaves)
    x += Q Z Q^T (r - A x)                      (the clusters: Z, a sweep on the leaves' basis coordinates)
    x += D (r - A x)                            (the leaves again)

where Z sweeps the depths from the leaves' parents to the root and back, z += V_d S_d V_d^T (y - A_Q z)
on the coordinates y = Q^T (r - A x), with A_Q = Q^T A Q (the basis-level coupling of a leaf with its
four neighbours) and all clusters of a depth at once. The sweep starts and ends with the leaves' own
coordinates, z += S_L (y - A_Q z) with S_L the block-diagonal Galerkin inverse (Q_i^T A_ii Q_i)^-1: a
smoothing step on the coordinates at the cost of an nb x nb block per leaf, which takes a closed
256x256 dam break from 12 to 10 PCG iterations at ratio 1 and from 13 to 11 at 1,000:1. The coarse
functions live in span(Q), so the sweep never touches a cell: its cost is O(N/L * nb (nb + r)) per
depth. The same blocks summed, not swept, take 43 PCG iterations on a 256x256 dam break at 1,000:1.

SPD for every network output. Written out, M = 2D - DAD + (I - DA) M_c (I - AD) with
M_c = Q Z Q^T, which is SPD whenever D is SPD with lambda_max(D A) < 2 and M_c is positive
semidefinite, whatever A is (also singular: the closed box). Both are enforced here:

* s_i = smoothing / (lambda_max(B_i^T A_ii B_i) + eps), so D_i <= smoothing A_ii^-1, and block
  Jacobi on leaves that couple only across their four sides (a bipartite graph of blocks) has
  lambda_max(D_A^-1 A) < 2. lambda_max comes from a 2nb x 2nb eigenproblem per leaf (leaf_bound).
* Z, a palindromic product of steps z += S_d (y - A_Q z), is positive semidefinite when every step
  has lambda_max(S_d A_Q) <= 2. With exact Galerkin blocks on the clusters of a depth, or on the
  leaves (again bipartite grids of blocks), lambda_max < 2; T_c scaled to spectral norm at most 1
  keeps it there.

Solid cells and padding carry zeros in Q and identity rows in A_ii: M keeps them decoupled.

The dense per-leaf operators [A_ii^-1 | Q | L^-T Q] depend only on the leaf's stencil, so they are
built once per distinct leaf and applied by one batched GEMM over chunks of leaves that share one
(see leaf_chunks).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..compiled import mark_dynamic
from .coarse import CoarseSpace
from .partition import Partition

CHUNK = 16   # leaves per chunk of the leaf-block GEMMs, see leaf_chunks


def leaf_chunks(distinct_index: torch.Tensor, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Group leaves that share a distinct leaf into chunks of `chunk` rows: (slot (nl,), block (nc,)).

    Leaf i goes to row slot[i] of a (nc * chunk)-row layout whose chunk c holds only leaves of
    distinct leaf block[c] (unused rows stay zero). One bmm over the chunks then reads each distinct
    leaf's dense operator once per chunk instead of once per leaf: a dam break at 65,536 cells has
    154 distinct leaves among 1,024 (9 at ratio 1), so the apply streams about 205 (73) operators of
    20 KB instead of 1,024, and its working set fits the CPU cache."""
    index = distinct_index
    counts = torch.bincount(index)
    per = (counts + chunk - 1) // chunk
    first = per.cumsum(0) - per
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    within = torch.arange(index.numel(), device=index.device) - (counts.cumsum(0) - counts)[sorted_index]
    slot = torch.empty_like(index)
    slot[order] = (first[sorted_index] + within // chunk) * chunk + within % chunk
    return slot, torch.repeat_interleave(torch.arange(counts.numel(), device=index.device), per)


def _rows_times(x: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    """x (b, m, i) @ mats (b, i, j) for the small blocks of the apply. On CPU, bmm's per-matrix calls
    dominate for one row per block (the PCG apply): a broadcast product and sum takes half the time
    there (16 x 16 blocks, 128 and 1,024 of them), and a third longer than bmm for 8 rows (training)."""
    if x.shape[1] == 1:
        return (x.transpose(1, 2) * mats).sum(1, keepdim=True)
    return x @ mats


def leaf_bound(corr: torch.Tensor, gram_root: torch.Tensor) -> torch.Tensor:
    """(nl,) lambda_max(B_i^T A_ii B_i) for B_i = L_i^-T + Q_i K_i Q_i^T, in float64.

    L^T B = I + U K V^T with U = L^T Q, V = Q, and (L^T B)^T (L^T B) = I + Z H Z^T with Z = [U V],
    H = [[0, K], [K^T, K^T U^T U K]]: its eigenvalues other than 1 are 1 + eig(G^1/2 H G^1/2), G = Z^T Z
    (gram_root: G^1/2 per leaf, see analytic.py), a 2nb x 2nb problem instead of an L x L one."""
    k = corr.double()
    nb = k.shape[-1]
    uu = gram_root @ gram_root
    kuk = k.transpose(1, 2) @ uu[:, :nb, :nb] @ k
    h = torch.cat([torch.cat([torch.zeros_like(k), k], -1), torch.cat([k.transpose(1, 2), kuk], -1)], 1)
    top = torch.linalg.eigvalsh(gram_root @ h @ gram_root)[:, -1]
    return 1.0 + top.clamp_min(0.0)


def unit_bounded(t: torch.Tensor) -> torch.Tensor:
    """t (b, r, r) scaled to spectral norm at most 1 (unchanged where it already is)."""
    norm = torch.linalg.matrix_norm(t.double(), ord=2).to(t.dtype)
    return t / norm.clamp_min(1.0)[:, None, None]


@dataclass
class HMatrix:
    """M of the module docstring for one system. Vectors in cell order.

    `__post_init__` multiplies out, once per system, what the apply needs, so an apply is a fixed
    sequence of batched products (no data-dependent control flow: one compiled program per shape).
    """

    space: CoarseSpace
    stencil: torch.Tensor           # (6, nl, L) leaf-order stencil data (analytic.FIELDS), for A
    leaf_operators: torch.Tensor    # (u, L, L + 2 nb) [A_ii^-1 | Q | L^-T Q] per distinct leaf
    distinct_index: torch.Tensor    # (nl,) distinct leaf of every leaf
    basis: torch.Tensor             # (nl, L, nb) Q
    coupling: torch.Tensor          # (nl, 5, nb, nb) A_Q: Q_i^T A Q_j for the leaf itself and its W, E, S, N
    gram_root: torch.Tensor         # (nl, 2 nb, 2 nb) float64, see leaf_bound
    leaf_corr: torch.Tensor         # (nl, nb, nb) K
    galerkin: list[torch.Tensor]    # per depth (2^d, r, r): R_c
    leaf_galerkin: torch.Tensor     # (nl, nb, nb) R_i: R_i R_i^T = (Q_i^T A_ii Q_i)^-1, the leaf step S_L
    cluster_corr: list[torch.Tensor]  # per depth (2^d, r, r): T_c
    smoothing: float                # the leaves' damping, < 1 (module docstring)
    eps: float

    def __post_init__(self) -> None:
        """Per-leaf operators, all acting on row vectors (x_i^T @ op).

        With P = L^-T Q, S = Q^T Q and B = L^-T + Q K Q^T:
        x^T B B^T = x^T A_ii^-1 + (x^T P K^T + x^T Q K S K^T) Q^T + x^T Q K P^T, so no L x L product is
        formed per leaf: `head` holds the distinct leaves' [(1 + eps) A_ii^-1 | Q | P] per chunk (see
        leaf_chunks), `tail` every leaf's [Q | P]^T, and `mix` (2 nb x 2 nb per leaf) maps the row
        [x^T Q, x^T P] to the coefficients on Q^T and P^T. `coarse_inverse` holds S_c of every cluster,
        `leaf_inverse` S_L.
        """
        q, corr = self.basis, self.leaf_corr                                                  # Q, K
        size, nb = q.shape[1:]
        operators = self.leaf_operators.clone()
        operators[..., :size] *= 1.0 + self.eps
        slot, block = leaf_chunks(self.distinct_index)
        self.head = operators.index_select(0, block)                                          # (nc, L, L+2nb)
        mark_dynamic(self.head, 0)     # the chunk count varies with the system: one compiled program serves all
        self.slot = slot
        self.tail = self.leaf_operators[..., size:].transpose(1, 2).index_select(0, self.distinct_index)
        corr_t = corr.transpose(1, 2)
        self.mix = torch.cat([torch.cat([corr @ (q.transpose(1, 2) @ q) @ corr_t, corr], -1),  # rows: x^T Q,
                              torch.cat([corr_t, torch.zeros_like(corr)], -1)], 1)             #       x^T P
        bound = leaf_bound(corr, self.gram_root) + self.eps
        self.leaf_scale = (self.smoothing / bound).to(q.dtype)[:, None, None]
        part = self.part
        self.cell_position = part.cell_position().to(q.device)
        nbrs = part.leaf_neighbours().to(q.device)
        self.nbrs = torch.where(nbrs >= 0, nbrs, part.n_leaves)          # (4, nl); n_leaves: a zero leaf
        self.near = torch.cat([torch.arange(part.n_leaves, device=q.device)[None], self.nbrs])
        self.coupling_rows = self.coupling.transpose(2, 3).reshape(part.n_leaves, 5 * nb, nb)
        self.prolongation = self.space.prolongation.to(q.device, q.dtype)                    # (depth, nl, nb, r)
        self.coarse_inverse = []
        for r, t in zip(self.galerkin, self.cluster_corr):
            f = r @ unit_bounded(t)
            self.coarse_inverse.append(f @ f.transpose(1, 2))
        self.leaf_inverse = self.leaf_galerkin @ self.leaf_galerkin.transpose(1, 2)

    @property
    def part(self) -> Partition:
        return self.space.part

    @property
    def dtype(self) -> torch.dtype:
        return self.basis.dtype

    def _smooth(self, v: torch.Tensor) -> torch.Tensor:
        """D v for v (nl, m, L) in leaf order."""
        nl, m, size = v.shape
        nc, nb = self.head.shape[0], self.basis.shape[-1]
        x = v.new_zeros(nc * CHUNK, m, size).index_copy_(0, self.slot, v).view(nc, CHUNK * m, size)
        h = (x @ self.head).view(nc * CHUNK, m, -1).index_select(0, self.slot)        # (nl, m, L + 2nb)
        coef = _rows_times(h[..., size:], self.mix)
        return (h[..., :size] + _rows_times(coef, self.tail)) * self.leaf_scale

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        """A v for v (nl, m, L) in leaf order: the 5-point stencil inside each tile, the neighbour
        leaves' facing rows and columns across its sides."""
        part = self.part
        nl, m, _ = v.shape
        x = v.view(nl, m, part.tx, part.ty)
        pad = torch.cat([x, x.new_zeros(1, m, part.tx, part.ty)])
        west, east = pad[self.nbrs[0], :, -1:], pad[self.nbrs[1], :, :1]
        south, north = pad[self.nbrs[2], :, :, -1:], pad[self.nbrs[3], :, :, :1]
        diag, c_east, c_west, c_north, c_south, _ = (f.view(nl, 1, part.tx, part.ty) for f in self.stencil)
        out = (diag * x - c_east * torch.cat([x[:, :, 1:], east], 2) - c_west * torch.cat([west, x[:, :, :-1]], 2)
               - c_north * torch.cat([x[..., 1:], north], 3) - c_south * torch.cat([south, x[..., :-1]], 3))
        return out.view(nl, m, -1)

    def _couple(self, z: torch.Tensor) -> torch.Tensor:
        """A_Q z for basis coordinates z (nl, m, nb)."""
        nl, m, nb = z.shape
        pad = torch.cat([z, z.new_zeros(1, m, nb)])
        near = pad[self.near].permute(1, 2, 0, 3).reshape(nl, m, 5 * nb)
        return _rows_times(near, self.coupling_rows)

    def _sweep(self, y: torch.Tensor) -> torch.Tensor:
        """Z y for coordinates y (nl, m, nb): the leaves, the depths from the leaves' parents to the root
        and back, the leaves again."""
        depth, nl = self.part.depth, self.part.n_leaves
        m, r = y.shape[1], self.prolongation.shape[-1]
        z = _rows_times(y, self.leaf_inverse)
        res = y - self._couple(z)
        for d in [*range(depth - 1, 0, -1), *range(depth)]:
            c = self.prolongation[d]
            t = _rows_times(res, c).reshape(1 << d, nl >> d, m, r).sum(1)                 # (2^d, m, r)
            u = _rows_times(t, self.coarse_inverse[d])[:, None].expand(1 << d, nl >> d, m, r).reshape(nl, m, r)
            u = _rows_times(u, c.transpose(1, 2))
            z, res = z + u, res - self._couple(u)
        return z + _rows_times(res, self.leaf_inverse)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """M v for v shaped (n,) or (m, n) in cell order, in the operator's dtype."""
        part = self.part
        flat = v.reshape(-1, part.n).to(self.dtype)
        m, size = flat.shape[0], part.leaf_size
        r = flat.new_zeros(part.n_padded, m).index_copy_(0, self.cell_position, flat.T)
        r = r.view(part.n_leaves, size, m).transpose(1, 2)                             # (nl, m, L)
        x = self._smooth(r)
        if part.depth:
            y = _rows_times(r - self._matvec(x), self.basis)
            x = x + _rows_times(self._sweep(y), self.basis.transpose(1, 2))
        x = x + self._smooth(r - self._matvec(x))
        out = x.transpose(1, 2).reshape(part.n_padded, m).index_select(0, self.cell_position)
        return out.T.reshape(v.shape)

    def to_dense(self) -> torch.Tensor:
        """M as a dense (n, n) matrix, for inspecting it (spectrum, condition number of M A) at small n."""
        n = self.part.n
        return self.apply(torch.eye(n, dtype=self.dtype, device=self.basis.device)).T
