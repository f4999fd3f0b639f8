"""The HTP operator: an SPD approximate inverse in hierarchical (H-matrix) form.

    M = G G^T + eps I,        G = [ B + F  |  W ]

* B (leaf blocks): dense L x L blocks on the diagonal. Their analytic part is the exact
  block-Jacobi factor L_i^-T (A_ii = L_i L_i^T, batched Cholesky), so B B^T alone is the
  block-Jacobi preconditioner; the network adds a low-rank correction.
* F (far field of G): for every pair of sibling clusters (c, c') at every depth, the block
  G[c, c'] = U_c V_{c'}^T of rank r (weak admissibility). U and V are written in a per-leaf
  basis Q_i of k "harmonic" vectors: Q_i = A_ii^-1 E_i, the leaf's responses to unit data on
  `segments` pieces of each of its four sides, weighted by the couplings across them. These
  are the shapes that off-diagonal blocks of A^-1 take inside a leaf (A-harmonic away from
  the sources), adapted to the density jumps, at k numbers per leaf instead of L.
* W (coarse columns): for every cluster c at every depth, r columns W_c = V_c R_c supported
  on c, with V_c = [Q_i C_i]_{i in c} a harmonic partition of unity over r equal sub-clusters
  (fixed coefficients C, see coarse_selection) and R_c R_c^T = w (V_c^T A_cc V_c)^-1, so
  W_c W_c^T is the Galerkin inverse of A on span(V_c) with weight w: an additive multilevel
  coarse correction whose scale is right for any density ratio by construction. Each W_c W_c^T
  couples c's two children by a rank-r block: the same weak-admissibility pattern. (Letting
  the network reshape V_c or set per-cluster weights lowered the probe loss but raised PCG
  iterations, so W stays analytic.)

SPD for every network output: G G^T is positive semidefinite for any G, and eps > 0 makes
M positive definite. Padding cells (see partition.py) carry zeros in Q, so M on the real
cells is a principal submatrix of an SPD matrix.

Applying M: the dense per-leaf operators [A_ii^-1 | Q | L^-T Q] depend only on the leaf's stencil,
so they are built once per distinct leaf and gathered; the network's leaf correction K enters as a
k x k mixing of the basis coordinates, and the far/coarse factors (with R_c R_c^T folded in) are
multiplied out once per system, so one apply is eight batched GEMMs over the leaves
(row vectors times per-leaf matrices) plus, per pass, one float64 prefix sum over the leaves whose
differences give every depth's sibling-half and cluster sums at once (no loop over depths or
clusters, no sparse indexing; the cell <-> leaf permutation is a transpose of the padded grid):
O(N (L + k) + N/L * k r log(N/L)) flops. The coarse Gram matrices come from the basis-level
coupling Q^T A Q (k x k blocks between neighbouring leaves), all depths at once.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from .partition import Partition
from .system import PoissonSystem

FIELDS = ("diag", "east", "west", "north", "south", "real")


def leaf_arrays(system: PoissonSystem, part: Partition) -> torch.Tensor:
    """Per-cell stencil data in leaf order: (6, n_leaves, L) for FIELDS (couplings to each side)."""
    west = torch.zeros_like(system.cx)
    south = torch.zeros_like(system.cy)
    west[1:] = system.cx[:-1]
    south[:, 1:] = system.cy[:, :-1]
    stack = torch.stack([system.diag, system.cx, west, system.cy, south, torch.ones_like(system.diag)])
    return part.to_leaf(stack.reshape(6, -1)).view(6, part.n_leaves, part.leaf_size)


def leaf_matrices(arrays: torch.Tensor, part: Partition, jitter: float) -> torch.Tensor:
    """A's diagonal blocks A_ii (n_leaves, L, L); padding and isolated cells get identity rows."""
    diag, east, _, north, _, real = arrays
    tx, ty, size = part.tx, part.ty, part.leaf_size
    d = torch.where((real > 0) & (diag > 0), diag, torch.ones_like(diag))
    a = torch.diag_embed(d * (1.0 + jitter))
    k = torch.arange(size, device=arrays.device)
    e = k[k // ty < tx - 1]
    n = k[k % ty < ty - 1]
    a[:, e, e + ty] = -east[:, e]
    a[:, e + ty, e] = -east[:, e]
    a[:, n, n + 1] = -north[:, n]
    a[:, n + 1, n] = -north[:, n]
    return a


def harmonic_sources(arrays: torch.Tensor, part: Partition, segments: int) -> torch.Tensor:
    """E_i: coupling-weighted indicators of `segments` pieces of each leaf side, (n_leaves, L, 4*segments)."""
    _, east, west, north, south, _ = arrays
    tx, ty = part.tx, part.ty
    if tx % segments or ty % segments:
        raise ValueError(f"{segments} segments do not divide the {tx}x{ty} leaf sides")
    k = torch.arange(part.leaf_size, device=arrays.device)
    li, lj = k // ty, k % ty
    sides = ((west, li == 0, lj, ty), (east, li == tx - 1, lj, ty),
             (south, lj == 0, li, tx), (north, lj == ty - 1, li, tx))
    cols = [coupling * (on_side & (along * segments // length == s))
            for coupling, on_side, along, length in sides for s in range(segments)]
    return torch.stack(cols, -1)


def basis_coupling(arrays: torch.Tensor, part: Partition, basis: torch.Tensor, sources: torch.Tensor,
                   jitter: float) -> torch.Tensor:
    """Q^T A Q in blocks between a leaf and itself and its four neighbours, (nl, 5, k, k): [i, 0] is
    Q_i^T A_ii Q_i, [i, 1 + s] is Q_i^T A_ij Q_j for the leaf j across side s (W, E, S, N; zero at the edge).

    Q = A_ii'^-1 E with A_ii' = A_ii + jitter diag(d), so A_ii Q = E - jitter d Q; across a side only
    the facing cells couple.
    """
    diag, east, west, north, south, real = arrays
    tx, ty = part.tx, part.ty
    d = torch.where((real > 0) & (diag > 0), diag, torch.ones_like(diag))
    own = basis.transpose(1, 2) @ (sources - jitter * d[..., None] * basis)
    k = torch.arange(part.leaf_size, device=arrays.device)
    li, lj = k // ty, k % ty
    wside, eside, sside, nside = k[li == 0], k[li == tx - 1], k[lj == 0], k[lj == ty - 1]
    nbrs = _leaf_neighbours(part).to(arrays.device)
    blocks = [own]
    for side, (coupling, cells, facing) in enumerate(((west, wside, eside), (east, eside, wside),
                                                      (south, sside, nside), (north, nside, sside))):
        there = basis[nbrs[side].clamp_min(0)][:, facing] * (nbrs[side] >= 0)[:, None, None]
        blocks.append(-(basis[:, cells] * coupling[:, cells, None]).transpose(1, 2) @ there)
    return torch.stack(blocks, 1)


@lru_cache(maxsize=64)
def _leaf_neighbours(part: Partition) -> torch.Tensor:
    """(4, nl) leaf index across each side (W, E, S, N, the basis' side order), -1 at the grid's edge."""
    coords = part.leaf_coords()
    tx, ty = part.tiles
    grid = torch.full((tx, ty), -1, dtype=torch.long)
    grid[coords[:, 0], coords[:, 1]] = torch.arange(part.n_leaves)
    out = torch.full((4, part.n_leaves), -1, dtype=torch.long)
    for side, (dx, dy) in enumerate(((-1, 0), (1, 0), (0, -1), (0, 1))):
        x, y = coords[:, 0] + dx, coords[:, 1] + dy
        ok = (x >= 0) & (x < tx) & (y >= 0) & (y < ty)
        out[side, ok] = grid[x[ok], y[ok]]
    return out


@lru_cache(maxsize=64)
def coarse_selection(part: Partition, k: int, rank: int) -> torch.Tensor:
    """Coarse coefficients (depth, n_leaves, k, rank) in the harmonic basis: the coarse functions.

    A depth-d cluster of at least `rank` leaves gets one function per sub-cluster of
    2^h / rank leaves: a harmonic partition of unity. On every leaf side the function takes the
    mean of its value on the two leaves sharing that side (1 inside its sub-cluster, 0 outside),
    and 0 on the cluster's own boundary; inside a leaf it is the A-harmonic interpolant of those
    side values (the basis is the leaf's harmonic responses). So the functions are continuous
    and vanish where the cluster is cut from the rest of A: low energy, no jumps for the
    Galerkin projection to pick rough error up from. A cluster of fewer than `rank` leaves
    splits each leaf's k responses into rank / 2^h groups (sides, then pairs of sides).
    """
    if rank & (rank - 1) or rank < 1:
        raise ValueError(f"rank must be a power of two, got {rank}")
    if k % 4:
        raise ValueError(f"the harmonic basis has 4 sides of k / 4 vectors, got k = {k}")
    nl, depth = part.n_leaves, part.depth
    sel = torch.zeros(depth, nl, k, rank)
    leaves = torch.arange(nl)
    nbrs = _leaf_neighbours(part)
    seg = k // 4
    for d in range(depth):
        size = 1 << (depth - d)
        pos = leaves % size
        if size >= rank:
            own = torch.zeros(nl, rank)
            own[leaves, pos * rank // size] = 1.0
            for side, nbr in enumerate(nbrs):
                inside = (nbr >= 0) & ((nbr >> (depth - d)) == (leaves >> (depth - d)))
                other = torch.zeros(nl, rank)
                other[inside] = own[nbr[inside]]
                value = torch.where((nbr >= 0)[:, None] & ~inside[:, None], 0.0, 0.5 * (own + other))
                sel[d, :, side * seg:(side + 1) * seg, :] = value[:, None, :]
        else:
            per = rank // size
            if per > k:
                raise ValueError(f"rank {rank} needs at least {per} basis vectors per leaf, have {k}")
            col = (pos * per)[:, None] + (torch.arange(k) * per // k)[None, :]
            sel[d, leaves[:, None], torch.arange(k)[None, :], col] = 1.0
    return sel


@dataclass
class Analytic:
    """Per-system quantities computed without the network: float64 factorisations, once per distinct
    leaf (pure-phase interiors repeat), cast to `dtype`."""

    arrays: torch.Tensor     # (6, nl, L) leaf-order stencil data, FIELDS
    factor: torch.Tensor     # (u, L, L) L^-T per distinct leaf (A_ii = L L^T): the block-Jacobi factor
    blocks: torch.Tensor     # (u, L, L + 2k) [A_ii^-1 | Q | L^-T Q] per distinct leaf
    index: torch.Tensor      # (nl,) distinct-leaf index of every leaf
    basis: torch.Tensor      # (nl, L, k) harmonic basis Q_i
    coupling: torch.Tensor   # (nl, 5, k, k) Q^T A Q blocks, see basis_coupling
    scale: torch.Tensor      # (nl,) mean(diag)^-1/2 over the leaf's real cells
    selection: torch.Tensor  # (depth, nl, k, r) initial coarse coefficients

    @classmethod
    def build(cls, system: PoissonSystem, part: Partition, segments: int, rank: int,
              dtype: torch.dtype = torch.float32, jitter: float = 1e-6) -> "Analytic":
        arrays = leaf_arrays(system.to(dtype=torch.float64), part)
        # leaves with identical stencil data (pure-phase interiors) share one factorisation
        unique, index = torch.unique(arrays.transpose(0, 1).reshape(part.n_leaves, -1), dim=0, return_inverse=True)
        unique = unique.view(-1, len(FIELDS), part.leaf_size).transpose(0, 1)
        chol = torch.linalg.cholesky(leaf_matrices(unique, part, jitter))
        eye = torch.eye(part.leaf_size, dtype=torch.float64, device=chol.device).expand_as(chol)
        factor = torch.linalg.solve_triangular(chol, eye, upper=False).transpose(1, 2)
        sources = harmonic_sources(unique, part, segments)
        basis = factor @ (factor.transpose(1, 2) @ sources)                        # Q = A_ii^-1 E
        blocks = torch.cat([factor @ factor.transpose(1, 2), basis, factor @ basis], -1)
        coupling = basis_coupling(arrays, part, basis[index], sources[index], jitter)
        real = arrays[5]
        mean_d = (arrays[0] * real).sum(1) / real.sum(1).clamp_min(1)
        scale = torch.where(mean_d > 0, mean_d, torch.ones_like(mean_d)).rsqrt()
        sel = coarse_selection(part, basis.shape[-1], rank).to(chol.device)
        return cls(arrays.to(dtype), factor.to(dtype), blocks.to(dtype), index, basis.to(dtype)[index],
                   coupling.to(dtype), scale.to(dtype), sel.to(dtype))


@lru_cache(maxsize=16)
def _neighbour_coarse(part: Partition, k: int, rank: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(nl, 5 k, depth r): the coarse coefficients of each leaf itself and of its W, E, S, N
    neighbours (rows), per depth (columns), zero where the neighbour lies outside the leaf's cluster."""
    nbrs = torch.cat([torch.arange(part.n_leaves)[None], _leaf_neighbours(part)])
    shift = part.depth - torch.arange(part.depth)[:, None, None]
    inside = (nbrs >= 0) & ((nbrs.clamp_min(0) >> shift) == (torch.arange(part.n_leaves) >> shift))
    sel = coarse_selection(part, k, rank)[:, nbrs.clamp_min(0)] * inside[..., None, None]   # (depth, 5, nl, k, r)
    return sel.permute(2, 1, 3, 0, 4).reshape(part.n_leaves, 5 * k, -1).to(device, dtype)


def galerkin_factors(part: Partition, coupling: torch.Tensor, coarse: torch.Tensor, weight: float,
                     jitter: float = 1e-5) -> list[torch.Tensor]:
    """Per depth d, R (2^d, r, r) with R R^T = w (V_c^T A_cc V_c)^-1 for V_c = [Q_i C_i]_{i in c}.

    `coarse` (depth, nl, k, r) is coarse_selection's. V_c^T A_cc V_c = sum over leaves i of c and their
    neighbours j in c of C_i^T (Q^T A Q)_ij C_j, from the basis-level coupling blocks: one batched
    GEMM for all depths, one per depth over its clusters, one Cholesky for all clusters. A relative
    jitter keeps the Gram matrix invertible when the coarse functions are (nearly) dependent or span
    a null vector of a floating (all-Neumann) cluster.
    """
    depth, nl, k, r = coarse.shape
    if not depth:
        return []
    near = _neighbour_coarse(part, k, r, coarse.dtype, coarse.device)
    ac = (coupling.transpose(1, 2).reshape(nl, k, 5 * k) @ near).view(nl, k, depth, r).permute(2, 0, 1, 3)
    gram = torch.cat([coarse[d].reshape(1 << d, -1, r).transpose(1, 2) @ ac[d].reshape(1 << d, -1, r)
                      for d in range(depth)])
    gram = 0.5 * (gram + gram.transpose(1, 2))
    tr = gram.diagonal(dim1=1, dim2=2).mean(-1)
    empty = (tr <= torch.finfo(gram.dtype).tiny).to(gram.dtype)                 # all-padding clusters
    eye = torch.eye(r, dtype=gram.dtype, device=gram.device)
    chol = torch.linalg.cholesky(gram + (jitter * tr + empty)[:, None, None] * eye)
    inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)  # L^-1
    return list((inv.transpose(1, 2) * weight ** 0.5).split([1 << d for d in range(depth)]))


@dataclass
class HMatrix:
    """M = G G^T + eps I with G = [B + F | W], see the module docstring. Vectors in cell order.

    B's leaf blocks are L_i^-T + Q_i K_i Q_i^T: the analytic factor of the leaf's distinct stencil
    plus the network's correction. `__post_init__` multiplies out, once per system, the per-leaf
    products that the apply needs (see `apply_leaf`), so an apply is eight batched GEMMs and two
    prefix-sum segment sums, whatever the network predicted.
    """

    part: Partition
    factor: torch.Tensor        # (u, L, L)    L^-T per distinct leaf
    blocks: torch.Tensor        # (u, L, L+2k) [A_ii^-1 | Q | L^-T Q] per distinct leaf
    index: torch.Tensor         # (nl,)        distinct-leaf index of every leaf
    basis: torch.Tensor         # (nl, L, k)   Q
    corr: torch.Tensor          # (nl, k, k)   K: B's leaf blocks are L^-T + Q K Q^T
    fu: torch.Tensor            # (depth, nl, k, r) F's row factors (leaf i's slice of U_c)
    fv: torch.Tensor            # (depth, nl, k, r) F's column factors (leaf j's slice of V_c')
    coarse: torch.Tensor        # (depth, nl, k, r) coarse functions V_c
    gram: list[torch.Tensor]    # per depth (2^d, r, r): R_c
    eps: float

    def __post_init__(self) -> None:
        """Per-leaf operators, all acting on row vectors (x_i^T @ op).

        With P = L^-T Q, S = Q^T Q and B = L^-T + Q K Q^T:
        x^T B B^T = x^T A_ii^-1 + (x^T P K^T + x^T Q K S K^T) Q^T + x^T Q K P^T and x^T B Q =
        x^T P + x^T Q K S, so no L x L product is formed per leaf: `head` gathers the distinct
        leaves' [A_ii^-1 + eps I | Q | P], `tail` their [Q | P]^T, and `mix` (3k x 3k per leaf) maps
        the row [x^T Q, x^T P, z] to the coefficients on Q^T and P^T and to s (see apply_leaf).
        """
        q, kk = self.basis, self.corr
        nl, size, k = q.shape
        depth, r = self.fu.shape[0], self.fu.shape[-1]
        blocks = self.blocks.clone()
        blocks[..., :size].diagonal(dim1=1, dim2=2).add_(self.eps)
        self.head = blocks.index_select(0, self.index)                                   # (nl, L, L+2k)
        self.tail = blocks[..., size:].transpose(1, 2).contiguous().index_select(0, self.index)  # (nl, 2k, L)
        gtg = q.transpose(1, 2) @ q
        kt, ks = kk.transpose(1, 2), kk @ gtg
        eye, zero = torch.eye(k, dtype=q.dtype, device=q.device).expand_as(kk), torch.zeros_like(kk)
        self.mix = torch.cat([torch.cat([ks @ kt, kk, ks], -1),                           # rows: x^T Q,
                              torch.cat([kt, zero, eye], -1),                             #       x^T P,
                              torch.cat([gtg @ kt, eye, gtg], -1)], 1)                    #       z
        fu, fv, co = (t.permute(1, 2, 0, 3).reshape(nl, k, depth * r) for t in (self.fu, self.fv, self.coarse))
        self.gather_y = torch.cat([fu, co], -1)                                          # (nl, k, 2 depth r)
        self.gather_s = fv
        self.spread_z = fv.transpose(1, 2).contiguous()                                  # (nl, depth r, k)
        self.spread_s = fu.transpose(1, 2).contiguous()
        # R_c R_c^T of each leaf's cluster, folded into the coarse spread: (R R^T) C_di^T
        ck = [(self.coarse[d].reshape(1 << d, -1, r) @ (g @ g.transpose(1, 2))).view(nl, k, r)
              for d, g in enumerate(self.gram)]
        self.spread_c = torch.stack(ck, 2).view(nl, k, -1).transpose(1, 2).contiguous() if depth else q.new_zeros(nl, 0, k)

    @property
    def dtype(self) -> torch.dtype:
        return self.basis.dtype

    def leaf(self) -> torch.Tensor:
        """B's dense leaf blocks (nl, L, L) (tests only)."""
        q = self.basis
        return self.factor[self.index] + q @ self.corr @ q.transpose(1, 2)

    def _level_sums(self, t: torch.Tensor, parts: int) -> torch.Tensor:
        """t (nl, m, parts * depth * r) per-leaf coefficients -> for every leaf and depth, their sum over
        the leaf's sibling half (part 0) and its whole cluster (part 1): differences of a float64
        prefix sum over the leaves at the partition's cached range ends."""
        nl, m, _ = t.shape
        groups, r = parts * self.fu.shape[0], self.fu.shape[-1]
        prefix = t.view(nl, m, groups, r).transpose(1, 2).cumsum(0, dtype=torch.float64)
        prefix = torch.cat([prefix.new_zeros(1, groups, m, r), prefix]).view((nl + 1) * groups, m, r)
        ends = prefix.index_select(0, self.part.level_ends(parts, t.device)).view(2, nl, groups, m, r)
        return (ends[0] - ends[1]).to(t.dtype).transpose(1, 2).reshape(t.shape)

    # ------------------------------------------------------------------ the operator
    def apply_leaf(self, x: torch.Tensor) -> torch.Tensor:
        """M x for x in leaf layout (nl, m, L), rows of m vectors per leaf.

        G G^T x = B B^T x + (B Q) z + Q w with y = Q^T x, z = F^T y (basis coordinates),
        s = Q^T B^T x + Q^T Q z and w = F s + W W^T y; B B^T x and B Q z are written on Q and P.
        """
        size, k = x.shape[-1], self.basis.shape[-1]
        h = x @ self.head
        t = self._level_sums(h[..., size:size + k] @ self.gather_y, 2)
        far, coarse = t.chunk(2, -1)
        z = far @ self.spread_z
        on_q, on_p, s = (torch.cat([h[..., size:], z], -1) @ self.mix).split(k, -1)
        w = torch.baddbmm(coarse @ self.spread_c, self._level_sums(s @ self.gather_s, 1), self.spread_s)
        return torch.baddbmm(h[..., :size], torch.cat([on_q + w, on_p], -1), self.tail)

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """M v for v shaped (n,) or (m, n) in cell order, in the operator's dtype."""
        p = self.part
        flat = v.reshape(-1, p.n).to(self.dtype)
        x = p.to_leaf(flat).view(flat.shape[0], p.n_leaves, p.leaf_size).transpose(0, 1)
        out = self.apply_leaf(x)
        return p.from_leaf(out.transpose(0, 1).reshape(flat.shape[0], -1)).reshape(v.shape)

    def to_dense(self) -> torch.Tensor:
        """M as a dense (n, n) matrix (tests only)."""
        n = self.part.n
        return self.apply(torch.eye(n, dtype=self.dtype, device=self.basis.device)).T


def assemble(system: PoissonSystem, part: Partition, an: Analytic, leaf_corr: torch.Tensor, fu: torch.Tensor,
             fv: torch.Tensor, level_weight: float, eps: float) -> HMatrix:
    """Build M from the analytic parts and the dimensionless corrections the network predicts.

    leaf_corr (nl, k, k): B_i = L_i^-T + g_i Q_i K_i Q_i^T; fu, fv (depth, nl, k, r): F's factors,
    scaled by sqrt(g) of their leaf (g = mean(diag)^-1/2 of the leaf); level_weight: w of
    every coarse level; eps: relative to max(diag).
    """
    g = an.scale
    root = g.sqrt()[None, :, None, None]
    gram = galerkin_factors(part, an.coupling, an.selection, level_weight)
    return HMatrix(part, an.factor, an.blocks, an.index, an.basis, g[:, None, None] * leaf_corr,
                   (fu * root).contiguous(), (fv * root).contiguous(), an.selection, gram, eps / float(system.diag.max()))
