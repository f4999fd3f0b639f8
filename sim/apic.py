"""APIC velocity transport (Jiang et al. 2015, "The affine particle-in-cell method") on the MAC grid.

Particles sit in the water and in the air cells touching it (`SEED_BAND`), `TARGET_PER_CELL` to
a cell, and carry only their position between substeps: at the start of a substep each gathers
its velocity and, per component, the velocity's gradient (the affine part, c_u and c_v) from the
projected grid (bilinear weights, G2P), moves through the grid velocity (RK2) and splats
`u_p + c_p . (x_face - x_p)` back onto the faces it now touches (P2G). A face's new velocity is
the weighted mean of its splats; where the particles' total weight on a face is below
`FULL_WEIGHT` (the air beyond the band, the band's rim) it blends towards the semi-Lagrangian
value sim.advect computed, so u* is defined everywhere. The affine part is what keeps the
transfers from averaging rotation and shear away, as PIC does: the low dissipation of APIC.

After each frame's reinitialisation `maintain` keeps the count steady: in one serial pass (so a
run repeats exactly but for the order of P2G's float sums) it drops particles in solid cells, those
more than `KEEP_BAND` cells into the air and those beyond `MAX_PER_CELL` in a cell, then seeds the
band's fluid cells holding fewer than `MIN_PER_CELL` up to `TARGET_PER_CELL`, at hashed positions
stratified over the cell's quarters.

Positions are in cell units as in sim.advect. Kernels take the grid state `s` and the particles
`ps` (allocated at the grid state's capacity, pooled the same way: sim.grid.acquire).
"""
import weakref
from typing import Optional

import numpy as np
import taichi as ti

from .advect import bilerp, inside, velocity
from .solids import is_fluid

TARGET_PER_CELL = 4
MIN_PER_CELL = 3  # a band cell with fewer is topped up to TARGET_PER_CELL
MAX_PER_CELL = 8  # particles beyond this many in a cell are dropped (and bound the capacity)
SEED_BAND = 1.0  # cells: seed where phi < SEED_BAND h (the water and the air cells touching it)
KEEP_BAND = 2.0  # cells: a particle where phi > KEEP_BAND h is dropped
FULL_WEIGHT = 1.0  # particle weight on a face from which u* is the particles' alone
EDGE = 1e-3  # cells: particles stay this far inside the walls


def bytes_per_capacity_cell() -> int:
    """What the particle fields take per (capx + 1) x (capy + 1) cell (sim.memory's PARTICLE_BYTES)."""
    return MAX_PER_CELL * 2 * 4 + 4 + 4 * 4


@ti.data_oriented
class Particles:
    """Positions `x` (cells) of the `n[0]` live particles (n[1]: maintain's running count); per cell `count`;
    per face the P2G sums: weight `wu`, `wv` and weighted velocity `mu`, `mv`."""

    def __init__(self, capx: int, capy: int) -> None:
        self.capx, self.capy = capx, capy
        self.capacity = MAX_PER_CELL * (capx + 1) * (capy + 1)
        self.release: Optional[weakref.finalize] = None
        fb = ti.FieldsBuilder()
        self.n = ti.field(ti.i32)
        fb.dense(ti.i, 2).place(self.n)
        self.x = ti.Vector.field(2, ti.f32)
        fb.dense(ti.i, self.capacity).place(self.x)
        shape = (capx + 1, capy + 1)
        self.count = ti.field(ti.i32)
        fb.dense(ti.ij, shape).place(self.count)
        for name in ("wu", "mu", "wv", "mv"):
            f = ti.field(ti.f32)
            fb.dense(ti.ij, shape).place(f)
            setattr(self, name, f)
        fb.finalize()

    def live(self) -> int:
        """How many particles there are."""
        return int(self.n[0])

    def positions(self) -> np.ndarray:
        """(n, 2) float32 positions in cells, a copy."""
        return self.x.to_numpy()[: self.live()]

    def clear(self) -> None:
        """No particles (maintain then seeds the whole band)."""
        self.n.from_numpy(np.zeros(2, dtype=np.int32))


@ti.func
def gather(q: ti.template(), gx: ti.f32, gy: ti.f32, sx: ti.i32, sy: ti.i32) -> ti.math.vec3:
    """(value, d/dx, d/dy) of the bilinear interpolant of q's sx x sy samples at index-space point (gx, gy)."""
    x = ti.math.clamp(gx, 0.0, ti.cast(sx - 1, ti.f32))
    y = ti.math.clamp(gy, 0.0, ti.cast(sy - 1, ti.f32))
    i = ti.min(ti.cast(x, ti.i32), sx - 2)
    j = ti.min(ti.cast(y, ti.i32), sy - 2)
    fx = x - i
    fy = y - j
    a, b, c, d = q[i, j], q[i + 1, j], q[i, j + 1], q[i + 1, j + 1]
    value = (1.0 - fy) * (a + fx * (b - a)) + fy * (c + fx * (d - c))
    return ti.math.vec3(value, (1.0 - fy) * (b - a) + fy * (d - c), (1.0 - fx) * (c - a) + fx * (d - b))


@ti.func
def splat(m: ti.template(), w: ti.template(), gx: ti.f32, gy: ti.f32, value: ti.f32, grad: ti.math.vec2,
          sx: ti.i32, sy: ti.i32):
    """Add the affine velocity value + grad . (node - g) with bilinear weights to the (up to) four sample nodes
    around index-space point (gx, gy) that exist (0..sx-1, 0..sy-1)."""
    i0 = ti.cast(ti.floor(gx), ti.i32)
    j0 = ti.cast(ti.floor(gy), ti.i32)
    fx = gx - i0
    fy = gy - j0
    for di, dj in ti.static(ti.ndrange(2, 2)):
        i, j = i0 + di, j0 + dj
        if i >= 0 and i < sx and j >= 0 and j < sy:
            wx = fx if di == 1 else 1.0 - fx
            wy = fy if dj == 1 else 1.0 - fy
            weight = wx * wy
            ti.atomic_add(w[i, j], weight)
            ti.atomic_add(m[i, j], weight * (value + grad.x * (di - fx) + grad.y * (dj - fy)))


