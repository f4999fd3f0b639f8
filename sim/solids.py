"""Solids: the fixed geometry of a scene and the moving bodies, as voxelised cells of the MAC grid.

A cell is solid when its centre lies inside a solid: the fixed geometry (the scene's `phase:
solid` shapes, applied in order with the water and air shapes that carve them, as a signed
distance `solid`) or one of the bodies (boxes and circles with a `motion`, in the `bodies`
table). `kind` holds 0 for a fluid cell, 1 for the fixed geometry and 2 + b for body b.

What a solid does to the flow:
- a face with a solid cell on either side carries no pressure coupling (sim.projection gives it
  coefficient 0 and the solid cell an identity row, the PoissonSystem contract), and its velocity is
  the solid's: 0 for the fixed geometry, the body's velocity for a body (the kinematic boundary), so
  the projection makes the fluid's flux through it exactly what the solid moves;
- the level set is extrapolated into solid cells near the fluid (`extrapolate`), so that sampling
  phi next to a wall sees the water that is there and the interface meets walls at right angles;
  the reinitialisation and the water volume look at fluid cells only (sim.levelset). The pressure
  is extrapolated with it: the next solve starts from it (sim.projection.first_guess).

A body's velocity over a substep is its displacement over the substep divided by dt, and its cells
are those at the substep's end, which is what the projection enforces.
"""
import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np
import taichi as ti
from scipy.ndimage import distance_transform_edt

from .grid import BODY_COLUMNS, MAX_BODIES
from .scene import Box, Circle, Motion, Shape, is_body

EXTRAPOLATE_CELLS = 3  # rings of solid cells next to the fluid that get an extrapolated phi
FLUID, FIXED = 0, 1  # kind of a fluid cell and of the fixed geometry; body b is 2 + b


def fixed_solid(shapes: Sequence[Shape], nx: int, ny: int) -> Optional[np.ndarray]:
    """The fixed geometry's signed distance at cell centres (domain units, negative inside), or None
    where the scene has no fixed solid. Solid shapes add, water and air shapes clear, in order."""
    if not any(shape.phase == "solid" and not is_body(shape) for shape in shapes):
        return None
    h = 1.0 / ny
    x, y = np.meshgrid((np.arange(nx) + 0.5) * h, (np.arange(ny) + 0.5) * h, indexing="ij", sparse=True)
    solid = np.full((nx, ny), float(nx + ny) / ny)
    for shape in shapes:
        if is_body(shape):
            continue
        d = shape.sdf(x, y)
        solid = np.minimum(solid, d) if shape.phase == "solid" else np.maximum(solid, -d)
    return solid


def fill_from_fluid(phi: np.ndarray, solid: np.ndarray) -> np.ndarray:
    """phi with every solid cell given the value of its nearest fluid cell (a reset's start in the solids)."""
    if solid.all() or not solid.any():
        return phi
    nearest = distance_transform_edt(solid, return_distances=False, return_indices=True)
    return phi[tuple(nearest)]


@dataclass(frozen=True)
class Body:
    """A moving solid: a box (half-sizes) or circle (radius) around `anchor`, plus its motion's offset."""

    circle: bool
    anchor: tuple[float, float]
    size: tuple[float, float]
    motion: Motion

    @classmethod
    def from_shape(cls, shape: Shape) -> "Body":
        if isinstance(shape, Circle):
            return cls(True, shape.center, (shape.radius, shape.radius), shape.motion or Motion())
        if isinstance(shape, Box):
            return cls(False, ((shape.min[0] + shape.max[0]) / 2, (shape.min[1] + shape.max[1]) / 2),
                       ((shape.max[0] - shape.min[0]) / 2, (shape.max[1] - shape.min[1]) / 2),
                       shape.motion or Motion())
        raise TypeError(f"a body is a box or a circle, got {type(shape).__name__}")

    @property
    def speed(self) -> float:
        """The fastest its motion moves it (domain units / s)."""
        return 2.0 * math.pi * math.hypot(*self.motion.amplitude) / self.motion.period

    def centre(self, t: float) -> tuple[float, float]:
        dx, dy = self.motion.offset(t)
        return self.anchor[0] + dx, self.anchor[1] + dy

    def moved(self, dx: float, dy: float) -> "Body":
        return replace(self, anchor=(self.anchor[0] + dx, self.anchor[1] + dy))

    def contains(self, x: float, y: float, t: float) -> bool:
        cx, cy = self.centre(t)
        if self.circle:
            return math.hypot(x - cx, y - cy) <= self.size[0]
        return abs(x - cx) <= self.size[0] and abs(y - cy) <= self.size[1]


