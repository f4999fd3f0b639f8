"""The analytic part of HTP's M: what it is with the network's corrections at zero, from A alone.

* Leaf blocks: the exact block-Jacobi factor L_i^-T of every leaf (A_ii = L_i L_i^T, batched
  Cholesky), so B B^T alone is the block-Jacobi preconditioner.
* Harmonic basis Q_i = A_ii^-1 E_i: the leaf's responses to unit data on `segments` pieces of each
  of its four sides, weighted by the couplings across them. These are the shapes that off-diagonal
  blocks of A^-1 take inside a leaf (A-harmonic away from the sources), adapted to the density
  jumps, at nb = 4 segments numbers per leaf instead of L.
* Galerkin factors R_c with R_c R_c^T = (V_c^T A_cc V_c)^-1 for the coarse functions V_c = [Q_i C_i]
  of every inner cluster c (coarse.py): V_c R_c R_c^T V_c^T is then the Galerkin inverse of A on
  span(V_c), one coarse step of the sweep (hmatrix.py), whose scale is right for any density
  ratio by construction.

Solid cells (decoupled identity rows, PoissonSystem.decoupled) need no mask: no coupling reaches
them, so their sources are 0, their leaf blocks identity rows, and Q, every coarse function and the
network's corrections vanish there. M couples them to nothing and is SPD as on any system.

Everything is factorised in float64, once per distinct leaf (pure-phase interiors repeat), and
cast to the network's dtype at the end.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..system import PoissonSystem
from .coarse import CoarseSpace
from .partition import Partition

FIELDS = ("diag", "east", "west", "north", "south", "real")


def leaf_stencil(system: PoissonSystem, part: Partition) -> torch.Tensor:
    """Per-cell stencil data in leaf order: (6, n_leaves, L) for FIELDS (couplings to each side)."""
    stack = torch.stack([system.diag, system.cx, system.west, system.cy, system.south, torch.ones_like(system.diag)])
    return part.to_leaf(stack.reshape(6, -1)).view(6, part.n_leaves, part.leaf_size)


def leaf_matrices(stencil: torch.Tensor, part: Partition, jitter: float) -> torch.Tensor:
    """A's diagonal blocks A_ii (n_leaves, L, L), diagonal times 1 + jitter; padding and isolated
    cells get identity rows."""
    diag, east, _, north, _, real = stencil
    tx, ty, size = part.tx, part.ty, part.leaf_size
    d = torch.where((real > 0) & (diag > 0), diag, torch.ones_like(diag))
    a = torch.diag_embed(d * (1.0 + jitter))
    cell = torch.arange(size, device=stencil.device)
    e = cell[cell // ty < tx - 1]
    n = cell[cell % ty < ty - 1]
    a[:, e, e + ty] = -east[:, e]
    a[:, e + ty, e] = -east[:, e]
    a[:, n, n + 1] = -north[:, n]
    a[:, n + 1, n] = -north[:, n]
    return a


def harmonic_sources(stencil: torch.Tensor, part: Partition, segments: int) -> torch.Tensor:
    """E_i: coupling-weighted indicators of `segments` pieces of each leaf side (W, E, S, N),
    (n_leaves, L, 4 segments)."""
    _, east, west, north, south, _ = stencil
    tx, ty = part.tx, part.ty
    if tx % segments or ty % segments:
        raise ValueError(f"{segments} segments do not divide the {tx}x{ty} leaf sides")
    cell = torch.arange(part.leaf_size, device=stencil.device)
    li, lj = cell // ty, cell % ty
    sides = ((west, li == 0, lj, ty), (east, li == tx - 1, lj, ty),
             (south, lj == 0, li, tx), (north, lj == ty - 1, li, tx))
    cols = [coupling * (on_side & (along * segments // length == s))
            for coupling, on_side, along, length in sides for s in range(segments)]
    return torch.stack(cols, -1)


def basis_coupling(stencil: torch.Tensor, part: Partition, basis: torch.Tensor, sources: torch.Tensor,
                   distinct_index: torch.Tensor, jitter: float) -> torch.Tensor:
    """Q^T A Q in blocks between a leaf and itself and its four neighbours, (nl, 5, nb, nb): [i, 0] is
    Q_i^T A_ii Q_i, [i, 1 + s] is Q_i^T A_ij Q_j for the leaf j across side s (W, E, S, N; zero at the edge).

    stencil, basis, sources are per distinct leaf, `distinct_index` maps every leaf to its distinct leaf.
    Q = A_ii'^-1 E with A_ii' = A_ii + jitter diag(d), so A_ii Q = E - jitter d Q; across a side only
    the facing cells couple.
    """
    diag, east, west, north, south, real = stencil
    tx, ty = part.tx, part.ty
    index = distinct_index
    d = torch.where((real > 0) & (diag > 0), diag, torch.ones_like(diag))
    blocks = [(basis.transpose(1, 2) @ (sources - jitter * d[..., None] * basis))[index]]
    cell = torch.arange(part.leaf_size, device=stencil.device)
    li, lj = cell // ty, cell % ty
    wside, eside, sside, nside = cell[li == 0], cell[li == tx - 1], cell[lj == 0], cell[lj == ty - 1]
    nbrs = part.leaf_neighbours().to(stencil.device)
    for side, (coupling, cells, facing) in enumerate(((west, wside, eside), (east, eside, wside),
                                                      (south, sside, nside), (north, nside, sside))):
        here = (basis[:, cells] * coupling[:, cells, None]).transpose(1, 2)[index]      # (nl, nb, side)
        there = basis[:, facing][index[nbrs[side].clamp_min(0)]] * (nbrs[side] >= 0)[:, None, None]
        blocks.append(-here @ there)
    return torch.stack(blocks, 1)


def distinct_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct rows, index of every row among them), like torch.unique(rows, dim=0, return_inverse=True)
    up to the order of the distinct rows. A fixed random projection of each row is its key, so the
    search is one sort of n numbers (unique(dim=0) compares rows one pair at a time); the result is
    checked exactly and an (unlikely) key collision falls back to unique(dim=0)."""
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(rows.shape[1], generator=g, dtype=torch.float64).to(rows.device, rows.dtype)
    _, index = torch.unique((rows * weights).sum(1), return_inverse=True)
    first = torch.empty(int(index.max()) + 1, dtype=torch.long, device=rows.device)
    first.scatter_(0, index, torch.arange(rows.shape[0], device=rows.device))
    distinct = rows[first]
    if not torch.equal(distinct[index], rows):
        return torch.unique(rows, dim=0, return_inverse=True)
    return distinct, index


