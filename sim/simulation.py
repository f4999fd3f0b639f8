"""The two-phase simulation: state on a MAC grid, one `step()` per frame, the fields the viewer draws.

A frame of `scene.time.frame_dt` is split into substeps by the CFL condition (velocity and
gravity), at most `max_substeps`. Each substep advects velocity (the scene's `transport`:
semi-Lagrangian, or APIC with particles, sim.apic) and the level set (MacCormack), adds gravity,
assembles A p = b (sim.projection), solves it with the precond solver (warm-started from the last
pressure) and projects. After the last substep the level set is reinitialised and, if enabled, its
volume corrected; APIC's particles are then culled and reseeded. Every kernel that reads or writes the
state checks it (sim.checks): a non-finite or absurd value stops the step with SimulationError
before it reaches the state. A frame whose substep cap forces a CFL number above limits.CFL.hi
(what the advection tolerates) says so in its stats (`over_cfl`).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

import precond
from precond import PoissonSystem, SolveResult

from . import apic, backend, grid, levelset, limits, memory
from .advect import advect_and_add_gravity
from .checks import FLAG_NAMES, check
from .fields import FIELD_NAMES, cell_fields
from .forces import push
from .projection import assemble, project
from .scene import Scene
from .stats import FrameClock, FrameStats

BAND_CELLS = 8.0  # MacCormack runs within this many cells of the interface
MAX_SHIFT_CELLS = 0.5  # the volume correction moves the interface by at most this much per frame
SETTLE_PASSES = 4  # reinitialisation passes after a reset, resize or restore


class SimulationError(RuntimeError):
    """The simulation cannot go on (a non-finite or absurd value appeared); the message names the field and the frame."""


def _cfl_dt(vmax: float, gravity: float, cfl: float, h: float) -> float:
    """Largest dt with (vmax + |g| dt) dt <= cfl h."""
    denom = vmax + math.sqrt(vmax * vmax + 4.0 * abs(gravity) * cfl * h)
    return math.inf if denom == 0.0 else 2.0 * cfl * h / denom


def _check_integer(name: str, value: Any, limit: limits.Range) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in limit:
        raise ValueError(f"{name}: expected {limit.expected()}, got {value!r}")


def _check_finite(**values: float) -> None:
    for name, v in values.items():
        if not math.isfinite(v):
            raise ValueError(f"{name}: expected a finite number, got {v!r}")


class Simulation:
    """Water and air in a box, driven by `step()`; see the module notes for what a step does."""

    def __init__(self, scene: Scene, solver: precond.Solver, device: str = "cpu") -> None:
        """Raises memory.MemoryLimitError, before allocating the grid, if it does not fit in free memory."""
        backend.init(device)
        memory.check(scene.grid.nx, scene.grid.ny, solver.method, process=False, particles=scene.transport == "apic")
        self._scene = scene
        self.solver = solver
        self.device = device
        self.ratio = float(scene.ratio)
        self.nx, self.ny = scene.grid.nx, scene.grid.ny
        self.frame = 0
        self.time = 0.0
        self._torch_device = torch.device(device)
        self._grid = grid.acquire(self, self.nx, self.ny)  # the Taichi fields every kernel works on
        self._particles: Optional[apic.Particles] = (  # APIC's particles, at the grid's capacity
            grid.acquire(self, self.nx, self.ny, apic.Particles) if scene.transport == "apic" else None)
        self._volume = 0.0  # water fraction of the domain at the last reinitialisation
        self._target = 0.0  # the volume the correction keeps: the scene's, plus water added since
        self._shift = 0.0  # the correction's shift of phi (domain units), due at the next reinitialisation
        self._vmax = 0.0  # largest |u|, |v| of the state: sets the next substep's length
        self._x_prev: Optional[torch.Tensor] = None  # the last solve's pressure, the next one's first guess
        self._dt_prev = 1.0  # the substep _x_prev was solved for
        self.reset()

    @classmethod
    def from_scene(cls, scene: Scene, device: str = "cpu") -> "Simulation":
        """A simulation of `scene` with the solver its `solver` settings name."""
        settings = scene.solver
        return cls(scene, precond.Solver(settings.method, tol=settings.tol, maxiter=settings.maxiter,
                                         compiled=settings.compiled), device)

    @property
    def scene(self) -> Scene:
        """The scene being simulated; change it through the set_* methods."""
        return self._scene

    @property
    def _h(self) -> float:
        """Cell size in domain units (the domain is 1 high)."""
        return 1.0 / self.ny

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Back to the scene's initial state at frame 0, keeping the current grid, ratio and solver."""
        nx, ny, h = self.nx, self.ny, self._h
        self._grid.set_size(nx, ny, self._scene.open_top)
        u = np.zeros((nx + 1, ny))
        v = np.zeros((nx, ny + 1))
        moving = [shape for shape in self._scene.shapes if shape.velocity is not None]
        if moving:  # the face positions only where a shape sets a velocity (4 arrays of 8 bytes a cell)
            ux, uy = np.meshgrid(np.arange(nx + 1) * h, (np.arange(ny) + 0.5) * h, indexing="ij", sparse=True)
            vx, vy = np.meshgrid((np.arange(nx) + 0.5) * h, np.arange(ny + 1) * h, indexing="ij", sparse=True)
            for shape in moving:
                u[shape.sdf(ux, uy) < 0.0] = shape.velocity[0]
                v[shape.sdf(vx, vy) < 0.0] = shape.velocity[1]
        self.frame = 0
        self.time = 0.0
        phi = levelset.initial_phi(self._scene.shapes, nx, ny)
        self.restore({"phi": phi, "u": u, "v": v, "p": np.zeros((nx, ny))})
        self._target = self._volume

    def state(self) -> dict[str, np.ndarray]:
        """The MAC state as float64 copies: phi and p at the cell centres (nx, ny), u on the x-faces
        (nx + 1, ny), v on the y-faces (nx, ny + 1)."""
        return self._grid.state()

    def restore(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the state by arrays shaped as `state()` returns them (a snapshot, or an edited copy).

        The wall faces are zeroed, phi is rebuilt as a distance and the water volume measured; the
        frame, the time and the volume the correction keeps stay. A misshapen or (in float32)
        non-finite array, or a velocity beyond limits.STATE_SPEED, raises ValueError and changes nothing."""
        arrays = {}
        for name, shape in grid.state_shapes(self.nx, self.ny).items():
            values = np.array(state[name], dtype=np.float64)
            if values.shape != shape:
                raise ValueError(f"{name}: expected an array of shape {shape}, got {values.shape}")
            with np.errstate(over="ignore"):
                bad = np.count_nonzero(~np.isfinite(values.astype(np.float32)))
            if bad:
                raise ValueError(f"{name}: expected finite values, got {bad} non-finite (as float32)")
            if name in ("u", "v") and values.size and np.abs(values).max() > limits.STATE_SPEED.hi:
                raise ValueError(f"{name}: expected speeds {limits.STATE_SPEED.span()} m/s, got "
                                 f"{np.abs(values).max():g}")
            arrays[name] = values
        arrays["u"][0, :] = arrays["u"][-1, :] = 0.0
        arrays["v"][:, 0] = 0.0
        if not self._scene.open_top:
            arrays["v"][:, -1] = 0.0
        for name, values in arrays.items():
            self._grid.write(name, values)
        for _ in range(SETTLE_PASSES):
            vol = levelset.reinitialize(self._grid, 0.0)[0]
        self._volume = float(vol) / (self.nx * self.ny)
        self._shift = 0.0
        self._vmax = self._guard(check(self._grid), "in the new state")
        if self._particles is not None:
            self._particles.clear()
            apic.maintain(self._grid, self._particles, self.frame)
        self._x_prev = None
        self._dt_prev = 1.0

    # ------------------------------------------------------------------ controls
    def set_ratio(self, ratio: float) -> None:
        """Density ratio rho_water / rho_air (limits.RATIO), used from the next substep on."""
        if float(ratio) not in limits.RATIO:
            raise ValueError(f"ratio: expected {limits.RATIO.expected()}, got {ratio!r}")
        self.ratio = float(ratio)

    def set_solver(self, solver: precond.Solver) -> None:
        """Use `solver` for the pressure from the next substep on."""
        self.solver = solver

    def set_max_substeps(self, max_substeps: int) -> None:
        """Allow at most `max_substeps` substeps (limits.SUBSTEPS) per frame from the next frame on."""
        _check_integer("max_substeps", max_substeps, limits.SUBSTEPS)
        self._scene = replace(self._scene, time=replace(self._scene.time, max_substeps=int(max_substeps)))

    def resize(self, nx: int, ny: int) -> None:
        """Re-sample the state onto an nx x ny grid (bilinear, over the same stretched domain) and go on.

        A grid that does not fit in free memory raises memory.MemoryLimitError and changes nothing."""
        for name, n in (("nx", nx), ("ny", ny)):
            _check_integer(name, n, limits.GRID_SIDE)
        nx, ny = int(nx), int(ny)
        memory.check(nx, ny, self.solver.method, process=False, what=f"grid {nx}x{ny}",
                     particles=self._particles is not None)
        old, cells = self.state(), (self.nx, self.ny)
        if not self._grid.fits(nx, ny):
            grid.release(self._grid)
            self._grid = grid.acquire(self, nx, ny)
            if self._particles is not None:
                grid.release(self._particles)
                self._particles = grid.acquire(self, nx, ny, apic.Particles)
        self._grid.set_size(nx, ny, self._scene.open_top)
        self.nx, self.ny = nx, ny
        self.restore(grid.resample_state(old, cells, (nx, ny)))

    def add_water(self, x: float, y: float, radius: float) -> None:
        """Add a disc of water (domain units); the volume correction keeps it from then on."""
        _check_finite(x=x, y=y, radius=radius)
        if radius <= 0.0:
            raise ValueError(f"radius: expected a number above 0, got {radius!r}")
        levelset.add_disc(self._grid, x, y, radius)
        before = self._volume
        self._volume = float(levelset.reinitialize(self._grid, 0.0)[0]) / (self.nx * self.ny)
        self._target += self._volume - before

    def push(self, x: float, y: float, du: float, dv: float, radius: float) -> None:
        """Add velocity (du, dv) in m/s (each within limits.PUSH) within `radius` of (x, y), fading to the
        rim (domain units)."""
        _check_finite(x=x, y=y, du=du, dv=dv, radius=radius)
        if radius <= 0.0:
            raise ValueError(f"radius: expected a number above 0, got {radius!r}")
        for name, d in (("du", du), ("dv", dv)):
            if d not in limits.PUSH:
                raise ValueError(f"{name}: expected {limits.PUSH.expected()} m/s, got {d!r}")
        self._vmax = max(self._vmax, float(push(self._grid, x, y, radius, du, dv)))

    # ------------------------------------------------------------------ readout
    def particle_count(self) -> int:
        """APIC's particles (0 with the semi-Lagrangian transport)."""
        return 0 if self._particles is None else self._particles.live()

    def water_volume(self) -> float:
        """Water area as a fraction of the domain (smoothed over one cell at the interface)."""
        return self._volume

    def fields(self) -> dict[str, np.ndarray]:
        """phi, rho, pressure (Pa-like units: rho_air = 1, m, s), speed, vorticity, u, v at the cell centres, float32."""
        out = np.empty((len(FIELD_NAMES), self.nx, self.ny), dtype=np.float32)
        cell_fields(self._grid, out, self.ratio)
        return {name: out[k] for k, name in enumerate(FIELD_NAMES)}

    # ------------------------------------------------------------------ stepping
    def step(self, on_system: Optional[Callable[[PoissonSystem, torch.Tensor], None]] = None) -> FrameStats:
        """Advance one frame; a non-finite or absurd value raises SimulationError before it reaches the state.

        `on_system`, if given, receives the frame's last Poisson system and its right-hand side."""
        clock = FrameClock(backend.sync)
        frame_dt = self._scene.time.frame_dt
        remaining, cfl = frame_dt, 0.0
        solves: list[SolveResult] = []
        while remaining > 1e-9 * frame_dt:
            dt = self._substep_dt(remaining, len(solves))
            cfl = max(cfl, self._vmax * dt / self._h)
            with clock.phase("advect"):
                self._advect_and_add_gravity(dt)
            with clock.phase("assemble"):
                system, b = self._assemble()
            with clock.phase("solve"):
                result = self._solve(system, b, dt)
            with clock.phase("project"):
                self._project(result, dt)
            solves.append(result)
            self.time += dt
            remaining -= dt
        with clock.phase("advect"):  # the level set's and particles' upkeep counts as advection (FrameStats.ms_advect)
            self._reinitialise()
            if self._particles is not None:
                apic.maintain(self._grid, self._particles, self.frame + 1)
        self.frame += 1
        stats = clock.stats(self.frame, self.time, dt, cfl, cfl > limits.CFL.hi, solves, self._volume)
        if on_system is not None:
            on_system(system, b)
        return stats

    def _substep_dt(self, remaining: float, substeps: int) -> float:
        """The next substep: what is left of the frame in equal CFL-sized parts, within the substep cap."""
        settings = self._scene.time
        parts = math.ceil(remaining / _cfl_dt(self._vmax, self._scene.gravity, settings.cfl, self._h) - 1e-9)
        return remaining / max(1, min(parts, settings.max_substeps - substeps))

    def _advect_and_add_gravity(self, dt: float) -> None:
        """u*, v* (gravity included) and phi_a from the state, which is checked on the way; with APIC the
        particles' P2G replaces u*, v* where they cover the faces."""
        h = self._h
        self._guard(advect_and_add_gravity(self._grid, dt / h, self._scene.gravity * dt, BAND_CELLS * h),
                    "in the state before the substep")
        if self._particles is not None:
            apic.transfer(self._grid, self._particles, dt / h, self._scene.gravity * dt)

    def _assemble(self) -> tuple[PoissonSystem, torch.Tensor]:
        packed = torch.empty((4, self.nx, self.ny), dtype=torch.float64, device=self._torch_device)
        self._guard(assemble(self._grid, packed, 1.0 / self.ratio), "after advection and gravity")
        return PoissonSystem(packed[0], packed[1], packed[2]), packed[3].reshape(-1)

    def _solve(self, system: PoissonSystem, b: torch.Tensor, dt: float) -> SolveResult:
        """The pressure, warm-started from the last one (rescaled: the solution scales with dt)."""
        x0 = None if self._x_prev is None else self._x_prev * (dt / self._dt_prev)
        return self.solver.solve(system, b, x0=x0)

    def _project(self, result: SolveResult, dt: float) -> None:
        h = self._h
        self._vmax = self._guard(project(self._grid, result.x, h / dt), f"from the {result.method} solve")
        self._x_prev, self._dt_prev = result.x, dt

    def _reinitialise(self) -> None:
        """Rebuild phi as a distance (applying the pending volume correction) and work out the next correction.

        Volume correction: a global shift of phi by (V - V_target) / (interface length), at most
        MAX_SHIFT_CELLS a frame, applied with the next reinitialisation (one frame later)."""
        cells = self.nx * self.ny
        vol, length = levelset.reinitialize(self._grid, self._shift)
        self._volume = float(vol) / cells
        self._shift = 0.0
        if self._scene.volume_correction and length > 1.0:
            shift_cells = (float(vol) - self._target * cells) / float(length)
            self._shift = max(-MAX_SHIFT_CELLS, min(MAX_SHIFT_CELLS, shift_cells)) / self.ny

    def _guard(self, report: Sequence[float], where: str) -> float:
        """The speed of a kernel's (speed, flags) report; flags raise SimulationError naming the fields."""
        speed, flags = float(report[0]), int(report[1])
        if flags == 0:
            return speed
        names = [name for bit, name in FLAG_NAMES if flags & bit]
        raise SimulationError(f"frame {self.frame + 1} (t = {self.time:.4f} s): {' and '.join(names)} "
                              f"{where}; the step was stopped")
