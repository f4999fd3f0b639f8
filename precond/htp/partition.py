"""Cluster tree of the grid: recursive coordinate bisection down to leaf tiles.

The grid is padded at its high ends to `tx * 2^a` by `ty * 2^b` cells, with `tx * ty = L`
cells per leaf tile (8 x 8 for the default L = 64) and `2^a` (`2^b`) the smallest power of
two covering the tiles along x (y). Padding cells are decoupled identity cells: vectors are
zero there, and an operator restricted to the real cells is a principal submatrix of the
padded one (so SPD stays SPD). Grids whose sides are 8 times a power of two (32x32,
128x64, 512x512, ...) need no padding; others pay at most a factor 2 per side.

Every cluster of the padded grid is split in half across its longer side (x on ties).
All clusters of one depth have the same shape, so the tree is a sequence of split axes,
and "leaf order" (cells sorted by leaf, leaves by their path in the tree, cells inside a
tile in C order) makes the clusters of every depth contiguous, equal-sized slices: a
level is a reshape, never an index list. The permutation between cell order and leaf
order is itself a reshape of the padded grid into bits followed by a transpose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F

T = TypeVar("T", bound=Callable)


def shape_cache(maxsize: int = 64) -> Callable[[T], T]:
    """lru_cache for tables that depend only on the grid shape. They are built as ordinary tensors
    even when first asked for under torch.inference_mode (a solve's set-up), so that training on the
    same shape later can use them in autograd."""
    def wrap(fn: T) -> T:
        return lru_cache(maxsize=maxsize)(torch.inference_mode(False)(fn))
    return wrap


def leaf_tile(leaf_size: int) -> tuple[int, int]:
    """Tile shape (tx, ty) of a leaf of `leaf_size` cells: a power of two, tx >= ty."""
    m = int(round(math.log2(leaf_size))) if leaf_size > 0 else -1
    if m < 0 or 2 ** m != leaf_size:
        raise ValueError(f"leaf size must be a power of two, got {leaf_size}")
    return 2 ** ((m + 1) // 2), 2 ** (m // 2)


@dataclass(frozen=True)
class Partition:
    """The cluster tree of one (nx, ny, leaf_size); build with `partition(nx, ny, leaf_size)`."""

    nx: int
    ny: int
    tx: int                      # leaf tile shape
    ty: int
    bits_x: int                  # the padded grid has 2^bits_x tiles along x, 2^bits_y along y
    bits_y: int
    axes: tuple[int, ...]        # split axis (0 = x, 1 = y) of each depth, root first

    # ------------------------------------------------------------------ sizes
    @property
    def leaf_size(self) -> int:
        return self.tx * self.ty

    @property
    def depth(self) -> int:
        """Number of bisection levels: the leaves sit at this depth, the root at 0."""
        return len(self.axes)

    @property
    def n_leaves(self) -> int:
        return 2 ** self.depth

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.tx << self.bits_x, self.ty << self.bits_y

    @property
    def n(self) -> int:
        return self.nx * self.ny

    @property
    def n_padded(self) -> int:
        return self.n_leaves * self.leaf_size

    @property
    def tiles(self) -> tuple[int, int]:
        """Leaves along x and y of the padded grid."""
        return 1 << self.bits_x, 1 << self.bits_y

    # ------------------------------------------------------------------ permutation as a transpose
    def _split_dims(self) -> tuple[list[int], list[int]]:
        """Dims of the bit view (2,)*bits_x + (tx,) + (2,)*bits_y + (ty,) in leaf order."""
        xs = list(range(self.bits_x))                       # x bits, most significant first
        ys = list(range(self.bits_x + 1, self.bits_x + 1 + self.bits_y))
        order, ix, iy = [], 0, 0
        for ax in self.axes:
            if ax == 0:
                order.append(xs[ix])
                ix += 1
            else:
                order.append(ys[iy])
                iy += 1
        order += [self.bits_x, self.bits_x + 1 + self.bits_y]  # then the tile, C order
        view = [2] * self.bits_x + [self.tx] + [2] * self.bits_y + [self.ty]
        return view, order

    def to_leaf(self, v: torch.Tensor) -> torch.Tensor:
        """Cell order (..., nx*ny) -> leaf order (..., n_padded), zeros on padding cells."""
        batch = v.shape[:-1]
        px, py = self.padded_shape
        g = v.reshape(-1, self.nx, self.ny)
        if (px, py) != (self.nx, self.ny):
            g = F.pad(g, (0, py - self.ny, 0, px - self.nx))
        view, order = self._split_dims()
        g = g.reshape(g.shape[0], *view).permute(0, *[d + 1 for d in order])
        return g.reshape(*batch, self.n_padded)

    # ------------------------------------------------------------------ index tensors
    def cell_index(self) -> torch.Tensor:
        """For each leaf-order position, its cell k = i*ny + j, or -1 on padding."""
        return _cell_index(self)

    def cell_position(self) -> torch.Tensor:
        """(n,) the leaf-order position of every cell k = i*ny + j (the inverse of cell_index)."""
        return _cell_position(self)

    def leaf_coords(self) -> torch.Tensor:
        """(n_leaves, 2) tile coordinates (column along x, row along y) of each leaf, in leaf order."""
        return _leaf_coords(self)

    def leaf_neighbours(self) -> torch.Tensor:
        """(4, n_leaves) the leaf across each side (W, E, S, N), -1 at the padded grid's edge."""
        return _leaf_neighbours(self)

    def cluster_geometry(self) -> torch.Tensor:
        """(n_leaves - 1, 8) the inner clusters of the tree, depth-major (root, then depth 1's two
        clusters, ...), each in leaf order: log2 of its extents in leaves along x and y, its height
        above the leaves, its split axis, and whether it touches the padded grid's west, east,
        south and north edges (where coarse functions stay flat instead of vanishing)."""
        return _cluster_geometry(self)


@lru_cache(maxsize=64)
def partition(nx: int, ny: int, leaf_size: int = 64) -> Partition:
    """The (cached) cluster tree of an nx x ny grid with leaves of `leaf_size` cells."""
    if nx < 1 or ny < 1:
        raise ValueError(f"grid must have positive sides, got {nx}x{ny}")
    tx, ty = leaf_tile(leaf_size)
    bx = max(0, math.ceil(math.log2(math.ceil(nx / tx))))
    by = max(0, math.ceil(math.log2(math.ceil(ny / ty))))
    axes, sx, sy = [], tx << bx, ty << by
    while sx > tx or sy > ty:
        if sx > tx and (sx >= sy or sy == ty):
            axes.append(0)
            sx //= 2
        else:
            axes.append(1)
            sy //= 2
    return Partition(nx, ny, tx, ty, bx, by, tuple(axes))


@shape_cache()
def _cell_index(p: Partition) -> torch.Tensor:
    k = torch.arange(p.n, dtype=torch.float64)
    mask = p.to_leaf(torch.ones(p.n, dtype=torch.float64))
    return torch.where(mask > 0, p.to_leaf(k), -1.0).long()


@shape_cache()
def _cell_position(p: Partition) -> torch.Tensor:
    idx = p.cell_index()
    pos = torch.empty(p.n, dtype=torch.long)
    pos[idx[idx >= 0]] = torch.nonzero(idx >= 0).squeeze(1)
    return pos


@shape_cache()
def _leaf_coords(p: Partition) -> torch.Tensor:
    x = torch.zeros(p.n_leaves, dtype=torch.long)
    y = torch.zeros(p.n_leaves, dtype=torch.long)
    bit_x, bit_y = p.bits_x, p.bits_y
    leaf = torch.arange(p.n_leaves)
    for d, ax in enumerate(p.axes):   # the leaf's path bit at depth d picks a half
        bit = (leaf >> (p.depth - 1 - d)) & 1
        if ax == 0:
            bit_x -= 1
            x += bit << bit_x
        else:
            bit_y -= 1
            y += bit << bit_y
    return torch.stack([x, y], 1)


@shape_cache()
def _leaf_neighbours(p: Partition) -> torch.Tensor:
    coords = p.leaf_coords()
    tx, ty = p.tiles
    grid = torch.full((tx, ty), -1, dtype=torch.long)
    grid[coords[:, 0], coords[:, 1]] = torch.arange(p.n_leaves)
    out = torch.full((4, p.n_leaves), -1, dtype=torch.long)
    for side, (dx, dy) in enumerate(((-1, 0), (1, 0), (0, -1), (0, 1))):
        x, y = coords[:, 0] + dx, coords[:, 1] + dy
        ok = (x >= 0) & (x < tx) & (y >= 0) & (y < ty)
        out[side, ok] = grid[x[ok], y[ok]]
    return out


@shape_cache()
def _cluster_geometry(p: Partition) -> torch.Tensor:
    coords = p.leaf_coords()
    tiles = torch.tensor(p.tiles)
    rows = []
    for d in range(p.depth):
        c = coords.view(1 << d, -1, 2)
        lo, hi = c.min(1).values, c.max(1).values + 1
        ext = (hi - lo).double()
        rows.append(torch.cat([ext.log2(), torch.full((1 << d, 1), float(p.depth - d)),
                               torch.full((1 << d, 1), float(p.axes[d])),
                               (lo == 0).double(), (hi >= tiles).double()], 1)[:, [0, 1, 2, 3, 4, 6, 5, 7]])
    return torch.cat(rows) if rows else torch.zeros(0, 8, dtype=torch.float64)
