"""The HTP operator: an SPD approximate inverse in hierarchical (H-matrix) form, and its apply.

    M = G G^T + eps I,        G = [ B  |  W ]

* B (leaf blocks): dense L x L blocks on the diagonal, B_i = L_i^-T + Q_i K_i Q_i^T: the leaf's
  block-Jacobi factor plus the network's correction K_i in the harmonic basis Q_i (analytic.py).
* W (far field): for every inner cluster c at every depth, r columns W_c = V_c F_c supported on c,
  with V_c = [Q_i C_i]_{i in c} the cluster's coarse functions (coarse.py) and F_c = sqrt(w) R_c T_c:
  R_c the Galerkin factor, T_c the network's r x r correction (I when untrained). Each W_c W_c^T
  couples c's two children by a rank-r block: the weak-admissibility pattern, one rank-r far-field
  factor per cluster and level.

SPD for every network output: G G^T is positive semidefinite for any G, and eps > 0 makes M
positive definite. Padding cells (see partition.py) carry zeros in Q, so M on the real cells is a
principal submatrix of an SPD matrix.

Applying M: the dense per-leaf operators [A_ii^-1 | Q | L^-T Q] depend only on the leaf's stencil,
so they are built once per distinct leaf and applied by one batched GEMM over chunks of leaves that
share one (see leaf_chunks); K enters as an nb x nb mixing of the basis coordinates and the coarse
coefficients C are cached per grid shape, so one apply is two batched GEMMs over the chunks, a few
over the leaves (row vectors times per-leaf matrices), one over the clusters (F_c F_c^T), and one
reshaped sum per depth for the clusters' coarse coordinates (no loop over clusters):
O(N (L + nb) + N/L * nb r log(N/L)) flops.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..compiled import mark_dynamic
from .coarse import CoarseSpace
from .partition import Partition

CHUNK = 16   # leaves per chunk of the apply's leaf-block GEMMs, see leaf_chunks


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


@dataclass
class HMatrix:
    """M = G G^T + eps I with G = [B | W], see the module docstring. Vectors in cell order.

    `__post_init__` multiplies out, once per system, what the apply needs, so an apply is a fixed
    handful of batched products and one reshaped sum per depth, whatever the network predicted.
    """

    space: CoarseSpace
    leaf_operators: torch.Tensor    # (u, L, L + 2 nb) [A_ii^-1 | Q | L^-T Q] per distinct leaf
    distinct_index: torch.Tensor    # (nl,) distinct leaf of every leaf
    basis: torch.Tensor             # (nl, L, nb) Q
    leaf_corr: torch.Tensor         # (nl, nb, nb) K: B's leaf blocks are L^-T + Q K Q^T
    coarse_factor: list[torch.Tensor]  # per depth (2^d, r, r): F_c, so W_c = V_c F_c
    eps: float

    def __post_init__(self) -> None:
        """Per-leaf operators, all acting on row vectors (x_i^T @ op).

        With P = L^-T Q, S = Q^T Q and B = L^-T + Q K Q^T:
        x^T B B^T = x^T A_ii^-1 + (x^T P K^T + x^T Q K S K^T) Q^T + x^T Q K P^T, so no L x L product is
        formed per leaf: `head` holds the distinct leaves' [A_ii^-1 + eps I | Q | P] per chunk (see
        leaf_chunks), `tail` their [Q | P]^T, and `mix` (2 nb x 2 nb per leaf) maps the row
        [x^T Q, x^T P] to the coefficients on Q^T and P^T. `coarse_inverse` holds F_c F_c^T of every
        inner cluster (depth-major). `cell_slot` is every cell's position in the chunk layout.
        """
        q, corr = self.basis, self.leaf_corr                                                  # Q, K
        size, nb = q.shape[1:]
        operators = self.leaf_operators.clone()
        operators[..., :size].diagonal(dim1=1, dim2=2).add_(self.eps)
        slot, block = leaf_chunks(self.distinct_index)
        self.head = operators.index_select(0, block)                                          # (nc, L, L+2nb)
        self.tail = operators[..., size:].transpose(1, 2).contiguous().index_select(0, block)   # (nc, 2nb, L)
        self.slot = slot
        for t in (self.head, self.tail):     # the chunk count varies with the system: one compiled program serves all
            mark_dynamic(t, 0)
        pos = self.part.cell_position().to(slot.device)
        self.cell_slot = slot[pos // size] * size + pos % size
        corr_t = corr.transpose(1, 2)
        self.mix = torch.cat([torch.cat([corr @ (q.transpose(1, 2) @ q) @ corr_t, corr], -1),  # rows: x^T Q,
                              torch.cat([corr_t, torch.zeros_like(corr)], -1)], 1)             #       x^T P
        r = self.space.rank
        self.prolongation = self.space.stacked(q.dtype, q.device)                        # (nl, nb, depth r)
        f = torch.cat(self.coarse_factor) if self.coarse_factor else q.new_zeros(0, r, r)
        self.coarse_inverse = f @ f.transpose(1, 2)

    @property
    def part(self) -> Partition:
        return self.space.part

    @property
    def dtype(self) -> torch.dtype:
        return self.basis.dtype

    def _coarse(self, y: torch.Tensor) -> torch.Tensor:
        """W W^T on basis coordinates: y (nl, m, nb) -> (nl, m, nb). The clusters of a depth are
        contiguous, equal slices of the leaves (partition.py), so their coarse coordinates are one
        reshaped sum per depth and spreading back is a broadcast: a fixed sequence of dense
        reductions, no index lists, and no cancellation (a prefix sum's differences lose float32
        digits over a thousand leaves)."""
        nl, m, _ = y.shape
        depth = self.part.depth
        if not depth:
            return torch.zeros_like(y)
        r = self.space.rank
        t = (y @ self.prolongation).view(nl, m, depth, r)
        sums = torch.cat([t[:, :, d].reshape(1 << d, nl >> d, m, r).sum(1) for d in range(depth)])  # (clusters, m, r)
        c = _rows_times(sums, self.coarse_inverse)
        first = [(1 << d) - 1 for d in range(depth)]
        u = torch.stack([c[f:2 * f + 1, None].expand(f + 1, nl >> d, m, r).reshape(nl, m, r)
                         for d, f in enumerate(first)], 2)                                   # (nl, m, depth, r)
        return u.reshape(nl, m, -1) @ self.prolongation.transpose(1, 2)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """M v for v shaped (n,) or (m, n) in cell order, in the operator's dtype.

        The m vectors are scattered into the chunk layout (rows of leaves, each row the leaf's cells);
        with y = Q^T x per leaf, G G^T x = B B^T x + Q (W W^T)_basis y, B B^T x written on A^-1, Q and P.
        """
        flat = v.reshape(-1, self.part.n).to(self.dtype)
        m, nc, size, nb = flat.shape[0], self.head.shape[0], self.head.shape[1], self.basis.shape[-1]
        rows = nc * CHUNK
        x = flat.new_zeros(rows * size, m).index_copy_(0, self.cell_slot, flat.T)
        x = x.view(rows, size, m).transpose(1, 2).reshape(nc, CHUNK * m, size)
        h = (x @ self.head).view(rows, m, -1)
        coords = h[..., size:].index_select(0, self.slot)                          # (nl, m, 2nb): [x^T Q, x^T P]
        on_q, on_p = _rows_times(coords, self.mix).split(nb, -1)
        coef = torch.cat([on_q + self._coarse(coords[..., :nb]), on_p], -1)
        coef = flat.new_zeros(rows, m, 2 * nb).index_copy_(0, self.slot, coef).view(nc, CHUNK * m, 2 * nb)
        out = torch.baddbmm(h[..., :size].reshape(nc, CHUNK * m, size), coef, self.tail)
        out = out.view(rows, m, size).transpose(1, 2).reshape(rows * size, m).index_select(0, self.cell_slot)
        return out.T.reshape(v.shape)

    def to_dense(self) -> torch.Tensor:
        """M as a dense (n, n) matrix, for inspecting it (spectrum, condition number of M A) at small n."""
        n = self.part.n
        return self.apply(torch.eye(n, dtype=self.dtype, device=self.basis.device)).T
