"""The HTP network: a transformer over leaf tokens whose heads write the corrections of M.

Tokens. One per leaf (L cells of the cluster tree, see partition.py), embedded from its
cells' scale-free stencil data (couplings over diag, Dirichlet weight over diag, log diag
against the leaf's and the grid's mean, real/padding flag) plus leaf scalars (position in the
grid, grid extent, which domain walls it touches). With highways on, there are also one axial
buffer token per row and per column of leaves and one global summary token.

Attention. A leaf attends to the leaves of its window (`window` consecutive leaves in leaf
order: a cluster of the tree, so a compact square or 2:1 patch) and, through the highways, to
its row buffer, its column buffer and the global token. Buffers read their row / column and
the global token; the global token reads every token. So every layer reads and writes the
highways, and a leaf sees the whole grid after one layer at O(N) cost (no N^2 attention).

Heads. A leaf head writes the low-rank leaf-block correction K_i. One cluster head, shared by
all depths so the same weights serve every grid size, reads the mean tokens of a cluster's two
halves and the cluster's geometry (extents, height, split axis, which walls it touches) and
writes X_c, the r x r correction T_c = I + X_c of its far-field factor (see hmatrix.py). The last layers start
at zero, so an untrained network is the analytic preconditioner: block-Jacobi leaves plus
Galerkin coarse levels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import check_fields, is_int, is_positive, is_power_of_two
from .partition import Partition, leaf_tile, shape_cache

CELL_FEATURES = 8
LEAF_FEATURES = 11
GEO_FEATURES = 8
GEO_SCALE = torch.tensor([6.0, 6.0, 12.0, 1.0, 1.0, 1.0, 1.0, 1.0])   # cluster_geometry's columns to O(1)


@dataclass
class HTPConfig:
    """Structure (shared with the operator) and network sizes; saved inside every checkpoint."""

    leaf_size: int = 64        # cells per leaf (8 x 8 tiles)
    rank: int = 16             # r: far-field rank per sibling block and coarse functions per cluster
    segments: int = 2          # harmonic basis: pieces per leaf side, 4 * segments vectors per leaf
    d_model: int = 96
    n_layers: int = 4
    n_heads: int = 4
    window: int = 16           # leaves per local attention window (a depth-log2(window) cluster)
    mlp_ratio: int = 4
    head_hidden: int = 128
    highways: bool = True      # axial row / column buffers and the global token
    smoothing: float = 0.8     # damping of the leaf blocks in the sweep (hmatrix.py), in (0, 1]
    eps: float = 1e-3          # leaf blocks B B^T + eps A_ii^-1: positive definite for every correction

    def __post_init__(self) -> None:
        check_fields(self, {"leaf_size": (lambda v: is_power_of_two(v) and v >= 4, "a power of two >= 4")})
        tx, ty = leaf_tile(self.leaf_size)
        check_fields(self, {
            "rank": (lambda v: is_power_of_two(v) and v >= 2, "a power of two >= 2"),
            "segments": (lambda v: is_int(1)(v) and tx % v == 0 and ty % v == 0, f"an integer dividing {tx} and {ty}"),
            "d_model": (is_int(1), "an integer >= 1"),
            "n_layers": (is_int(0), "an integer >= 0"),
            "n_heads": (lambda v: is_int(1)(v) and self.d_model % v == 0, "an integer >= 1 dividing d_model"),
            "window": (is_power_of_two, "a power of two >= 1"),
            "mlp_ratio": (is_int(1), "an integer >= 1"),
            "head_hidden": (is_int(1), "an integer >= 1"),
            "highways": (lambda v: isinstance(v, bool), "True or False"),
            "smoothing": (lambda v: is_positive(v) and v <= 1, "a number in (0, 1]"),
            "eps": (is_positive, "a finite number > 0"),
        })

    @property
    def basis_size(self) -> int:
        """nb: harmonic basis vectors per leaf."""
        return 4 * self.segments

    @classmethod
    def from_dict(cls, d: dict) -> "HTPConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown HTP config keys {sorted(unknown)}")
        return cls(**d)


def leaf_features(part: Partition, stencil: torch.Tensor) -> torch.Tensor:
    """(nl, CELL_FEATURES * L + LEAF_FEATURES) scale-free token inputs from the leaf-order stencil
    data (analytic.FIELDS: diag, east, west, north, south, real)."""
    diag, east, west, north, south, real = stencil
    live = (real > 0) & (diag > 0)
    safe = torch.where(live, diag, torch.ones_like(diag))
    logd = torch.where(live, safe.log(), torch.zeros_like(diag))
    count = live.sum(1).clamp_min(1)
    leaf_mean = logd.sum(1) / count
    grid_mean = logd.sum() / live.sum().clamp_min(1)
    dirichlet = (diag - east - west - north - south) / safe
    cells = torch.stack([east / safe, west / safe, north / safe, south / safe, dirichlet,
                         (logd - leaf_mean[:, None]) * live, (logd - grid_mean) / 3.0 * live, real], -1)
    coords = part.leaf_coords().to(diag.device).to(diag.dtype)
    tiles_x = part.nx / part.tx
    tiles_y = part.ny / part.ty
    cx, cy = (coords[:, 0] + 0.5) / tiles_x, (coords[:, 1] + 0.5) / tiles_y
    spread = torch.sqrt(((logd - leaf_mean[:, None]) ** 2 * live).sum(1) / count)
    ones = torch.ones_like(cx)
    leaf = torch.stack([(leaf_mean - grid_mean) / 3.0, spread, real.mean(1), cx, cy,
                        math.log2(tiles_x) / 6.0 * ones, math.log2(tiles_y) / 6.0 * ones,
                        (coords[:, 0] == 0).to(cx.dtype), (coords[:, 0] + 1 >= tiles_x).to(cx.dtype),
                        (coords[:, 1] == 0).to(cx.dtype), (coords[:, 1] + 1 >= tiles_y).to(cx.dtype)], -1)
    return torch.cat([cells.reshape(part.n_leaves, -1), leaf], -1)


@dataclass(frozen=True)
class AttentionTables:
    """Who reads whom, as key indices into the token array and masks, for every query token.

    Windows: each window of `w` leaves (a cluster of the tree, so a rectangle of tiles of one shape)
    reads its leaves, the buffers of the rows and columns it spans and the global token; the mask
    lets a leaf see only its own row's and column's buffers. Buffers (rows, then columns) read the
    leaves of their line, themselves and the global token, padded to one key count."""

    grid: torch.Tensor          # (rows, cols) leaf index of every tile
    window: int                 # w, leaves per window
    window_keys: torch.Tensor   # (nl / w, Kw), the window's own leaves first
    window_mask: torch.Tensor   # (nl / w, 1, w, Kw) bool
    buffer_keys: torch.Tensor   # (rows + cols, Kb)
    buffer_mask: torch.Tensor   # (rows + cols, 1, 1, Kb) bool


@shape_cache()
def attention_tables(part: Partition, window: int, device: torch.device) -> AttentionTables:
    nl = part.n_leaves
    n_cols, n_rows = part.tiles
    coords = part.leaf_coords()
    w = min(window, nl)
    rows0, cols0, glob = nl, nl + n_rows, nl + n_rows + n_cols
    win = coords.view(nl // w, w, 2)
    lo = win.min(1).values
    span = win.max(1).values - lo + 1                    # the same for every window
    xs = lo[:, :1] + torch.arange(int(span[0, 0]))
    ys = lo[:, 1:] + torch.arange(int(span[0, 1]))
    leaves = torch.arange(nl).view(nl // w, w)
    window_keys = torch.cat([leaves, rows0 + ys, cols0 + xs, torch.full((nl // w, 1), glob)], 1)
    window_mask = torch.cat([torch.ones(nl // w, w, w, dtype=torch.bool),
                             ys[:, None, :] == win[..., 1:], xs[:, None, :] == win[..., :1],
                             torch.ones(nl // w, w, 1, dtype=torch.bool)], -1)
    grid = torch.empty(n_rows, n_cols, dtype=torch.long)
    grid[coords[:, 1], coords[:, 0]] = torch.arange(nl)
    width = max(n_rows, n_cols) + 2
    buffer_keys = torch.zeros(n_rows + n_cols, width, dtype=torch.long)
    buffer_mask = torch.zeros(n_rows + n_cols, width, dtype=torch.bool)
    for b, line in enumerate([*grid, *grid.T]):
        keys = torch.cat([line, torch.tensor([nl + b, glob])])
        buffer_keys[b, :keys.numel()] = keys
        buffer_mask[b, :keys.numel()] = True
    return AttentionTables(grid.to(device), w, window_keys.to(device), window_mask[:, None].to(device),
                           buffer_keys.to(device), buffer_mask[:, None, None].to(device))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keys: torch.Tensor,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Queries q (B, Q, h, e) attend to k, v (T, h, e) at token indices keys (B, K) where mask
    (B, 1, Q, K) allows; returns (B, Q, h * e)."""
    batch, n_q, h, e = q.shape
    gather = lambda t: t.index_select(0, keys.reshape(-1)).view(batch, -1, h, e).transpose(1, 2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), gather(k), gather(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(batch, n_q, h * e)


class Block(nn.Module):
    """Pre-norm transformer block over leaf tokens (windowed) and highway tokens."""

    def __init__(self, cfg: HTPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(), nn.Linear(cfg.mlp_ratio * d, d))

    def forward(self, x: torch.Tensor, tables: AttentionTables) -> torch.Tensor:
        """x: (nl + rows + cols + 1, d) with highways (leaves, row buffers, column buffers, global),
        else (nl, d)."""
        n_tok, h = x.shape[0], self.cfg.n_heads
        q, k, v = self.qkv(self.ln1(x)).view(n_tok, 3, h, -1).unbind(1)
        keys, w = tables.window_keys, tables.window
        nl = keys.shape[0] * w
        leaf_q = q[:nl].view(keys.shape[0], w, h, -1)
        if not self.cfg.highways:
            out = _attend(leaf_q, k, v, keys[:, :w]).reshape(nl, -1)
        else:
            leaf = _attend(leaf_q, k, v, keys, tables.window_mask).reshape(nl, -1)
            buffers = _attend(q[nl:-1].unsqueeze(1), k, v, tables.buffer_keys, tables.buffer_mask).squeeze(1)
            top = _attend(q[-1:].unsqueeze(0), k, v, torch.arange(n_tok, device=x.device)[None]).squeeze(1)
            out = torch.cat([leaf, buffers, top])
        x = x + self.proj(out)
        return x + self.mlp(self.ln2(x))


class HTPModel(nn.Module):
    """The network: (partition, leaf-order stencil data) -> the corrections of M's leaf blocks and
    of its clusters' far-field factors (see hmatrix.py); the preconditioner (preconditioner.py)
    builds M from them."""

    def __init__(self, cfg: HTPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, nb, r = cfg.d_model, cfg.basis_size, cfg.rank
        self.embed = nn.Linear(CELL_FEATURES * cfg.leaf_size + LEAF_FEATURES, d)
        if cfg.highways:
            self.row_token = nn.Parameter(0.02 * torch.randn(d))
            self.col_token = nn.Parameter(0.02 * torch.randn(d))
            self.global_token = nn.Parameter(0.02 * torch.randn(d))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(d)
        self.leaf_head = nn.Linear(d, nb * nb)
        self.ctx = nn.Linear(2 * d, d)
        self.geo = nn.Linear(GEO_FEATURES, d)
        self.cluster_head = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, cfg.head_hidden), nn.GELU(),
                                          nn.Linear(cfg.head_hidden, r * r))
        self.apply(self._init)
        for lin in (self.leaf_head, self.cluster_head[-1]):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, part: Partition, stencil: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """stencil (6, nl, L) in the network's dtype -> (K (nl, nb, nb) per leaf, X (nl - 1, r, r) per inner
        cluster, depth-major): dimensionless, M's leaf blocks take g_i Q_i K_i Q_i^T (g_i = mean(diag)^-1/2
        of the leaf) and its far-field factors T_c = I + X_c."""
        cfg = self.cfg
        x = self.embed(leaf_features(part, stencil))
        tables = attention_tables(part, cfg.window, x.device)
        nl, depth = part.n_leaves, part.depth
        if cfg.highways:
            rows = self.row_token + x[tables.grid].mean(1)
            cols = self.col_token + x[tables.grid.T].mean(1)
            x = torch.cat([x, rows, cols, (self.global_token + x.mean(0)).unsqueeze(0)])
        for block in self.blocks:
            x = block(x, tables)
        x = self.ln_f(x[:nl])
        leaf_corr = self.leaf_head(x).view(nl, cfg.basis_size, cfg.basis_size)
        means = [x]                                          # means[j]: the clusters j levels above the leaves
        for _ in range(depth):
            means.append(means[-1].view(-1, 2, x.shape[-1]).mean(1))
        halves = torch.cat([means[depth - d - 1].view(1 << d, -1) for d in range(depth)]) if depth \
            else x.new_zeros(0, 2 * x.shape[-1])
        dtype = self.embed.weight.dtype
        geo = part.cluster_geometry().to(device=x.device, dtype=dtype) / GEO_SCALE.to(x.device, dtype)
        cluster_corr = self.cluster_head(self.ctx(halves) + self.geo(geo)).view(-1, cfg.rank, cfg.rank)
        return leaf_corr, cluster_corr
