"""The two-phase simulation: state on a MAC grid, one `step()` per frame, the fields the viewer draws.

A frame of `scene.time.frame_dt` is split into substeps by the CFL condition (velocity and
gravity), at most `max_substeps`. Each substep advects velocity (the scene's `transport`:
semi-Lagrangian, or APIC with particles, sim.apic) and the level set (MacCormack; with the scene's
`interface: particle_level_set`, marker particles then correct it, sim.pls), adds gravity,
assembles A p = b (sim.projection), solves it with the precond solver (warm-started from the last
pressure) and projects. Solids (sim.solids) are cells of the grid: each substep the bodies move to
where they are at its end, the cells are marked, u* takes the solids' velocities on their faces
before the system is assembled, and phi is extrapolated into the solid cells after the projection.
After the last substep the level set is reinitialised and, if enabled, its
volume corrected; APIC's particles and the marker particles are then culled and reseeded. Every kernel that reads or writes the
state checks it (sim.checks): a non-finite or absurd value stops the step with SimulationError
before it reaches the state. A frame whose substep cap forces a CFL number above limits.CFL.hi
(what the advection tolerates) says so in its stats (`over_cfl`).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

import precond
from precond import PoissonSystem, SolveResult

from . import apic, backend, grid, levelset, limits, memory, pls, solids
from .advect import advect_and_add_gravity
from .checks import FLAG_NAMES, check
from .fields import FIELD_NAMES, cell_fields
from .forces import push
from .projection import assemble, first_guess, project
from .scene import MAX_BODIES, Box, Circle, Scene, is_body
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
        memory.check(scene.grid.nx, scene.grid.ny, solver.method, process=False, particles=scene.transport == "apic",
                     markers=scene.interface == "particle_level_set")
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
        self._markers: Optional[pls.Markers] = (  # the particle level set's markers, at the grid's capacity
            grid.acquire(self, self.nx, self.ny, pls.Markers) if scene.interface == "particle_level_set" else None)
        self._volume = 0.0  # water fraction of the domain at the last reinitialisation
        self._target = 0.0  # the volume the correction keeps: the scene's, plus water added since
        self._shift = 0.0  # the correction's shift of phi (domain units), due at the next reinitialisation
        self._vmax = 0.0  # largest |u|, |v| of the state: sets the next substep's length
        self._unknown: Optional[torch.Tensor] = None  # 1.0 at the last system's cells with a pressure unknown
        self._bodies: list[solids.Body] = []  # the moving solids, where their motion starts from
        self._drift: list[tuple[float, float]] = []  # each body's velocity from the mouse this frame
        self._solid = False  # any solid cell (fixed or body) to mark, impose and extrapolate
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
        self._bodies = [solids.Body.from_shape(shape) for shape in self._scene.shapes if is_body(shape)]
        self._drift = [(0.0, 0.0)] * len(self._bodies)
        solid = self._place_solids()
        phi = levelset.initial_phi(self._scene.shapes, nx, ny)
        if solid is not None:
            phi = solids.fill_from_fluid(phi, solid)
        self.restore({"phi": phi, "u": u, "v": v, "p": np.zeros((nx, ny))})
        self._target = self._volume

    def _place_solids(self) -> Optional[np.ndarray]:
        """Write the fixed geometry at this grid's resolution and the bodies where they are now, mark the
        cells; the solid cells as a bool array (None when there are none)."""
        fixed = solids.fixed_solid(self._scene.shapes, self.nx, self.ny)
        self._grid.write("solid", np.ones((self.nx, self.ny)) if fixed is None else fixed)
        self._solid = self._place_bodies(self.time, 0.0) > 0 or bool(self._bodies)
        return self._grid.kind.to_numpy()[: self.nx, : self.ny] != solids.FLUID if self._solid else None

    def _place_bodies(self, t: float, dt: float) -> int:
        """The bodies where they are at the end of a substep from t to t + dt (dt 0: at t, at rest), the cells
        marked and u* set on the solids' faces (sim.solids.place); the number of solid cells."""
        table = solids.body_table(self._bodies, t, dt, self._drift if dt > 0.0 else [(0.0, 0.0)] * len(self._bodies))
        return int(solids.place(self._grid, table, len(self._bodies)))

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
        self._seed_markers()

    def _seed_markers(self) -> None:
        """The particle level set's markers afresh from phi as it is (after a reset, a resize, added water)."""
        if self._markers is not None:
            self._markers.clear()
            pls.maintain(self._grid, self._markers, 0.0, self.frame, 1)

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
                     particles=self._particles is not None, markers=self._markers is not None)
        old, cells = self.state(), (self.nx, self.ny)
        if not self._grid.fits(nx, ny):
            grid.release(self._grid)
            self._grid = grid.acquire(self, nx, ny)
            if self._particles is not None:
                grid.release(self._particles)
                self._particles = grid.acquire(self, nx, ny, apic.Particles)
            if self._markers is not None:
                grid.release(self._markers)
                self._markers = grid.acquire(self, nx, ny, pls.Markers)
        self._grid.set_size(nx, ny, self._scene.open_top)
        self.nx, self.ny = nx, ny
        self._place_solids()
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
        self._seed_markers()  # the air markers the disc covers would take it back

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

    def add_body(self, shape: Union[Box, Circle]) -> int:
        """Add a moving solid (a box or circle, domain units; its motion, or free) where it is; its index.

        Water under it becomes solid from the next substep on. At most scene.MAX_BODIES bodies."""
        if not isinstance(shape, (Box, Circle)):
            raise TypeError(f"a body is a sim.scene.Box or Circle, got {type(shape).__name__}")
        if len(self._bodies) >= MAX_BODIES:
            raise ValueError(f"bodies: expected at most {MAX_BODIES}, got one more")
        self._bodies.append(solids.Body.from_shape(shape))
        self._drift.append((0.0, 0.0))
        self._solid = True
        self._place_bodies(self.time, 0.0)
        return len(self._bodies) - 1

    def body_at(self, x: float, y: float) -> Optional[int]:
        """The index of the last-added body containing (x, y) (domain units), or None."""
        hits = [k for k, body in enumerate(self._bodies) if body.contains(x, y, self.time)]
        return hits[-1] if hits else None

    def move_body(self, index: int, x: float, y: float) -> None:
        """Move body `index` so that its centre (about which its motion plays) reaches (x, y) over the next
        frame, at most limits.BODY_SPEED fast: the fluid feels it as a wall moving at that velocity."""
        self._check_body(index, x, y)
        cx, cy = self._bodies[index].centre(self.time)
        frame_dt = self._scene.time.frame_dt
        du, dv = (x - cx) / frame_dt, (y - cy) / frame_dt
        speed = math.hypot(du, dv)
        scale = min(1.0, limits.BODY_SPEED.hi / speed) if speed > 0.0 else 0.0
        self._drift[index] = (du * scale, dv * scale)

    def place_body(self, index: int, x: float, y: float) -> None:
        """Put body `index`'s centre at (x, y) at once, with no motion through the fluid (no time passes: for
        a paused run); its cells are marked now and the flow meets it from the next substep on."""
        self._check_body(index, x, y)
        cx, cy = self._bodies[index].centre(self.time)
        self._bodies[index] = self._bodies[index].moved(x - cx, y - cy)
        self._drift[index] = (0.0, 0.0)
        self._place_bodies(self.time, 0.0)

    def _check_body(self, index: int, x: float, y: float) -> None:
        _check_finite(x=x, y=y)
        if not 0 <= index < len(self._bodies):
            raise ValueError(f"body index: expected 0 to {len(self._bodies) - 1}, got {index!r}")

    def body_centres(self) -> list[tuple[float, float]]:
        """Where each body's centre is now (domain units)."""
        return [body.centre(self.time) for body in self._bodies]

    # ------------------------------------------------------------------ readout
    def particle_count(self) -> int:
        """APIC's particles (0 with the semi-Lagrangian transport)."""
        return 0 if self._particles is None else self._particles.live()

    def markers(self) -> tuple[np.ndarray, np.ndarray]:
        """The particle level set's markers: positions (n, 2) and signed radii (n,), both in cells (+ air,
        - water); empty with `interface: level_set`."""
        if self._markers is None:
            return np.zeros((0, 2), dtype=np.float32), np.zeros(0, dtype=np.float32)
        return self._markers.positions(), self._markers.radii()

    def water_volume(self) -> float:
        """Water area as a fraction of the domain (smoothed over one cell at the interface)."""
        return self._volume

    def fields(self) -> dict[str, np.ndarray]:
        """phi, rho, pressure (Pa-like units: rho_air = 1, m, s), speed, vorticity, u, v and solid (1 in solid cells)
        at the cell centres, float32."""
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
                if self._solid:
                    self._move_solids(dt)
            with clock.phase("assemble"):
                system, b = self._assemble()
            with clock.phase("solve"):
                result = self._solve(system, b, dt)
            with clock.phase("project"):
                self._project(result, dt)
                if self._solid:
                    solids.extrapolate(self._grid)
            solves.append(result)
            self.time += dt
            remaining -= dt
        with clock.phase("advect"):  # the level set's and particles' upkeep counts as advection (FrameStats.ms_advect)
            shift_cells = self._shift * self.ny       # the correction this reinitialisation applies
            self._reinitialise()
            if self._particles is not None:
                apic.maintain(self._grid, self._particles, self.frame + 1)
        self.frame += 1
        self._drift = [(0.0, 0.0)] * len(self._bodies)
        stats = clock.stats(self.frame, self.time, dt, cfl, cfl > limits.CFL.hi, solves, self._volume, shift_cells)
        if on_system is not None:
            on_system(system, b)
        return stats

    def _substep_dt(self, remaining: float, substeps: int) -> float:
        """The next substep: what is left of the frame in equal CFL-sized parts, within the substep cap."""
        settings = self._scene.time
        vmax = max([self._vmax] + [body.speed + math.hypot(*drift) for body, drift in zip(self._bodies, self._drift)])
        parts = math.ceil(remaining / _cfl_dt(vmax, self._scene.gravity, settings.cfl, self._h) - 1e-9)
        return remaining / max(1, min(parts, settings.max_substeps - substeps))

    def _advect_and_add_gravity(self, dt: float) -> None:
        """u*, v* (gravity included) and phi_a from the state, which is checked on the way; with APIC the
        particles' P2G replaces u*, v* where they cover the faces; with the particle level set the markers
        move and correct phi_a."""
        h = self._h
        self._guard(advect_and_add_gravity(self._grid, dt / h, self._scene.gravity * dt, BAND_CELLS * h),
                    "in the state before the substep")
        if self._particles is not None:
            apic.transfer(self._grid, self._particles, dt / h, self._scene.gravity * dt)
        if self._markers is not None:
            pls.advect_and_correct(self._grid, self._markers, dt / h)

    def _move_solids(self, dt: float) -> None:
        """Bodies to where they are at the end of the substep, cells marked, u* set on the solids' faces."""
        self._place_bodies(self.time, dt)
        self._bodies = [body.moved(du * dt, dv * dt) for body, (du, dv) in zip(self._bodies, self._drift)]

    def _assemble(self) -> tuple[PoissonSystem, torch.Tensor]:
        """A p = b from the kernel; the PoissonSystem's checks and null space run under the solver's thread
        policy (small tensors: one thread on a busy machine)."""
        packed = torch.empty((5, self.nx, self.ny), dtype=torch.float64, device=self._torch_device)
        self._guard(assemble(self._grid, packed, 1.0 / self.ratio), "after advection and gravity")
        self._unknown = packed[4].reshape(-1)
        with self.solver.threads_scope(self._torch_device):
            return PoissonSystem(packed[0], packed[1], packed[2]), packed[3].reshape(-1)

    def _solve(self, system: PoissonSystem, b: torch.Tensor, dt: float) -> SolveResult:
        """The pressure, warm-started from the state's (its p_hat for this dt; 0 in the identity rows of solid
        cells, extrapolated into cells a body has just uncovered)."""
        x0 = torch.empty_like(b)
        first_guess(self._grid, x0, self._unknown, dt / self._h)
        return self.solver.solve(system, b, x0=x0)

    def _project(self, result: SolveResult, dt: float) -> None:
        h = self._h
        self._vmax = self._guard(project(self._grid, result.x, h / dt), f"from the {result.method} solve")

    def _reinitialise(self) -> None:
        """Rebuild phi as a distance (applying the pending volume correction) and work out the next correction.

        Volume correction: a global shift of phi by (V - V_target) / (interface length), at most
        MAX_SHIFT_CELLS a frame, applied with the next reinitialisation (one frame later)."""
        cells = self.nx * self.ny
        if self._markers is None:
            vol, length = levelset.reinitialize(self._grid, self._shift)
        else:  # the markers correct phi after the reinitialisation too, and the shift comes after them
            levelset.reinitialize(self._grid, 0.0)
            reseed = (self.frame + 1) % pls.RESEED_FRAMES == 0
            vol, length = pls.maintain(self._grid, self._markers, self._shift, self.frame + 1, int(reseed))
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
