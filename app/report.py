"""What a headless run prints and writes: a progress line, per-frame JSON, system and field dumps, the summary."""
from __future__ import annotations

import json
import os
import statistics
import sys
from dataclasses import asdict
from pathlib import Path
from typing import IO, BinaryIO, Callable

import numpy as np
import torch

from precond import PoissonSystem
from precond.dumps import save_system
from sim import limits
from sim.simulation import Simulation
from sim.stats import FrameStats

from .preflight import OutputError


FRAME_RECORD_BYTES = 600  # what the report keeps per frame (a FrameStats: measured 544 bytes)
FIELD_DUMP_NAMES = ("phi", "u", "v", "pressure", "rho", "solid")  # Simulation.fields() arrays in a --dump-fields file
FIELD_DUMP_KEYS = (*FIELD_DUMP_NAMES, "time", "frame", "h", "ratio", "gravity")


def _write_whole(final: Path, flag: str, write: Callable[[Path], None]) -> None:
    """`write` a file under a temporary name, then rename it to `final`: a failed write (a full disk) leaves
    no partial file and raises OutputError naming `flag`."""
    partial = final.with_name(f".partial-{final.name}")
    try:
        write(partial)
        os.replace(partial, final)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise OutputError(f"{flag}: cannot write {str(final)!r} ({err.strerror or err}); "
                          f"the dumps before it are complete") from None


class RunReport:
    """Feed it every frame's stats (`on_frame`) and Poisson system (`on_system`); `summary()` gives the closing table.

    The stats file holds whole JSON lines only, and each dump is written under a temporary name and
    then renamed: a write that fails (a full disk) raises OutputError and leaves what was written
    before intact. A fallback's reason and a CFL number beyond what the advection tolerates are
    printed in full on the first progress line they occur on, and marked on the later ones."""

    def __init__(self, sim: Simulation, stats_json: str | None = None, dump_dir: str | None = None,
                 dump_every: int = 1, quiet: bool = False, out: IO[str] = sys.stdout,
                 fields_dir: str | None = None) -> None:
        self.sim, self.quiet, self.out = sim, quiet, out
        self.frames: list[FrameStats] = []
        self.initial_volume = sim.water_volume()
        self._said: set[str] = set()  # notes already printed in full
        self.stats_path = stats_json
        self._written = 0  # bytes of whole lines in the stats file
        try:
            self.json_file: BinaryIO | None = open(stats_json, "wb", buffering=0) if stats_json else None
        except OSError as err:
            raise OutputError(f"--stats-json: cannot write {stats_json!r} ({err.strerror})") from None
        self.dump_dir = Path(dump_dir) if dump_dir else None
        self.fields_dir = Path(fields_dir) if fields_dir else None
        self.dump_every = max(1, dump_every)
        if self.fields_dir:
            self._dump_fields()  # frame 0: the initial state

    def on_system(self, system: PoissonSystem, b: torch.Tensor) -> None:
        """Dump the system of every `dump_every`-th frame, if dumping (the sim's frame is the one just stepped)."""
        frame = self.sim.frame
        if not (self.dump_dir and frame % self.dump_every == 0):
            return
        _write_whole(self.dump_dir / f"frame{frame:07d}.npz", "--dump-systems",
                     lambda path: save_system(path, system, b, frame=frame, nx=self.sim.nx, ny=self.sim.ny,
                                              ratio=self.sim.ratio, scene=self.sim.scene.name))

    def _dump_fields(self) -> None:
        """Write the sim's cell-centred fields and time (FIELD_DUMP_KEYS) at its current frame, if a `dump_every`-th."""
        sim = self.sim
        if sim.frame % self.dump_every:
            return
        fields = sim.fields()
        arrays = {name: fields[name] for name in FIELD_DUMP_NAMES}
        _write_whole(self.fields_dir / f"fields{sim.frame:07d}.npz", "--dump-fields",
                     lambda path: np.savez(path, **arrays, time=np.float64(sim.time), frame=np.int64(sim.frame),
                                           h=np.float64(1.0 / sim.ny), ratio=np.float64(sim.ratio),
                                           gravity=np.float64(sim.scene.gravity)))

    def on_frame(self, stats: FrameStats) -> None:
        self.frames.append(stats)
        if self.fields_dir:
            self._dump_fields()
        if self.json_file:
            self._write_json(json.dumps(asdict(stats)).encode() + b"\n")
        if not self.quiet:
            print(f"frame {stats.frame:5d}  {stats.ms_total:7.1f} ms  {stats.solver:>7s} {stats.iterations:4d} it  "
                  f"res {stats.residual:.1e}  substeps {stats.substeps}  volume {stats.volume:.4f}"
                  f"{self._marks(stats)}", file=self.out, flush=True)

    def _marks(self, stats: FrameStats) -> str:
        """The progress line's warnings: in full the first time each is seen, then short."""
        marks = []
        if stats.over_cfl:
            marks.append(self._once("cfl", f"CFL {stats.cfl:.3g} > {limits.CFL.hi:g}",
                                    f"CFL {stats.cfl:.3g} > {limits.CFL.hi:g} (max_substeps "
                                    f"{self.sim.scene.time.max_substeps} caps the substeps; the flow is not accurate)"))
        if stats.fell_back:
            marks.append(self._once(stats.note.partition(":")[0], "FELL BACK", f"FELL BACK: {stats.note}"))
        return "".join(f"  {m}" for m in marks)

    def _once(self, key: str, short: str, full: str) -> str:
        if key in self._said:
            return short
        self._said.add(key)
        return full

    def _write_json(self, line: bytes) -> None:
        """Append one whole line; on failure cut the file back to the lines before it and raise OutputError."""
        view = memoryview(line)
        try:
            while view:
                view = view[self.json_file.write(view):]
        except OSError as err:
            try:
                self.json_file.truncate(self._written)
            except OSError:
                pass  # the file is as the failed write left it; the error below says why
            raise OutputError(f"--stats-json: cannot write {self.stats_path!r} ({err.strerror}); "
                              f"it holds the {len(self.frames) - 1} frames before") from None
        self._written += len(line)

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
            f"ratio {self.sim.ratio:g}, solver {'/'.join(solvers)} ({'compiled' if self.sim.solver.compiled else 'eager'})",
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
            f"   fallbacks {sum(s.fell_back for s in f)}   water volume {self.initial_volume:.4f} (start) -> "
            f"{f[-1].volume:.4f}",
        ]
        notes = list(dict.fromkeys(s.note for s in f if s.fell_back))
        if notes:
            others = f" (and {len(notes) - 1} other reasons)" if len(notes) > 1 else ""
            lines.append(f"fell back: {notes[0]}{others}")
        over = [s for s in f if s.over_cfl]
        if over:
            lines.append(f"CFL above {limits.CFL.hi:g} (what the advection tolerates) in {len(over)} frames, up to "
                         f"{max(s.cfl for s in over):.3g}: max_substeps {self.sim.scene.time.max_substeps} caps the "
                         f"substeps; raise it or lower time.frame_dt")
        return "\n".join(lines)
