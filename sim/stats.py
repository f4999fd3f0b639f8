"""What one frame reports (`FrameStats`) and the clock that times a frame's phases to build it."""
from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from precond import SolveResult


@dataclass
class FrameStats:
    """One frame: times in ms summed over its substeps, solver figures summed (iterations) or worst (residual)."""

    frame: int
    time: float  # simulated time at the end of the frame (s)
    dt: float  # length of the last substep (s)
    substeps: int
    cfl: float  # largest |velocity| dt / h of the substeps; above scene cfl when max_substeps capped it
    over_cfl: bool  # cfl above limits.CFL.hi, what the advection tolerates: the substep cap forced it
    ms_advect: float  # state check, advection, gravity, reinitialisation and volume correction
    ms_assemble: float  # A and b, plus building the PoissonSystem
    ms_inference: float  # preconditioner setup (SolveResult.setup_seconds)
    ms_pcg: float  # PCG iterations
    ms_project: float
    ms_total: float
    iterations: int
    residual: float
    converged: bool
    solver: str  # the method(s) that produced the pressure, '/'-joined if they differed
    fell_back: bool
    note: str
    volume: float  # water fraction of the domain
    volume_shift: float  # the volume correction's shift of the interface at this frame's reinitialisation, cells

    @property
    def ms_sim(self) -> float:
        """The simulation's own work: advect + assemble + project."""
        return self.ms_advect + self.ms_assemble + self.ms_project


class FrameClock:
    """Wall-clock seconds per phase of one frame (advect, assemble, solve, project), summed over substeps.

    `sync` waits for queued device work, so that a phase's time is its own on CUDA too."""

    PHASES = ("advect", "assemble", "solve", "project")

    def __init__(self, sync: Callable[[], None]) -> None:
        self._sync = sync
        self._start = time.perf_counter()
        self.seconds = dict.fromkeys(self.PHASES, 0.0)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] += time.perf_counter() - t0

    def stats(self, frame: int, sim_time: float, dt: float, cfl: float, over_cfl: bool,
              solves: Sequence[SolveResult], volume: float, volume_shift: float) -> FrameStats:
        """The frame's FrameStats: its phase times, total time so far and its substeps' solves, in order."""
        total = time.perf_counter() - self._start
        setup = sum(r.setup_seconds for r in solves)
        return FrameStats(
            frame=frame, time=sim_time, dt=dt, substeps=len(solves), cfl=cfl, over_cfl=over_cfl,
            ms_advect=1e3 * self.seconds["advect"], ms_assemble=1e3 * self.seconds["assemble"],
            ms_inference=1e3 * setup, ms_pcg=1e3 * (self.seconds["solve"] - setup),
            ms_project=1e3 * self.seconds["project"], ms_total=1e3 * total,
            iterations=sum(r.iterations for r in solves), residual=max([0.0, *(r.residual for r in solves)]),
            converged=all(r.converged for r in solves), solver="/".join(_unique(r.method for r in solves)),
            fell_back=any(r.fell_back for r in solves), note="; ".join(_unique(r.note for r in solves)),
            volume=volume, volume_shift=volume_shift)


def _unique(items: Iterable[str]) -> list[str]:
    """The non-empty items, each once, in first-seen order."""
    return list(dict.fromkeys(item for item in items if item))
