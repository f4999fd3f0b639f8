"""The viewer's state as a plain object: what the panels show and change, and how it reaches a Simulation.

The window only edits a `ViewerState` and calls `apply` and `advance` once per frame; tests drive
the same object without a window. Changes that rebuild something (grid, solver, scene) are applied
between steps, so the simulation is always valid when it steps.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

import precond
from sim.limits import CELLS, GRID_SIDE
from sim.memory import MemoryLimitError
from sim.scene import Circle, Motion, SceneError, load_scene
from sim.simulation import Simulation, SimulationError
from sim.stats import FrameStats

from .render import RENDER_MODES

SCENE_DIR = Path(__file__).resolve().parent.parent / "scenes"
# The N slider's stops: CELLS.lo to CELLS.hi in steps of sqrt(2).
N_CHOICES: tuple[int, ...] = tuple(round(CELLS.lo * 2 ** (k / 2))
                                   for k in range(2 * round(math.log2(CELLS.hi / CELLS.lo)) + 1))
HISTORY_FRAMES = 500
POUR_RADIUS = 0.03  # domain units (the domain is 1 high)
PUSH_RADIUS = 0.08
PUSH_MAX_SPEED = 10.0  # m/s added by one mouse drag event at most
DISC_RADIUS = 0.06  # the solid disc the drag tool drops where no body is under the cursor
LEFT_TOOLS = ("pour water", "drag a solid")  # what the left mouse button does in the view


def grid_for(cells: int, aspect: float) -> tuple[int, int]:
    """(nx, ny) with nx / ny close to `aspect` and nx * ny close to `cells`, each side within the sim's limits."""
    ny = GRID_SIDE.clamp(round(math.sqrt(cells / aspect)))
    nx = GRID_SIDE.clamp(round(ny * aspect))
    return nx, ny


def list_scenes(folder: Path = SCENE_DIR) -> list[Path]:
    """The scene files the picker offers, sorted by name."""
    return sorted(folder.glob("*.yaml"))


def view_to_domain(pos: tuple[float, float], origin: tuple[float, float], size: tuple[float, float],
                   width: float) -> tuple[float, float]:
    """A pixel position (y down) over a view at `origin` of `size` pixels -> domain (x right in [0, width], y up in [0, 1])."""
    return (pos[0] - origin[0]) / size[0] * width, 1.0 - (pos[1] - origin[1]) / size[1]


class Trace:
    """One solver's last frames: the per-frame numbers the plots and the comparison table read."""

    KEYS = ("tick", "ms_total", "iterations", "fell_back")

    def __init__(self, maxlen: int) -> None:
        self._columns: dict[str, deque] = {key: deque(maxlen=maxlen) for key in self.KEYS}

    def append(self, tick: int, s: FrameStats) -> None:
        for key, value in zip(self.KEYS, (tick, s.ms_total, s.iterations, s.fell_back)):
            self._columns[key].append(float(value))

    def __len__(self) -> int:
        return len(self._columns["tick"])

    def array(self, key: str) -> np.ndarray:
        """A column as float64 (what implot plots), oldest first."""
        return np.fromiter(self._columns[key], dtype=np.float64, count=len(self))


@dataclass
class StatsHistory:
    """Per-solver traces of the last `maxlen` frames each; `tick` counts frames stepped since the viewer started."""

    maxlen: int = HISTORY_FRAMES
    traces: dict[str, Trace] = field(default_factory=dict)
    tick: int = 0
    last: Optional[FrameStats] = None

    def record(self, solver: str, stats: FrameStats) -> None:
        self.tick += 1
        self.traces.setdefault(solver, Trace(self.maxlen)).append(self.tick, stats)
        self.last = stats