@ti.func
def _blend(particle_sum: ti.f32, weight: ti.f32, grid_value: ti.f32, add: ti.f32) -> ti.f32:
    """The particles' mean (plus `add`) where they cover a face, blended to the grid's value where they thin out."""
    out = grid_value
    if weight > 0.0:
        a = ti.min(1.0, weight / FULL_WEIGHT)
        out = a * (particle_sum / weight + add) + (1.0 - a) * grid_value
    return out


@ti.kernel
def transfer(s: ti.template(), ps: ti.template(), dth: ti.f32, gdt: ti.f32):
    """G2P from the state u, v, move the particles dt (dth = dt / h) and P2G into u*, v* (gdt = g dt on v*).

    Runs after sim.advect's kernel, whose semi-Lagrangian u*, v* (gravity included) it keeps where the
    particles do not reach; wall faces stay 0."""
    nx, ny, open_top = s.size[0], s.size[1], s.size[2]
    for i in range(nx + 1):
        for j in range(ny + 1):
            ps.wu[i, j] = 0.0
            ps.mu[i, j] = 0.0
            ps.wv[i, j] = 0.0
            ps.mv[i, j] = 0.0
    hi = ti.math.vec2(ti.cast(nx, ti.f32) - EDGE, ti.cast(ny, ti.f32) - EDGE)
    for k in range(ps.n[0]):
        p = ps.x[k]
        gu = gather(s.u, p.x, p.y - 0.5, nx + 1, ny)
        gv = gather(s.v, p.x - 0.5, p.y, nx, ny + 1)
        mid = inside(p + 0.5 * dth * ti.math.vec2(gu[0], gv[0]), nx, ny)
        q = ti.math.clamp(p + dth * velocity(s, mid, nx, ny), EDGE, hi)
        ps.x[k] = q
        splat(ps.mu, ps.wu, q.x, q.y - 0.5, gu[0], ti.math.vec2(gu[1], gu[2]), nx + 1, ny)
        splat(ps.mv, ps.wv, q.x - 0.5, q.y, gv[0], ti.math.vec2(gv[1], gv[2]), nx, ny + 1)
    for i in range(nx + 1):
        for j in range(ny + 1):
            if j < ny and i > 0 and i < nx:
                s.us[i, j] = _blend(ps.mu[i, j], ps.wu[i, j], s.us[i, j], 0.0)
            if i < nx and ((j > 0 and j < ny) or (j == ny and open_top == 1)):
                s.vs[i, j] = _blend(ps.mv[i, j], ps.wv[i, j], s.vs[i, j], gdt)


@ti.func
def _hash(a: ti.u32) -> ti.u32:
    """A 32-bit integer mix (lowbias32), for seed positions that repeat from run to run."""
    x = a
    x ^= x >> 16
    x *= ti.u32(0x7FEB352D)
    x ^= x >> 15
    x *= ti.u32(0x846CA68B)
    x ^= x >> 16
    return x


@ti.func
def _unit(a: ti.u32) -> ti.f32:
    return ti.cast(_hash(a) >> 8, ti.f32) / 16777216.0


@ti.kernel
def maintain(s: ti.template(), ps: ti.template(), seed: ti.i32):
    """Drop particles too far into the air or beyond MAX_PER_CELL in their cell, then top up the band's thin
    cells; `seed` varies the seed positions from call to call. ps.n[0] is the new count."""
    nx, ny = s.size[0], s.size[1]
    h = 1.0 / ti.cast(ny, ti.f32)
    for i in range(nx):
        for j in range(ny):
            ps.count[i, j] = 0
    ti.loop_config(serialize=True)
    for k in range(ps.n[0]):  # in order: kept particles move down over the dropped ones
        p = ps.x[k]
        i = ti.min(ti.cast(p.x, ti.i32), nx - 1)
        j = ti.min(ti.cast(p.y, ti.i32), ny - 1)
        if (bilerp(s.phi, p.x - 0.5, p.y - 0.5, nx, ny) < KEEP_BAND * h and ps.count[i, j] < MAX_PER_CELL
                and is_fluid(s, i, j)):
            ps.count[i, j] += 1
            ps.x[ps.n[1]] = p
            ps.n[1] += 1
    ps.n[0] = ps.n[1]
    ps.n[1] = 0
    ti.loop_config(serialize=True)
    for c in range(nx * ny):
        i, j = c // ny, c % ny
        have = ps.count[i, j]
        if s.phi[i, j] < SEED_BAND * h and have < MIN_PER_CELL and is_fluid(s, i, j):
            for slot in range(have, TARGET_PER_CELL):
                k = ps.n[0]
                if k < ps.capacity:
                    key = ti.cast((c * TARGET_PER_CELL + slot) * 2, ti.u32) ^ (ti.cast(seed, ti.u32) * ti.u32(0x9E3779B9))
                    quarter = ti.math.vec2(slot % 2, (slot // 2) % 2)
                    jitter = ti.math.vec2(_unit(key), _unit(key + ti.u32(1)))
                    ps.x[k] = ti.math.vec2(i, j) + 0.5 * (quarter + jitter)
                    ps.n[0] = k + 1
