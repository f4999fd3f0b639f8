"""The two-phase simulation: state on a MAC grid, one `step()` per frame, the fields the viewer draws.

A frame of `scene.time.frame_dt` is split into substeps by the CFL condition (velocity and
gravity), at most `max_substeps`. Each substep: check the state, advect velocity (semi-
Lagrangian) and the level set (MacCormack), add gravity, assemble A p = b (sim.assemble), solve
it with the precond solver (warm-started from the last pressure), project. After the last
substep the level set is reinitialised and, if enabled, its volume corrected. A non-finite
value stops the step with SimulationError before it reaches the state.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

import precond
from precond import PoissonSystem, SolveResult

from . import backend, grid, levelset
from .advect import advect
from .assemble import BAD_PHI, BAD_PRESSURE, BAD_SYSTEM, BAD_U, BAD_V, assemble, check, project
from .fields import FIELD_NAMES, cell_fields, push
from .scene import GRID_MAX, GRID_MIN, RATIO_MAX, RATIO_MIN, Scene

BAND_CELLS = 8.0  # MacCormack runs within this many cells of the interface
MAX_SHIFT_CELLS = 0.5  # the volume correction moves the interface by at most this much per frame
SETTLE_PASSES = 4  # reinitialisation passes after a reset or resize
_WHAT = ((BAD_U, "velocity u"), (BAD_V, "velocity v"), (BAD_PHI, "level set phi"),
         (BAD_SYSTEM, "Poisson system (coefficients or right-hand side)"), (BAD_PRESSURE, "pressure"))


class SimulationError(RuntimeError):
    """The simulation cannot go on (a non-finite value appeared); the message names the field and the frame."""


@dataclass
class FrameStats:
    """One frame: times in ms summed over its substeps, solver figures summed (iterations) or worst (residual)."""

    frame: int
    time: float  # simulated time at the end of the frame (s)
    dt: float  # length of the last substep (s)
    substeps: int
    cfl: float  # largest |velocity| dt / h of the substeps; above scene cfl when max_substeps capped it
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


def _cfl_dt(vmax: float, gravity: float, cfl: float, h: float) -> float:
    """Largest dt with (vmax + |g| dt) dt <= cfl h."""
    denom = vmax + math.sqrt(vmax * vmax + 4.0 * abs(gravity) * cfl * h)
    return math.inf if denom == 0.0 else 2.0 * cfl * h / denom


def _check_grid(nx: int, ny: int) -> None:
    for name, n in (("nx", nx), ("ny", ny)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not GRID_MIN <= n <= GRID_MAX:
            raise ValueError(f"{name}: expected an integer from {GRID_MIN} to {GRID_MAX}, got {n!r}")


def _check_finite(**values: float) -> None:
    for name, v in values.items():
        if not math.isfinite(v):
            raise ValueError(f"{name}: expected a finite number, got {v!r}")


class Simulation:
    """Water and air in a box, driven by `step()`; see the module notes for what a step does."""

    def __init__(self, scene: Scene, solver: precond.Solver, device: str = "cpu") -> None:
        backend.init(device)
        self.scene = scene
        self.solver = solver
        self.device = device
        self.ratio = float(scene.ratio)
        self.nx, self.ny = scene.grid.nx, scene.grid.ny
        self._torch_device = torch.device(device)
        self._s = grid.acquire(self, self.nx, self.ny)
        self.reset()

    # ------------------------------------------------------------------ setup
    def reset(self) -> None:
        """Back to the scene's initial state at frame 0, keeping the current grid, ratio and solver."""
        nx, ny, h = self.nx, self.ny, 1.0 / self.ny
        self._s.set_size(nx, ny, self.scene.open_top)
        phi = levelset.initial_phi(self.scene.shapes, nx, ny)
        u = np.zeros((nx + 1, ny))
        v = np.zeros((nx, ny + 1))
        ux, uy = np.meshgrid(np.arange(nx + 1) * h, (np.arange(ny) + 0.5) * h, indexing="ij")
        vx, vy = np.meshgrid((np.arange(nx) + 0.5) * h, np.arange(ny + 1) * h, indexing="ij")
        for shape in self.scene.shapes:
            if shape.velocity is not None:
                u[shape.sdf(ux, uy) < 0.0] = shape.velocity[0]
                v[shape.sdf(vx, vy) < 0.0] = shape.velocity[1]
        self.frame = 0
        self.time = 0.0
        self._load(phi, u, v, np.zeros((nx, ny)))
        self._target = self._volume

    def _load(self, phi: np.ndarray, u: np.ndarray, v: np.ndarray, p: np.ndarray) -> None:
        """Write a state (walls zeroed), rebuild phi as a distance and measure the water volume."""
        u[0, :] = u[-1, :] = 0.0
        v[:, 0] = 0.0
        if not self.scene.open_top:
            v[:, -1] = 0.0
        for name, values in (("phi", phi), ("u", u), ("v", v), ("p", p)):
            self._s.write(name, values)
        for _ in range(SETTLE_PASSES):
            vol = levelset.reinitialize(self._s, 0.0)[0]
        self._volume = float(vol) / (self.nx * self.ny)
        self._shift = 0.0
        self._vmax = self._checked(float(check(self._s)), "in the new state")
        self._x_prev: Optional[torch.Tensor] = None
        self._dt_prev = 1.0
        self.last_system: Optional[PoissonSystem] = None
        self.last_rhs: Optional[torch.Tensor] = None
        self.last_result: Optional[SolveResult] = None

    # ------------------------------------------------------------------ controls
    def set_ratio(self, ratio: float) -> None:
        """Density ratio rho_water / rho_air from 1 to 1000, used from the next substep on."""
        if not RATIO_MIN <= float(ratio) <= RATIO_MAX:
            raise ValueError(f"ratio: expected a number from {RATIO_MIN:g} to {RATIO_MAX:g}, got {ratio!r}")
        self.ratio = float(ratio)

    def set_solver(self, solver: precond.Solver) -> None:
        """Use `solver` for the pressure from the next substep on."""
        self.solver = solver

    def resize(self, nx: int, ny: int) -> None:
        """Re-sample the state onto an nx x ny grid (bilinear, over the same stretched domain) and go on."""
        _check_grid(nx, ny)
        nx, ny = int(nx), int(ny)
        old, cells = self._s.state(), (self.nx, self.ny)
        if not self._s.fits(nx, ny):
            grid.release(self._s)
            self._s = grid.acquire(self, nx, ny)
        self._s.set_size(nx, ny, self.scene.open_top)
        self.nx, self.ny = nx, ny
        new = (nx, ny)
        self._load(grid.resample(old["phi"], (nx, ny), (0.5, 0.5), cells, new),
                   grid.resample(old["u"], (nx + 1, ny), (0.0, 0.5), cells, new),
                   grid.resample(old["v"], (nx, ny + 1), (0.5, 0.0), cells, new),
                   grid.resample(old["p"], (nx, ny), (0.5, 0.5), cells, new))

    def add_water(self, x: float, y: float, radius: float) -> None:
        """Add a disc of water (domain units); the volume correction keeps it from then on."""
        _check_finite(x=x, y=y, radius=radius)
        if radius <= 0.0:
            raise ValueError(f"radius: expected a number above 0, got {radius!r}")
        levelset.add_disc(self._s, x, y, radius)
        before = self._volume
        self._volume = float(levelset.reinitialize(self._s, 0.0)[0]) / (self.nx * self.ny)
        self._target += self._volume - before

    def push(self, x: float, y: float, du: float, dv: float, radius: float) -> None:
        """Add velocity (du, dv) in m/s within `radius` of (x, y), fading to the rim (domain units)."""
        _check_finite(x=x, y=y, du=du, dv=dv, radius=radius)
        if radius <= 0.0:
            raise ValueError(f"radius: expected a number above 0, got {radius!r}")
        self._vmax = max(self._vmax, float(push(self._s, x, y, radius, du, dv)))

    # ------------------------------------------------------------------ readout
    def water_volume(self) -> float:
        """Water area as a fraction of the domain (smoothed over one cell at the interface)."""
        return self._volume

    def fields(self) -> dict[str, np.ndarray]:
        """phi, rho, pressure (Pa-like units: rho_air = 1, m, s), speed, vorticity, u, v at the cell centres, float32."""
        out = np.empty((len(FIELD_NAMES), self.nx, self.ny), dtype=np.float32)
        cell_fields(self._s, out, self.ratio)
        return {name: out[k] for k, name in enumerate(FIELD_NAMES)}

    # ------------------------------------------------------------------ stepping
    def _checked(self, value: float, where: str) -> float:
        """Pass a kernel's max speed through; a negative value is minus the flags of what went non-finite."""
        if value >= 0.0:
            return value
        flags = int(-value)
        names = [name for bit, name in _WHAT if flags & bit]
        raise SimulationError(f"frame {self.frame + 1} (t = {self.time:.4f} s): non-finite {' and '.join(names)} "
                              f"{where}; the step was stopped")

    def step(self) -> FrameStats:
        """Advance one frame; raises SimulationError on non-finite values, before they reach the state."""
        t_start = time.perf_counter()
        s, settings, h = self._s, self.scene.time, 1.0 / self.ny
        g = self.scene.gravity
        ms = dict(advect=0.0, assemble=0.0, inference=0.0, pcg=0.0, project=0.0)
        iterations, residual, converged, fell_back = 0, 0.0, True, False
        methods: list[str] = []
        notes: list[str] = []
        remaining, substeps, cfl, dt = settings.frame_dt, 0, 0.0, 0.0
        while remaining > 1e-9 * settings.frame_dt:
            t0 = time.perf_counter()
            n = max(1, min(math.ceil(remaining / _cfl_dt(self._vmax, g, settings.cfl, h) - 1e-9),
                           settings.max_substeps - substeps))
            dt = remaining / n
            self._checked(-float(advect(s, dt / h, g * dt, BAND_CELLS * h)), "in the state before the substep")
            backend.sync()
            t1 = time.perf_counter()
            packed = torch.empty((4, self.nx, self.ny), dtype=torch.float64, device=self._torch_device)
            self._checked(-float(assemble(s, packed, 1.0 / self.ratio)), "after advection and gravity")
            system = PoissonSystem(packed[0], packed[1], packed[2])
            b = packed[3].reshape(-1)
            t2 = time.perf_counter()
            x0 = None if self._x_prev is None else self._x_prev * (dt / self._dt_prev)
            res = self.solver.solve(system, b, x0=x0)
            t3 = time.perf_counter()
            vmax = self._checked(float(project(s, res.x, h / dt)), f"from the {res.method} solve")
            backend.sync()
            t4 = time.perf_counter()
            cfl = max(cfl, self._vmax * dt / h)
            self._vmax = vmax
            self._x_prev, self._dt_prev = res.x, dt
            self.last_system, self.last_rhs, self.last_result = system, b, res
            self.time += dt
            remaining -= dt
            substeps += 1
            iterations += res.iterations
            residual = max(residual, res.residual)
            converged &= res.converged
            fell_back |= res.fell_back
            for items, item in ((methods, res.method), (notes, res.note)):
                if item and item not in items:
                    items.append(item)
            ms["advect"] += t1 - t0
            ms["assemble"] += t2 - t1
            ms["inference"] += res.setup_seconds
            ms["pcg"] += t3 - t2 - res.setup_seconds
            ms["project"] += t4 - t3
        t5 = time.perf_counter()
        self._finish_frame()
        backend.sync()
        t6 = time.perf_counter()
        ms["advect"] += t6 - t5
        self.frame += 1
        return FrameStats(
            frame=self.frame, time=self.time, dt=dt, substeps=substeps, cfl=cfl,
            ms_advect=1e3 * ms["advect"], ms_assemble=1e3 * ms["assemble"], ms_inference=1e3 * ms["inference"],
            ms_pcg=1e3 * ms["pcg"], ms_project=1e3 * ms["project"], ms_total=1e3 * (t6 - t_start),
            iterations=iterations, residual=residual, converged=converged, solver="/".join(methods),
            fell_back=fell_back, note="; ".join(notes), volume=self._volume)

    def _finish_frame(self) -> None:
        """Reinitialise phi (applying the pending volume correction) and work out the next correction.

        Volume correction: a global shift of phi by (V - V_target) / (interface length), at most
        MAX_SHIFT_CELLS a frame, applied with the next reinitialisation (one frame later)."""
        cells = self.nx * self.ny
        vol, length = levelset.reinitialize(self._s, self._shift)
        self._volume = float(vol) / cells
        self._shift = 0.0
        if self.scene.volume_correction and length > 1.0:
            shift_cells = (float(vol) - self._target * cells) / float(length)
            self._shift = max(-MAX_SHIFT_CELLS, min(MAX_SHIFT_CELLS, shift_cells)) / self.ny