@dataclass
class ViewerState:
    """Everything the panels control. Edit the fields, then `apply(sim)` before the next `advance(sim)`."""

    scene_path: str
    solver: str
    ratio: float
    grid: tuple[int, int]  # requested (nx, ny)
    aspect: float  # the scene's nx / ny, kept when N changes
    tol: float
    max_substeps: int
    render_mode: str = "phase"
    running: bool = True
    step_requested: bool = False
    reset_requested: bool = False
    error: str = ""  # why the simulation stopped, or what could not be done; shown in red
    compiling: str = ""  # the next step compiles a solve for a new grid shape: said on screen first
    left_tool: str = LEFT_TOOLS[0]
    grabbed: Optional[tuple[int, float, float]] = None  # the dragged body and where on it the cursor holds it
    history: StatsHistory = field(default_factory=StatsHistory)

    @classmethod
    def from_simulation(cls, sim: Simulation, render_mode: str = "phase") -> "ViewerState":
        if render_mode not in RENDER_MODES:
            raise ValueError(f"render mode: expected one of {', '.join(RENDER_MODES)}, got {render_mode!r}")
        scene = sim.scene
        return cls(scene_path=scene.source, solver=sim.solver.method, ratio=sim.ratio, grid=(sim.nx, sim.ny),
                   aspect=scene.grid.nx / scene.grid.ny, tol=sim.solver.tol,
                   max_substeps=scene.time.max_substeps, render_mode=render_mode)

    @property
    def cells(self) -> int:
        return self.grid[0] * self.grid[1]

    def set_cells(self, cells: int) -> None:
        """Ask for about `cells` cells (clamped to limits.CELLS) at the scene's aspect ratio."""
        self.grid = grid_for(CELLS.clamp(int(cells)), self.aspect)

    def apply(self, sim: Simulation) -> Simulation:
        """Bring `sim` in line with the state; returns the simulation to use from now on (a new one after a scene switch).

        A grid or scene that does not fit in free memory is refused into `error`; the run goes on as it was."""
        if Path(self.scene_path).resolve() != Path(sim.scene.source).resolve():
            sim = self._switch_scene(sim)
        if (sim.nx, sim.ny) != self.grid:
            try:
                sim.resize(*self.grid)
            except MemoryLimitError as err:  # the run goes on at the grid it has
                self.grid, self.error = (sim.nx, sim.ny), str(err)
        if sim.ratio != self.ratio:
            sim.set_ratio(self.ratio)
        if sim.solver.method != self.solver or sim.solver.tol != self.tol:
            sim.set_solver(precond.Solver(self.solver, tol=self.tol, maxiter=sim.scene.solver.maxiter,
                                          compiled=sim.scene.solver.compiled))
        if sim.scene.time.max_substeps != self.max_substeps:
            sim.set_max_substeps(self.max_substeps)
        if self.reset_requested:
            self.reset_requested = False
            sim.reset()
            self.error = ""
            self.grabbed = None
        return sim

    def _switch_scene(self, sim: Simulation) -> Simulation:
        """A new simulation of `scene_path` at its own grid and ratio, keeping the chosen solver and tolerance."""
        try:
            scene = load_scene(self.scene_path, methods=precond.METHODS)
            new = Simulation.from_scene(replace(scene, solver=replace(scene.solver, method=self.solver,
                                                                      tol=self.tol)), device=sim.device)
        except (SceneError, MemoryLimitError) as err:
            self.error = str(err)
            self.scene_path = sim.scene.source
            return sim
        self.grid, self.aspect, self.ratio = (new.nx, new.ny), scene.grid.nx / scene.grid.ny, new.ratio
        self.max_substeps, self.error, self.grabbed = scene.time.max_substeps, "", None
        return new

    def advance(self, sim: Simulation) -> Optional[FrameStats]:
        """Step once if running or a single step was asked for; a SimulationError pauses and lands in `error`."""
        if not (self.running or self.step_requested):
            return None
        if not self.compiling:
            self.compiling = sim.solver.compile_pending(sim.nx, sim.ny)
            if self.compiling:
                return None             # one frame that shows the notice; the next one compiles
        self.step_requested = False
        try:
            stats = sim.step()
        except SimulationError as err:
            self.compiling = ""
            self.running = False
            self.error = str(err)
            return None
        self.compiling = ""
        self.history.record(self.solver, stats)
        return stats

    def pour(self, sim: Simulation, x: float, y: float) -> None:
        """Add a disc of water at a domain position (ignored outside the domain)."""
        if 0.0 <= x <= sim.nx / sim.ny and 0.0 <= y <= 1.0:
            sim.add_water(x, y, POUR_RADIUS)

    def drag(self, sim: Simulation, x: float, y: float) -> None:
        """The drag tool with the button held at (x, y): the first frame grabs the body under the cursor, or
        drops a solid disc there; every frame moves the grabbed body along with the cursor (through the
        fluid while running, straight there while paused)."""
        width = sim.nx / sim.ny
        if self.grabbed is None:
            if not (0.0 <= x <= width and 0.0 <= y <= 1.0):
                return
            k = sim.body_at(x, y)
            if k is None:
                k = sim.add_body(Circle((x, y), DISC_RADIUS, "solid", motion=Motion()))
            cx, cy = sim.body_centres()[k]
            self.grabbed = (k, cx - x, cy - y)
        k, ox, oy = self.grabbed
        move = sim.move_body if self.running else sim.place_body
        move(k, min(max(x, 0.0), width) + ox, min(max(y, 0.0), 1.0) + oy)

    def let_go(self) -> None:
        """The drag tool's button is up: the body stays where it is."""
        self.grabbed = None

    def stir(self, sim: Simulation, x: float, y: float, dx: float, dy: float) -> None:
        """Push the fluid at (x, y) along a mouse drag of (dx, dy) domain units made during one frame."""
        if not (0.0 <= x <= sim.nx / sim.ny and 0.0 <= y <= 1.0) or (dx == 0.0 and dy == 0.0):
            return
        frame_dt = sim.scene.time.frame_dt
        du, dv = (max(-PUSH_MAX_SPEED, min(PUSH_MAX_SPEED, d / frame_dt)) for d in (dx, dy))
        sim.push(x, y, du, dv, PUSH_RADIUS)