def galerkin_factors(space: CoarseSpace, coupling: torch.Tensor, jitter: float = 1e-3) -> list[torch.Tensor]:
    """Per depth d, R (2^d, r, r) with R R^T = (V_c^T A_cc V_c)^-1 for V_c = [Q_i C_i]_{i in c}.

    V_c^T A_cc V_c = sum over leaves i of c and their neighbours j in c of C_i^T (Q^T A Q)_ij C_j, from
    the basis-level coupling blocks: one batched GEMM for all depths, one per depth over its
    clusters, one Cholesky for all clusters.

    The Gram matrix G gets G + jitter diag(G), which keeps it invertible when the coarse functions are
    (nearly) dependent or span a null vector of a floating (all-Neumann) cluster, at a size relative
    to each function's own energy (a water region at ratio 1,000 has energies 1,000 times smaller,
    and so is their jitter); a floor of 1e-8 mean(diag G) covers functions that vanish (support in
    the padding). A single jitter of 1e-5 mean(diag G) for all functions gives the same PCG
    iterations on the benchmark systems but a float32 apply 10 to 50 times farther from the float64
    one on closed boxes, where the root's area hats sum to the null vector. Call it in float64: the
    energy of a smooth coarse function is a small difference of large terms, and in float32 the
    rounding can exceed the jitter and break the Cholesky factorisation.
    """
    depth, nl, nb, r = space.prolongation.shape
    if not depth:
        return []
    c = space.prolongation.to(coupling.device)
    near = space.with_neighbours(coupling.device)
    ac = (coupling.transpose(1, 2).reshape(nl, nb, 5 * nb) @ near).view(nl, nb, depth, r).permute(2, 0, 1, 3)
    gram = torch.cat([c[d].reshape(1 << d, -1, r).transpose(1, 2) @ ac[d].reshape(1 << d, -1, r)
                      for d in range(depth)])
    return list(inverse_factor(gram, jitter).split([1 << d for d in range(depth)]))


