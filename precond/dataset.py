"""Training systems: randomised two-phase interfaces and the simulator's own frames.

    python -m precond.dataset --out data/htp [--count 400] [--grids 32x32 64x64 128x64 ...]
                              [--ratios 1 1000] [--seed 0] [--from-scenes] [--frames 60] [--every 10]

writes one `.npz` per system (arrays diag, cx, cy, b; see precond/dumps.py) with a progress
bar. Synthetic systems use precond/synthetic.py: a random pool with waves, drops and bubbles,
or a dam break, at a log-uniform density ratio, with an open (Dirichlet) or closed top.
With `--from-scenes` it also runs the simulator headless on every scenes/*.yaml for each
grid and ratio (through main.py, as `precond` never imports the simulator) and keeps every
`--every`-th frame. Nothing bulky is committed: the data are made by this command.
"""
from __future__ import annotations

import argparse
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .dumps import REPO, dump_scene, load_system, save_system
from .synthetic import dambreak_phi, random_phi, two_phase_system
from .system import PoissonSystem

GRIDS = ((32, 32), (64, 32), (32, 64), (64, 64), (96, 64), (128, 64), (64, 128), (96, 96), (128, 128), (256, 256))


def parse_grid(text: str) -> tuple[int, int]:
    nx, _, ny = text.lower().partition("x")
    try:
        return int(nx), int(ny)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NXxNY such as 128x64, got {text!r}") from None


@dataclass
class Sample:
    """One training system with its right-hand side and where it came from."""

    system: PoissonSystem
    b: torch.Tensor
    source: str
    ratio: float


def synthetic_sample(rng: np.random.Generator, grids=GRIDS, ratios: tuple[float, float] = (1.0, 1000.0)) -> Sample:
    """A random interface (or, one time in six, a dam break) on a random grid at a log-uniform ratio."""
    nx, ny = grids[rng.integers(len(grids))]
    ratio = float(math.exp(rng.uniform(math.log(ratios[0]), math.log(ratios[1]))))
    if rng.uniform() < 1 / 6:
        phi = dambreak_phi(nx, ny, width=rng.uniform(0.2, 0.6), height=rng.uniform(0.3, 0.8))
        kind = "dambreak"
    else:
        phi = random_phi(nx, ny, rng)
        kind = "random"
    open_top = bool(rng.uniform() < 0.7)
    system = two_phase_system(phi, ratio, open_top)
    b = system.project(torch.as_tensor(rng.standard_normal(system.n)))
    return Sample(system, b, f"{kind}{'' if open_top else '-closed'}", ratio)


def scene_samples(scenes: list[Path], grids, ratios: list[float], frames: int, every: int,
                  workdir: Path) -> list[Sample]:
    """Frames dumped by the simulator for every scene, grid and ratio."""
    jobs = [(s, g, r) for s in scenes for g in grids for r in ratios]
    out = []
    for scene, grid, ratio in tqdm(jobs, desc="simulator", unit="run"):
        dumps = dump_scene(scene, workdir / f"{scene.stem}_{grid[0]}x{grid[1]}_r{ratio:g}", frames, grid, ratio, every)
        tag = f"{scene.stem}_{grid[0]}x{grid[1]}_r{ratio:g}"
        out += [Sample(*load_system(path)[:2], f"{tag}:{path.stem}", ratio) for path in dumps]
    return out


def load_dir(path: str | Path) -> list[Sample]:
    """Every system dump (*.npz) under `path`, sorted by name."""
    files = sorted(Path(path).rglob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no .npz system dumps under {path}")
    out = []
    for f in files:
        system, b, meta = load_system(f)
        out.append(Sample(system, b, str(meta.get("source", f.stem)), float(meta.get("ratio", 0.0))))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m precond.dataset", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory for the .npz files")
    p.add_argument("--count", type=int, default=400, help="synthetic systems")
    p.add_argument("--grids", type=parse_grid, nargs="+", default=list(GRIDS))
    p.add_argument("--ratios", type=float, nargs=2, default=(1.0, 1000.0), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--from-scenes", action="store_true", help="also dump the simulator's frames of scenes/*.yaml")
    p.add_argument("--scenes", type=Path, nargs="+", help="scene files (default: scenes/*.yaml)")
    p.add_argument("--scene-grids", type=parse_grid, nargs="+", default=[(64, 64), (128, 64)])
    p.add_argument("--scene-ratios", type=float, nargs="+", default=[10.0, 100.0, 1000.0])
    p.add_argument("--frames", type=int, default=60, help="frames to simulate per scene run")
    p.add_argument("--every", type=int, default=10, help="keep every k-th frame")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for i in tqdm(range(args.count), desc="synthetic", unit="system"):
        s = synthetic_sample(rng, tuple(args.grids), tuple(args.ratios))
        save_system(args.out / f"synthetic_{args.seed}_{i:05d}.npz", s.system, s.b, source=s.source, ratio=s.ratio)
    if args.from_scenes:
        scenes = args.scenes or sorted((REPO / "scenes").glob("*.yaml"))
        if not scenes:
            raise SystemExit(f"--from-scenes: no scene files in {REPO / 'scenes'}")
        with tempfile.TemporaryDirectory() as tmp:
            samples = scene_samples(scenes, args.scene_grids, args.scene_ratios, args.frames, args.every, Path(tmp))
            for i, s in enumerate(samples):
                name = s.source.replace(":", "_")
                save_system(args.out / f"scene_{name}_{i:05d}.npz", s.system, s.b, source=s.source, ratio=s.ratio)
        print(f"{len(samples)} simulator systems")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