def body_table(bodies: Sequence[Body], t: float, dt: float, drift: Sequence[tuple[float, float]]) -> np.ndarray:
    """The bodies table for a substep from t to t + dt: each body where it is at t + dt, with velocity its
    motion's displacement over the substep / dt plus its `drift` (the mouse's velocity, domain units / s);
    dt 0: where they are at t, at rest."""
    table = np.zeros((MAX_BODIES, BODY_COLUMNS), dtype=np.float32)
    for k, (body, (du, dv)) in enumerate(zip(bodies, drift)):
        x0, y0 = body.centre(t)
        x1, y1 = body.centre(t + dt)
        u, v = ((x1 - x0) / dt + du, (y1 - y0) / dt + dv) if dt > 0.0 else (0.0, 0.0)
        table[k] = (float(body.circle), x1 + du * dt, y1 + dv * dt, body.size[0], body.size[1], u, v)
    return table


@ti.func
def is_fluid(s: ti.template(), i: ti.i32, j: ti.i32) -> bool:
    return s.kind[i, j] == FLUID


@ti.func
def _inside_body(s: ti.template(), b: ti.i32, x: ti.f32, y: ti.f32) -> bool:
    dx = ti.abs(x - s.bodies[b, 1])
    dy = ti.abs(y - s.bodies[b, 2])
    inside = dx <= s.bodies[b, 3] and dy <= s.bodies[b, 4]
    if s.bodies[b, 0] > 0.5:
        inside = dx * dx + dy * dy <= s.bodies[b, 3] * s.bodies[b, 3]
    return inside


@ti.func
def _face_velocity(s: ti.template(), ka: ti.i32, kb: ti.i32, column: ti.i32, value: ti.f32) -> ti.f32:
    """The velocity component (bodies table `column`) on a face between cells of kinds ka and kb: `value`
    between fluid cells, a body's velocity next to a body, 0 next to the fixed geometry."""
    out = value
    if ka != FLUID or kb != FLUID:
        out = 0.0
        if ka >= 2:
            out = s.bodies[ka - 2, column]
        elif kb >= 2:
            out = s.bodies[kb - 2, column]
    return out


@ti.kernel
def place(s: ti.template(), table: ti.types.ndarray(dtype=ti.f32, ndim=2), count: ti.i32) -> ti.i32:
    """Take the bodies table (body_table's, `count` rows live), mark every cell's kind from the fixed
    geometry and the bodies, and give u*, v* the solids' velocities on their faces (the kinematic
    boundary); returns the number of solid cells. One launch: the loops run one after the other."""
    nx, ny, open_top = s.size[0], s.size[1], s.size[2]
    s.size[4] = count
    for b, c in ti.ndrange(count, BODY_COLUMNS):
        s.bodies[b, c] = table[b, c]
    h = 1.0 / ti.cast(ny, ti.f32)
    solid = 0
    for i in range(nx):
        for j in range(ny):
            k = FLUID
            if s.solid[i, j] < 0.0:
                k = FIXED
            for b in range(count):
                if _inside_body(s, b, (i + 0.5) * h, (j + 0.5) * h):
                    k = 2 + b
            s.kind[i, j] = ti.cast(k, ti.u8)
            if k != FLUID:
                solid += 1
    for i in range(nx + 1):
        for j in range(ny + 1):
            if j < ny and i > 0 and i < nx:
                s.us[i, j] = _face_velocity(s, ti.cast(s.kind[i - 1, j], ti.i32), ti.cast(s.kind[i, j], ti.i32),
                                            5, s.us[i, j])
            if i < nx and j > 0 and j < ny:
                s.vs[i, j] = _face_velocity(s, ti.cast(s.kind[i, j - 1], ti.i32), ti.cast(s.kind[i, j], ti.i32),
                                            6, s.vs[i, j])
            elif i < nx and j == ny and open_top == 1:
                k = ti.cast(s.kind[i, ny - 1], ti.i32)
                s.vs[i, j] = _face_velocity(s, k, k, 6, s.vs[i, j])
    return solid


@ti.kernel
def extrapolate(s: ti.template()):
    """phi and p in the solid cells within EXTRAPOLATE_CELLS rings of the fluid: each ring the mean of its
    neighbours in the fluid or in earlier rings (p: where a body uncovers cells, the next solve's first guess
    continues the water's pressure instead of starting from 0). Uses `fixed` as its marks (the
    reinitialisation's, free)."""
    nx, ny = s.size[0], s.size[1]
    for i in range(nx):
        for j in range(ny):
            s.fixed[i, j] = ti.cast(is_fluid(s, i, j), ti.u8)
    for ring in ti.static(range(EXTRAPOLATE_CELLS)):
        for i in range(nx):
            for j in range(ny):
                if s.fixed[i, j] == 0:
                    total = ti.math.vec2(0.0)
                    count = 0
                    for di, dj in ti.static(((-1, 0), (1, 0), (0, -1), (0, 1))):
                        a, b = i + di, j + dj
                        if a >= 0 and a < nx and b >= 0 and b < ny:
                            if s.fixed[a, b] == 1:
                                total += ti.math.vec2(s.phi[a, b], s.p[a, b])
                                count += 1
                    if count > 0:
                        s.phi[i, j] = total[0] / count
                        s.p[i, j] = total[1] / count
                        s.fixed[i, j] = ti.u8(2)
        for i in range(nx):
            for j in range(ny):
                if s.fixed[i, j] == 2:
                    s.fixed[i, j] = ti.u8(1)
