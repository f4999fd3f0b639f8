"""Train the HTP network.

    python -m precond.train [--steps 400] [--data DIR] [--loss cosine|sai] [--no-highways]
                            [--out assets/htp.pt] [--record assets/htp.json] [--threads 2]
    torchrun --nproc_per_node K -m precond.train ...        (DDP, gloo on CPU, nccl on CUDA)

Each step draws `--batch` systems per process (from `--data`, a folder written by
`python -m precond.dataset`, or generated on the fly with the same generator) and a fresh set
of probes for each, and takes one AdamW step on the probe loss (precond/loss.py). Every
`--eval-every` steps the network is judged by what matters: PCG iterations to 1e-6 on a fixed
held-out set of systems (other seeds, other shapes, ratios 1 to 1,000); the best network
by that metric is the one saved. Checkpoints are plain dicts (config, weights, record) and
load with `torch.load(..., weights_only=True)`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from .dataset import Sample, load_dir, synthetic_sample
from .htp import HTP, HTPConfig, HTPModel
from .loss import LossConfig, make_probes, probe_loss
from .solver import Solver
from .synthetic import dambreak_phi, random_phi, two_phase_system
from .system import PoissonSystem

VAL_CASES = ((32, 32, 1000.0, "dambreak"), (64, 64, 1.0, "random"), (64, 64, 1000.0, "random"),
             (128, 64, 100.0, "dambreak"), (128, 64, 1000.0, "random-closed"), (96, 96, 10.0, "random"),
             (128, 128, 1000.0, "random"), (48, 80, 300.0, "random"), (256, 256, 100.0, "dambreak"))


@dataclass
class TrainConfig:
    steps: int = 400
    batch: int = 2                 # systems per process per step
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 50
    min_lr_frac: float = 0.1
    clip: float = 1.0
    eval_every: int = 100
    seed: int = 0
    keep: str = "best"             # "best": the weights with the fewest validation iterations; "last": the final ones
    data: str | None = None        # folder of .npz dumps; None: synthetic systems drawn on the fly
    loss: LossConfig = field(default_factory=LossConfig)
    model: HTPConfig = field(default_factory=HTPConfig)


class Objective(nn.Module):
    """The probe loss of one system as a module, so DDP sees one forward per backward."""

    def __init__(self, model: HTPModel, loss: LossConfig) -> None:
        super().__init__()
        self.model, self.loss = model, loss
        self.htp = HTP.from_model(model)

    def forward(self, system: PoissonSystem, z: torch.Tensor) -> torch.Tensor:
        return probe_loss(self.htp.operator(system), system, z, self.loss.kind, self.loss.cg_steps)


def validation_set() -> list[Sample]:
    """Fixed held-out systems (seeds never used for training)."""
    out = []
    for i, (nx, ny, ratio, kind) in enumerate(VAL_CASES):
        rng = np.random.default_rng(10_000 + i)
        phi = dambreak_phi(nx, ny) if kind == "dambreak" else random_phi(nx, ny, rng)
        system = two_phase_system(phi, ratio, open_top=not kind.endswith("closed"))
        b = system.project(torch.as_tensor(rng.standard_normal(system.n)))
        out.append(Sample(system, b, f"{kind} {nx}x{ny} ratio {ratio:g}", ratio))
    return out


def pcg_iterations(model: HTPModel, samples: list[Sample], tol: float = 1e-6, maxiter: int = 2000) -> list[int]:
    """PCG iterations with the network's preconditioner (maxiter when it does not converge), on the
    network's device."""
    model.eval()
    device = model.embed.weight.device
    solver = Solver("htp", tol=tol, maxiter=maxiter, fallback=None, precond=HTP.from_model(model))
    its = []
    for s in samples:
        res = solver.solve(s.system.to(device=device), s.b.to(device))
        its.append(res.iterations if res.converged else maxiter)
    model.train()
    return its


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def train(cfg: TrainConfig, out: str | Path | None = None, init: str | Path | None = None, quiet: bool = False,
          val: list[Sample] | None = None) -> tuple[HTPModel, dict]:
    """Train (DDP when launched by torchrun); returns the model (best by validation iterations, or the
    last weights with cfg.keep == "last", as ablations compare) and a record.

    `val` replaces the held-out set (an empty list skips validation: the last weights are kept).
    """
    if cfg.keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {cfg.keep!r}")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)                      # same initial weights on every rank
    model = (HTP(init).model if init else HTPModel(cfg.model)).train()
    cfg.model = model.cfg
    model.to(device)
    objective = Objective(model, cfg.loss)
    wrapped = nn.parallel.DistributedDataParallel(objective) if distributed else objective
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed * 1000 + rank)
    probe_gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    pool = load_dir(cfg.data) if cfg.data else None
    if rank != 0 or cfg.eval_every <= 0:
        val = []
    elif val is None:
        val = validation_set()
    record: dict = {"val_cases": [s.source for s in val], "history": []}
    best = (float("inf"), None, -1)
    t0 = time.time()
    bar = tqdm(range(cfg.steps + 1), desc="train", disable=quiet or rank != 0, dynamic_ncols=True)
    loss_avg = float("nan")
    for step in bar:
        if val and (step % cfg.eval_every == 0 or step == cfg.steps):
            its = pcg_iterations(model, val)
            mean_its = float(np.mean(its))
            record["history"].append({"step": step, "loss": loss_avg, "val_iterations": its,
                                      "val_mean": mean_its, "seconds": time.time() - t0})
            bar.write(f"step {step:5d}  loss {loss_avg:.4f}  val PCG iterations {its} mean {mean_its:.1f}")
            if mean_its < best[0]:
                best = (mean_its, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, step)
                if out and cfg.keep == "best":
                    HTP.from_model(model, {**record, "best_step": step, "val_mean": mean_its}).save(out)
        if step == cfg.steps:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for i in range(cfg.batch):
            s = pool[rng.integers(len(pool))] if pool else synthetic_sample(rng)
            system = s.system.to(device=device)
            z = make_probes(system, cfg.loss, probe_gen)
            sync = i == cfg.batch - 1 or not distributed
            with contextlib.nullcontext() if sync else wrapped.no_sync():
                loss = wrapped(system, z) / cfg.batch
                loss.backward()
            total += float(loss.detach())
        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        loss_avg = total if math.isnan(loss_avg) else 0.9 * loss_avg + 0.1 * total
        bar.set_postfix(loss=f"{loss_avg:.4f}")
    record.update(steps=cfg.steps, world_size=world, seconds=time.time() - t0, best_val_mean=best[0], best_step=best[2])
    if best[1] is not None and cfg.keep == "best":
        model.load_state_dict(best[1])
    if distributed:
        dist.destroy_process_group()
    return model, record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m precond.train", description=__doc__.split("\n\n")[0])
    d, m, lo = TrainConfig(), HTPConfig(), LossConfig()
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch, help="systems per process per step")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="validate every k steps (0: never)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--keep", choices=("best", "last"), default=d.keep,
                   help="save the weights with the fewest validation iterations, or the last ones (ablations)")
    p.add_argument("--data", help="folder of .npz systems from `python -m precond.dataset` (default: synthetic on the fly)")
    p.add_argument("--loss", choices=("cosine", "sai", "pcg"), default=lo.kind)
    p.add_argument("--cg-steps", type=int, default=lo.cg_steps, help="pcg loss: PCG iterations unrolled per probe")
    p.add_argument("--probes", type=int, default=lo.probes)
    p.add_argument("--smoothing", type=int, nargs="+", default=list(lo.smoothing), help="Jacobi sweeps per probe group")
    p.add_argument("--no-highways", action="store_true", help="ablation: window attention only")
    p.add_argument("--d-model", type=int, default=m.d_model)
    p.add_argument("--layers", type=int, default=m.n_layers)
    p.add_argument("--heads", type=int, default=m.n_heads)
    p.add_argument("--rank", type=int, default=m.rank)
    p.add_argument("--init", help="start from this checkpoint")
    p.add_argument("--out", default="assets/htp.pt")
    p.add_argument("--record", default="assets/htp.json", help="JSON record of the run (rank 0)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    p.add_argument("--half", action="store_true", help="store weights as float16 (ablation checkpoints)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, eval_every=args.eval_every, seed=args.seed,
                      keep=args.keep, data=args.data,
                      loss=LossConfig(kind=args.loss, probes=args.probes, smoothing=tuple(args.smoothing),
                                      cg_steps=args.cg_steps),
                      model=HTPConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, rank=args.rank,
                                      highways=not args.no_highways))
    model, record = train(cfg, out=args.out, init=args.init)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    record.update(command=" ".join(["python -m precond.train", *(argv if argv is not None else sys.argv[1:])]),
                  data=args.data or "synthetic on the fly (precond.dataset.synthetic_sample)",
                  config=asdict(cfg), parameters=sum(q.numel() for q in model.parameters()))
    if args.eval_every > 0:
        base = validation_set()
        record.update(final_val_iterations=pcg_iterations(model, base),
                      val_jacobi=[Solver("jacobi", maxiter=5000, fallback=None).solve(s.system, s.b).iterations
                                  for s in base])
    HTP.from_model(model, record).save(args.out, half=args.half)
    if args.record:
        Path(args.record).write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"saved {args.out}" + (f" (val PCG iterations {record['final_val_iterations']}, Jacobi {record['val_jacobi']})"
                                 if args.eval_every > 0 else ""))


if __name__ == "__main__":
    main()
