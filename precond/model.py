"""The HTP network: one transformer over leaf tokens that writes the H-matrix's corrections.

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
writes the r x r correction T_c of its far-field factor (see hmatrix.py). The last layers start
at zero, so an untrained network is the analytic preconditioner: block-Jacobi leaves plus
Galerkin coarse levels.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn

from .hmatrix import Analytic, HMatrix, assemble
from .partition import Partition, partition
from .system import PoissonSystem

LAYOUT = "htp-hmatrix-v4"   # bump when the meaning of the weights changes
CELL_FEATURES = 8
LEAF_FEATURES = 11
GEO_FEATURES = 8
GEO_SCALE = torch.tensor([6.0, 6.0, 12.0, 1.0, 1.0, 1.0, 1.0, 1.0])   # cluster_geometry's columns to O(1)


@dataclass
class HTPConfig:
    """Structure (shared with the operator) and network sizes; saved inside every checkpoint."""

    leaf_size: int = 64        # cells per leaf (8 x 8 tiles)
    rank: int = 16             # r: far-field rank per sibling block and coarse functions per cluster
    segments: int = 2          # harmonic basis: pieces per leaf side, k = 4 * segments vectors per leaf
    d_model: int = 96
    n_layers: int = 4
    n_heads: int = 4
    window: int = 16           # leaves per local attention window (a depth-log2(window) cluster)
    mlp_ratio: int = 4
    head_hidden: int = 128
    highways: bool = True      # axial row / column buffers and the global token
    level_weight: float = 0.5  # weight of every coarse level (additive levels overlap)
    eps: float = 1e-4          # M += eps / max(diag) I

    @property
    def k(self) -> int:
        return 4 * self.segments

    @classmethod
    def from_dict(cls, d: dict) -> "HTPConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown HTP config keys {sorted(unknown)}")
        return cls(**d)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ke: torch.Tensor | None = None,
            ve: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of q (B, Q, h, e) over shared keys k, v (B, K, h, e) and, per query,
    extra keys ke, ve (B, Q, E, h, e); returns (B, Q, h, e)."""
    scale = q.shape[-1] ** -0.5
    logits = torch.einsum("bqhe,bkhe->bhqk", q, k) * scale
    n_shared = k.shape[1]
    if ke is not None:
        extra = torch.einsum("bqhe,bqxhe->bhqx", q, ke) * scale
        logits = torch.cat([logits, extra], -1)
    att = logits.softmax(-1)
    out = torch.einsum("bhqk,bkhe->bqhe", att[..., :n_shared], v)
    if ke is not None:
        out = out + torch.einsum("bhqx,bqxhe->bqhe", att[..., n_shared:], ve)
    return out


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

    def forward(self, x: torch.Tensor, grid: torch.Tensor, coords: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
        """x: (nl + n_rows + n_cols + 1, d) with highways, else (nl, d); grid: (n_rows, n_cols) leaf index."""
        cfg = self.cfg
        h = cfg.n_heads
        nl = grid.numel()
        q, k, v = self.qkv(self.ln1(x)).view(x.shape[0], 3, h, -1).unbind(1)
        w = min(cfg.window, nl)
        win = lambda t: t[:nl].view(nl // w, w, h, -1)
        if not cfg.highways:
            out = _attend(win(q), win(k), win(v)).reshape(nl, -1)
        else:
            rows = slice(nl, nl + n_rows)
            cols = slice(nl + n_rows, nl + n_rows + n_cols)
            glob = x.shape[0] - 1
            # leaves: window + own row buffer + own column buffer + global
            ext = lambda t: torch.stack([t[rows][coords[:, 1]], t[cols][coords[:, 0]],
                                         t[glob].expand(nl, h, t.shape[-1])], 1)
            leaf = _attend(win(q), win(k), win(v), ext(k).view(nl // w, w, 3, h, -1),
                           ext(v).view(nl // w, w, 3, h, -1)).reshape(nl, -1)
            # row buffer r reads its leaves (grid[r, :]) plus itself and the global token
            own = lambda t, sl: torch.stack([t[sl], t[glob].expand(t[sl].shape)], 1)
            row = _attend(q[rows].unsqueeze(1), k[grid], v[grid],
                          own(k, rows).unsqueeze(1), own(v, rows).unsqueeze(1)).reshape(n_rows, -1)
            col = _attend(q[cols].unsqueeze(1), k[grid.T], v[grid.T],
                          own(k, cols).unsqueeze(1), own(v, cols).unsqueeze(1)).reshape(n_cols, -1)
            top = _attend(q[glob:].unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0)).reshape(1, -1)
            out = torch.cat([leaf, row, col, top])
        x = x + self.proj(out)
        return x + self.mlp(self.ln2(x))


class HTPModel(nn.Module):
    """System -> HMatrix. `forward(system)` runs the network once (float32) and assembles M."""

    def __init__(self, cfg: HTPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, k, r = cfg.d_model, cfg.k, cfg.rank
        self.embed = nn.Linear(CELL_FEATURES * cfg.leaf_size + LEAF_FEATURES, d)
        if cfg.highways:
            self.row_token = nn.Parameter(0.02 * torch.randn(d))
            self.col_token = nn.Parameter(0.02 * torch.randn(d))
            self.global_token = nn.Parameter(0.02 * torch.randn(d))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(d)
        self.leaf_head = nn.Linear(d, k * k)
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

    # ------------------------------------------------------------------ features
    def features(self, part: Partition, an: Analytic) -> torch.Tensor:
        """(nl, CELL_FEATURES * L + LEAF_FEATURES) scale-free leaf token inputs."""
        diag, east, west, north, south, real = an.arrays
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

    # ------------------------------------------------------------------ forward
    def tokens(self, part: Partition, an: Analytic) -> torch.Tensor:
        """Final leaf tokens (nl, d)."""
        cfg = self.cfg
        x = self.embed(self.features(part, an))
        coords = part.leaf_coords().to(x.device)
        n_cols, n_rows = part.tiles
        grid = torch.empty(n_rows, n_cols, dtype=torch.long, device=x.device)
        grid[coords[:, 1], coords[:, 0]] = torch.arange(part.n_leaves, device=x.device)
        nl = part.n_leaves
        if cfg.highways:
            rows = self.row_token + x[grid].mean(1)
            cols = self.col_token + x[grid.T].mean(1)
            x = torch.cat([x, rows, cols, (self.global_token + x.mean(0)).unsqueeze(0)])
        for block in self.blocks:
            x = block(x, grid, coords, n_rows, n_cols)
        return self.ln_f(x[:nl])

    def forward(self, system: PoissonSystem) -> HMatrix:
        cfg = self.cfg
        dtype = self.embed.weight.dtype
        system = system.to(device=self.embed.weight.device)     # the analytic part reads it in float64
        part = partition(system.nx, system.ny, cfg.leaf_size)
        an = Analytic.build(system, part, cfg.segments, cfg.rank, dtype)
        x = self.tokens(part, an)
        nl, k, r, depth = part.n_leaves, cfg.k, cfg.rank, part.depth
        leaf_corr = self.leaf_head(x).view(nl, k, k)
        means = [x]                                          # means[j]: the clusters j levels above the leaves
        for _ in range(depth):
            means.append(means[-1].view(-1, 2, x.shape[-1]).mean(1))
        halves = torch.cat([means[depth - d - 1].view(1 << d, -1) for d in range(depth)]) if depth \
            else x.new_zeros(0, 2 * x.shape[-1])
        geo = part.cluster_geometry().to(device=x.device, dtype=dtype) / GEO_SCALE.to(x.device, dtype)
        cluster_corr = self.cluster_head(self.ctx(halves) + self.geo(geo)).view(-1, r, r)
        return assemble(system, part, an, leaf_corr, cluster_corr, cfg.level_weight, cfg.eps)


def save_checkpoint(path: str | Path, model: HTPModel, record: dict, half: bool = False) -> None:
    """half: store floating tensors as float16 (half the file); load_checkpoint still gives a float32 model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"layout": LAYOUT, "config": asdict(model.cfg), "model": state, "record": record}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[HTPModel, dict]:
    """(model, record) from a checkpoint; ValueError if it is not an HTP checkpoint of this layout."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise ValueError(f"{path}: not an HTP checkpoint (expected a dict with 'config' and 'model')")
    if ckpt.get("layout") != LAYOUT:
        raise ValueError(f"{path}: trained for layout {ckpt.get('layout')!r}, this code reads {LAYOUT!r}")
    model = HTPModel(HTPConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model, ckpt.get("record", {})
