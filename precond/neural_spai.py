"""neural_spai: the paper's learned baseline, a sparse approximate inverse trained per scale.

After Yang et al., "Learning SPAI preconditioners for CG on GPUs" (NeurIPS 2025):
M = G G^T + eps I with G sparse on A's 5-point pattern (a cell's own entry and one per
neighbour it is coupled to), predicted for every cell by a small convolutional network over
the grid (local message passing, one hop per 3x3 layer) from scale-free stencil features,
and trained with the Frobenius SAI loss ||M A - I||_F^2, estimated with Gaussian probes
(E ||M A z - z||^2 / ||z||^2). G is scaled by diag^-1/2, so M follows any uniform scaling of A,
and an untrained network is exactly Jacobi. M is SPD for every output (G G^T is PSD, eps > 0).

Its weakness, kept on purpose: one network per grid size. Checkpoints live in
assets/neural_spai/NXxNY.pt; a grid without its own checkpoint uses the one of the nearest
trained N (and says so in `note`). Train them with

    python -m precond.neural_spai --grids 32x32 64x64 128x64 128x128 256x256 [--steps 300]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .config import check_fields, is_int, is_positive
from .dataset import parse_grid, synthetic_sample
from .solver import PreconditionerUnavailable
from .system import PoissonSystem

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "assets" / "neural_spai"
LAYOUT = "neural-spai-5pt-v1"


@dataclass
class SPAIConfig:
    channels: int = 16
    layers: int = 3
    eps: float = 1e-4          # M += eps / max(diag) I

    def __post_init__(self) -> None:
        check_fields(self, {"channels": (is_int(1), "an integer >= 1"), "layers": (is_int(0), "an integer >= 0"),
                            "eps": (is_positive, "a finite number > 0")})


def stencil_features(system: PoissonSystem) -> torch.Tensor:
    """(1, 7, nx, ny): couplings to E, W, N, S over diag, Dirichlet weight over diag, log diag (centred), 1."""
    d = system.diag
    safe = torch.where(d > 0, d, torch.ones_like(d))
    logd = safe.log()
    feats = [system.cx / safe, system.west / safe, system.cy / safe, system.south / safe, system.dirichlet() / safe,
             (logd - logd.mean()) / 3.0, torch.ones_like(d)]
    return torch.stack(feats).unsqueeze(0)


class SPAINet(nn.Module):
    """Per-cell entries of G: (own, east, west, north, south), as multiples of diag^-1/2."""

    def __init__(self, cfg: SPAIConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        ch = 7
        for _ in range(cfg.layers):
            layers += [nn.Conv2d(ch, cfg.channels, 3, padding=1), nn.GELU()]
            ch = cfg.channels
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv2d(ch, 5, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, system: PoissonSystem) -> "SparseFactor":
        dtype = self.out.weight.dtype
        system = system.to(device=self.out.weight.device, dtype=dtype)
        g = self.out(self.body(stencil_features(system)))[0]
        g = g + torch.tensor([1.0, 0, 0, 0, 0], dtype=dtype, device=g.device)[:, None, None]
        d = system.diag
        scale = torch.where(d > 0, d, torch.ones_like(d)).rsqrt()
        pattern = torch.stack([torch.ones_like(d, dtype=torch.bool), system.cx != 0, system.west != 0,
                               system.cy != 0, system.south != 0])
        return SparseFactor(g * pattern * scale, self.cfg.eps / float(d.max()))


@dataclass
class SparseFactor:
    """M = G G^T + eps I with (G x)_k = g0 x_k + gE x_east + gW x_west + gN x_north + gS x_south."""

    g: torch.Tensor     # (5, nx, ny)
    eps: float

    def _g(self, x: torch.Tensor) -> torch.Tensor:
        g0, ge, gw, gn, gs = self.g
        out = g0 * x
        out[..., :-1, :] += ge[:-1] * x[..., 1:, :]
        out[..., 1:, :] += gw[1:] * x[..., :-1, :]
        out[..., :, :-1] += gn[:, :-1] * x[..., :, 1:]
        out[..., :, 1:] += gs[:, 1:] * x[..., :, :-1]
        return out

    def _gt(self, x: torch.Tensor) -> torch.Tensor:
        g0, ge, gw, gn, gs = self.g
        out = g0 * x
        out[..., 1:, :] += ge[:-1] * x[..., :-1, :]
        out[..., :-1, :] += gw[1:] * x[..., 1:, :]
        out[..., :, 1:] += gn[:, :-1] * x[..., :, :-1]
        out[..., :, :-1] += gs[:, 1:] * x[..., :, 1:]
        return out

    def apply(self, v: torch.Tensor) -> torch.Tensor:
        nx, ny = self.g.shape[1:]
        x = v.to(self.g.dtype).reshape(*v.shape[:-1], nx, ny)
        return (self._g(self._gt(x)) + self.eps * x).reshape(v.shape)


def sai_loss(factor: SparseFactor, system: PoissonSystem, z: torch.Tensor) -> torch.Tensor:
    """Hutchinson estimate of ||M A - I||_F^2 / n: mean ||M A z - z||^2 / ||z||^2 over Gaussian z."""
    az = system.matvec(z).to(factor.g.dtype)
    z = z.to(factor.g.dtype)
    return (((factor.apply(az) - z) ** 2).sum(1) / (z ** 2).sum(1)).mean()


def checkpoint_path(folder: Path, grid: tuple[int, int]) -> Path:
    return folder / f"{grid[0]}x{grid[1]}.pt"


def train_scale(grid: tuple[int, int], steps: int = 300, batch: int = 2, probes: int = 16, lr: float = 3e-3,
                seed: int = 0, cfg: SPAIConfig | None = None) -> tuple[SPAINet, dict]:
    """Train one network for one grid size on synthetic systems at ratios 1..1,000."""
    torch.manual_seed(seed)
    net = SPAINet(cfg or SPAIConfig())
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    loss_avg = float("nan")
    bar = tqdm(range(steps), desc=f"neural_spai {grid[0]}x{grid[1]}", dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(batch):
            system = synthetic_sample(rng, grids=(grid,)).system
            z = torch.randn(probes, system.n, generator=gen, dtype=torch.float64)
            loss = sai_loss(net(system), system, z) / batch
            loss.backward()
            total += float(loss.detach())
        opt.step()
        loss_avg = total if math.isnan(loss_avg) else 0.95 * loss_avg + 0.05 * total
        bar.set_postfix(loss=f"{loss_avg:.4f}")
    return net, {"grid": list(grid), "steps": steps, "batch": batch, "probes": probes, "lr": lr,
                 "seconds": time.time() - t0, "final_loss": loss_avg}


class NeuralSPAI:
    """Preconditioner protocol: picks the checkpoint trained for the system's grid size."""

    name = "neural_spai"

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder or os.environ.get("NEURAL_SPAI_DIR") or DEFAULT_DIR)
        self.available: dict[tuple[int, int], Path] = {}
        for f in sorted(self.folder.glob("*.pt")):
            try:
                self.available[parse_grid(f.stem)] = f
            except argparse.ArgumentTypeError:
                continue
        if not self.available:
            raise PreconditionerUnavailable(
                f"no neural_spai checkpoints in {self.folder} (train them with `python -m precond.neural_spai`)")
        self.nets: dict[tuple[int, int], SPAINet] = {}
        self.factor: SparseFactor | None = None
        self.note = ""

    def _net(self, grid: tuple[int, int]) -> SPAINet:
        key = grid if grid in self.available else min(
            self.available, key=lambda g: abs(math.log(g[0] * g[1] / (grid[0] * grid[1]))))
        self.note = "" if key == grid else f"no checkpoint for {grid[0]}x{grid[1]}, using {key[0]}x{key[1]}'s"
        if key not in self.nets:
            net, _ = load_checkpoint(self.available[key], LAYOUT, lambda cfg: SPAINet(SPAIConfig(**cfg)))
            self.nets[key] = net.eval()
        return self.nets[key]

    def setup(self, system: PoissonSystem) -> None:
        net = self._net(system.shape)
        if net.out.weight.device != system.device:
            net.to(system.device)
        with torch.no_grad():
            self.factor = net(system)

    def apply(self, r: torch.Tensor) -> torch.Tensor:
        if self.factor is None:
            raise RuntimeError("NeuralSPAI.apply before setup")
        return self.factor.apply(r).to(r.dtype)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m precond.neural_spai", description=__doc__.split("\n\n")[0])
    p.add_argument("--grids", type=parse_grid, nargs="+", default=[(32, 32), (64, 64), (128, 64), (128, 128)])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--probes", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_DIR)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for grid in args.grids:
        net, record = train_scale(grid, args.steps, args.batch, args.probes, args.lr, args.seed)
        record["command"] = "python -m precond.neural_spai " + " ".join(argv if argv is not None else sys.argv[1:])
        save_checkpoint(checkpoint_path(args.out, grid), LAYOUT, net, record)
        print(f"saved {checkpoint_path(args.out, grid)} ({record['seconds']:.0f} s, loss {record['final_loss']:.4f})")


if __name__ == "__main__":
    main()
