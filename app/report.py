"""What a headless run prints and writes: a progress line, per-frame JSON, system dumps, the summary."""
from __future__ import annotations

import json
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import IO

import torch

from precond import PoissonSystem
from precond.dumps import save_system
from sim.simulation import Simulation
from sim.stats import FrameStats


class RunReport:
    """Feed it every frame's stats (`on_frame`) and Poisson system (`on_system`); `summary()` gives the closing table."""

    def __init__(self, sim: Simulation, stats_json: str | None = None, dump_dir: str | None = None,
                 dump_every: int = 1, quiet: bool = False, out: IO[str] = sys.stdout) -> None:
        self.sim, self.quiet, self.out = sim, quiet, out
        self.frames: list[FrameStats] = []
        self.json_file = open(stats_json, "w") if stats_json else None
        self.dump_dir = Path(dump_dir) if dump_dir else None
        if self.dump_dir:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
        self.dump_every = max(1, dump_every)

    def on_system(self, system: PoissonSystem, b: torch.Tensor) -> None:
        """Dump the system of every `dump_every`-th frame, if dumping (the sim's frame is the one just stepped)."""
        frame = self.sim.frame
        if self.dump_dir and frame % self.dump_every == 0:
            save_system(self.dump_dir / f"frame{frame:05d}.npz", system, b, frame=frame, nx=self.sim.nx,
                        ny=self.sim.ny, ratio=self.sim.ratio, scene=self.sim.scene.name)

    def on_frame(self, stats: FrameStats) -> None:
        self.frames.append(stats)
        if self.json_file:
            self.json_file.write(json.dumps(asdict(stats)) + "\n")
            self.json_file.flush()
        if not self.quiet:
            mark = "  FELL BACK: " + stats.note if stats.fell_back else ""
            print(f"frame {stats.frame:5d}  {stats.ms_total:7.1f} ms  {stats.solver:>7s} {stats.iterations:4d} it  "
                  f"res {stats.residual:.1e}  substeps {stats.substeps}  volume {stats.volume:.4f}{mark}",
                  file=self.out, flush=True)

    def close(self) -> None:
        if self.json_file:
            self.json_file.close()
            self.json_file = None

    def summary(self) -> str:
        """Median and mean ms/frame split, iterations, fps. Frame 1 (kernel compilation, solver set-up
        per grid shape) is left out of the timings when there are more, and reported on its own."""
        f = self.frames
        if not f:
            return "no frames run"
        timed = f[1:] if len(f) > 1 else f
        parts = {
            "total": [s.ms_total for s in timed],
            "sim": [s.ms_sim for s in timed],
            "  advect": [s.ms_advect for s in timed],
            "  assemble": [s.ms_assemble for s in timed],
            "  project": [s.ms_project for s in timed],
            "inference": [s.ms_inference for s in timed],
            "pcg": [s.ms_pcg for s in timed],
        }
        its = [s.iterations for s in f]
        solvers = sorted({s.solver for s in f})
        first = f"; frame 1 ({f[0].ms_total:.0f} ms, compiling) left out" if len(f) > 1 else ""
        lines = [
            f"{len(f)} frames of {self.sim.scene.name} at {self.sim.nx}x{self.sim.ny} (N={self.sim.nx * self.sim.ny}), "
            f"ratio {self.sim.ratio:g}, solver {'/'.join(solvers)}",
            f"ms/frame       median      mean   (sim = advect + assemble + project; inference = "
            f"preconditioner set-up{first})",
        ]
        lines += [f"  {name:<11s} {statistics.median(v):8.2f}  {statistics.fmean(v):8.2f}" for name, v in parts.items()]
        total = parts["total"]
        lines += [
            f"iterations  mean {statistics.fmean(its):.1f}  median {statistics.median(its):g}  max {max(its)}   "
            f"final residual max {max(s.residual for s in f):.1e}   substeps mean "
            f"{statistics.fmean(s.substeps for s in f):.2f}",
            f"fps  {1000.0 / statistics.median(total):.1f} (median)  {1000.0 / statistics.fmean(total):.1f} (mean)"
            f"   fallbacks {sum(s.fell_back for s in f)}   water volume {f[0].volume:.4f} -> {f[-1].volume:.4f}",
        ]
        return "\n".join(lines)