def inverse_factor(gram: torch.Tensor, jitter: float = 1e-3) -> torch.Tensor:
    """R (b, k, k) with R R^T = (G + jitter diag(G) + floor)^-1 for symmetric PSD Gram matrices G (b, k, k),
    the regularisation of galerkin_factors; float64."""
    gram = 0.5 * (gram + gram.transpose(1, 2))
    energy = gram.diagonal(dim1=1, dim2=2)
    tr = energy.mean(-1)
    empty = (tr <= torch.finfo(gram.dtype).tiny).to(gram.dtype)                 # all-padding clusters
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    chol = torch.linalg.cholesky(gram + torch.diag_embed(jitter * energy + (1e-8 * tr + empty)[:, None]))
    return torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False).transpose(1, 2)   # L^-T


def gram_root(chol: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """G^1/2 (u, 2 nb, 2 nb) of the Gram matrix G = Z^T Z of Z = [L^T Q, Q] per distinct leaf (A_ii = L L^T):
    what hmatrix.leaf_bound needs to bound the network's leaf blocks. float64, from the float64 factors."""
    z = torch.cat([chol.transpose(1, 2) @ basis, basis], -1)
    w, v = torch.linalg.eigh(z.transpose(1, 2) @ z)
    return (v * w.clamp_min(0.0).sqrt()[:, None, :]) @ v.transpose(1, 2)


@dataclass
class Analytic:
    """The analytic part of M for one system, see the module docstring; build with `Analytic.build`."""

    stencil: torch.Tensor           # (6, nl, L) leaf-order stencil data, FIELDS
    leaf_operators: torch.Tensor    # (u, L, L + 2 nb) [A_ii^-1 | Q | L^-T Q] per distinct leaf
    distinct_index: torch.Tensor    # (nl,) distinct leaf of every leaf
    basis: torch.Tensor             # (nl, L, nb) harmonic basis Q_i
    scale: torch.Tensor             # (nl,) mean(diag)^-1/2 over the leaf's real cells
    coupling: torch.Tensor          # (nl, 5, nb, nb) Q^T A Q in blocks, see basis_coupling
    gram_root: torch.Tensor         # (nl, 2 nb, 2 nb) float64: G^1/2 of G = [L^T Q, Q]^T [L^T Q, Q], see gram_root
    galerkin: list[torch.Tensor]    # per depth (2^d, r, r): R_c, see galerkin_factors
    leaf_galerkin: torch.Tensor     # (nl, nb, nb) R_i with R_i R_i^T = (Q_i^T A_ii Q_i)^-1, see inverse_factor

    @classmethod
    def build(cls, system: PoissonSystem, space: CoarseSpace, dtype: torch.dtype = torch.float32,
              jitter: float = 1e-6) -> "Analytic":
        part = space.part
        stencil = leaf_stencil(system.to(dtype=torch.float64), part)
        # leaves with identical stencil data (pure-phase interiors) share one factorisation
        unique, index = distinct_rows(stencil.transpose(0, 1).reshape(part.n_leaves, -1))
        unique = unique.view(-1, len(FIELDS), part.leaf_size).transpose(0, 1)
        chol = torch.linalg.cholesky(leaf_matrices(unique, part, jitter))                # A_ii = L L^T
        sources = harmonic_sources(unique, part, space.segments)
        basis = torch.cholesky_solve(sources, chol)                                     # Q = A_ii^-1 E
        reduced = torch.linalg.solve_triangular(chol.transpose(1, 2), basis, upper=True)   # L^-T Q
        operators = torch.cat([torch.cholesky_inverse(chol), basis, reduced], -1)
        coupling = basis_coupling(unique, part, basis, sources, index, jitter)
        galerkin = galerkin_factors(space, coupling)
        leaf_galerkin = inverse_factor(coupling[:, 0])
        real = stencil[5]
        mean_d = (stencil[0] * real).sum(1) / real.sum(1).clamp_min(1)
        scale = torch.where(mean_d > 0, mean_d, torch.ones_like(mean_d)).rsqrt()
        return cls(stencil.to(dtype), operators.to(dtype), index, basis.to(dtype)[index], scale.to(dtype),
                   coupling.to(dtype), gram_root(chol, basis)[index], [g.to(dtype) for g in galerkin],
                   leaf_galerkin.to(dtype))
