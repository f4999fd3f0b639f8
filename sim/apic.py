"""APIC velocity transport (Jiang et al. 2015, "The affine particle-in-cell method") on the MAC grid.

Particles sit in the water and in the air cells touching it (`SEED_BAND`), `TARGET_PER_CELL` to
a cell, and carry only their position between substeps. At the start of a substep each gathers,
per velocity component, its velocity and affine part (c_u, c_v) from the projected grid over the
2 x 2 faces around it with bilinear weights (G2P), moves through the grid velocity (RK2) and
splats `u_p + c_p . (x_face - x_p)` back onto the faces around its new position (P2G). The affine
part (the gradient of the bilinear interpolant) is what keeps the transfers from averaging rotation
and shear away, as PIC does. Bilinear rather than Jiang et al.'s quadratic B-splines: on the
sloshing tank (sim.validate) the quadratic 3 x 3 stencil, with mass-weighted transfers, lost no
less energy per period than the bilinear one and cost 1.5 times as much.

Both transfers are weighted by mass, not by volume: a particle weighs the density its level-set
value gives (water `ratio`, air 1) and a face the density of its two cells' fraction rule (as
sim.projection). G2P's value is the faces' mass-weighted mean (moved to the particle along c) and
P2G conserves momentum; where the density is uniform this is plain linear APIC. By volume, the
water near the surface takes the air's tangential velocity at every transfer (the two phases
share one velocity field), which drains the water's energy whatever the ratio.
A face's new velocity is the mass-weighted mean of its splats; where the particles' weight on it
(their mass there over the face's density) is below `FULL_WEIGHT` (the air beyond the band, the
band's rim) it blends towards the semi-Lagrangian value sim.advect computed, so u* is defined
everywhere.

P2G's sums are fixed-point integers (`FIXED` units per 1): integer atomic adds do not depend on the
order the threads add in, so a run repeats exactly on any number of threads.

After each frame's reinitialisation `maintain` keeps the count steady: in one serial pass it drops
particles in solid cells, those more than `KEEP_BAND` cells into the air and those beyond
`MAX_PER_CELL` in a cell, then seeds the band's fluid cells holding fewer than `MIN_PER_CELL` up to
`TARGET_PER_CELL`, at hashed positions stratified over the cell's quarters.

Positions are in cell units as in sim.advect. Kernels take the grid state `s` and the particles
`ps` (allocated at the grid state's capacity, pooled the same way: sim.grid.acquire).
"""
import weakref
from typing import Optional

import numpy as np
import taichi as ti

from .advect import bilerp, inside, velocity
from .levelset import water_fraction
from .projection import water_share
from .solids import is_fluid

TARGET_PER_CELL = 4
MIN_PER_CELL = 3  # a band cell with fewer is topped up to TARGET_PER_CELL
MAX_PER_CELL = 8  # particles beyond this many in a cell are dropped (and bound the capacity)
SEED_BAND = 1.0  # cells: seed where phi < SEED_BAND h (the water and the air cells touching it)
KEEP_BAND = 2.0  # cells: a particle where phi > KEEP_BAND h is dropped
FULL_WEIGHT = 1.0  # particle weight (mass / face density) on a face from which u* is the particles' alone
FIXED = float(1 << 24)  # P2G's fixed-point units per 1 (sums reach 32 x ratio x speed: i64 holds 5e11)
EDGE = 1e-3  # cells: particles stay this far inside the walls


def bytes_per_capacity_cell() -> int:
    """What the particle fields take per (capx + 1) x (capy + 1) cell (sim.memory's PARTICLE_BYTES)."""
    return MAX_PER_CELL * 2 * 4 + 4 + 2 * 4 + 4 * 8


@ti.data_oriented
class Particles:
    """Positions `x` (cells) of the `n[0]` live particles (n[1]: maintain's running count); per cell `count`;
    per face the density `du`, `dv` (float) and P2G's sums in fixed point: mass `ru`, `rv` and momentum `mu`,
    `mv`."""

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
        for name, dtype in (("du", ti.f32), ("ru", ti.i64), ("mu", ti.i64), ("dv", ti.f32), ("rv", ti.i64),
                            ("mv", ti.i64)):
            f = ti.field(dtype)
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
def _hat(g: ti.f32) -> ti.math.vec3:
    """Bilinear (hat) weights of samples floor(g) and floor(g) + 1 at index-space coordinate g, and g - floor(g)
    as the third component (sample k sits at k - (g - floor(g)) from g)."""
    f = g - ti.floor(g)
    return ti.math.vec3(1.0 - f, f, f)


@ti.func
def _face_density(s: ti.template(), axis: ti.template(), i: ti.i32, j: ti.i32, ratio: ti.f32) -> ti.f32:
    """rho on face (i, j) of `axis` (0: u, 1: v) by the fraction rule from its two cells' phi (clamped at walls)."""
    nx, ny = s.size[0], s.size[1]
    a = 0.0
    b = 0.0
    if ti.static(axis == 0):
        a, b = s.phi[ti.max(i - 1, 0), j], s.phi[ti.min(i, nx - 1), j]
    else:
        a, b = s.phi[i, ti.max(j - 1, 0)], s.phi[i, ti.min(j, ny - 1)]
    theta = water_share(a, b)
    return theta * ratio + (1.0 - theta)


@ti.func
def gather(q: ti.template(), rho: ti.template(), gx: ti.f32, gy: ti.f32, sx: ti.i32, sy: ti.i32) -> ti.math.vec3:
    """(value, c_x, c_y) at index-space point (gx, gy) from q's sx x sy samples (face densities `rho`), index
    units: c is the gradient of the bilinear interpolant (linear APIC's affine part) and the value the 2 x 2
    samples' mean weighted by bilinear weight times face density, carried from their centre of mass to the
    particle along c. Across the interface the water's faces decide a water particle's velocity.

    Where the density is uniform the value is the bilinear interpolant. A least-squares affine fit with the
    same weights was measured too: it needs a floor on its second moment (which vanishes where a particle
    sits on a row of samples), and the floor that kept it from gaining energy on the sloshing tank halves c
    in the bulk: a box's steady vortex mode then lost 26 % of its energy in 60 frames, against 2.5 %.
    Samples beyond the range repeat the nearest one (free slip for tangential velocity; the wall faces' own 0
    for the normal one)."""
    wx = _hat(gx)
    wy = _hat(gy)
    i0 = ti.cast(ti.floor(gx), ti.i32)
    j0 = ti.cast(ti.floor(gy), ti.i32)
    tot = 0.0
    mean = 0.0
    centre = ti.math.vec2(0.0)
    c = ti.math.vec2(0.0)
    for di, dj in ti.static(ti.ndrange(2, 2)):
        i = ti.math.clamp(i0 + di, 0, sx - 1)
        j = ti.math.clamp(j0 + dj, 0, sy - 1)
        w = wx[di] * wy[dj] * rho[i, j]
        tot += w
        mean += w * q[i, j]
        centre += w * ti.math.vec2(di - wx[2], dj - wy[2])
        c += q[i, j] * ti.math.vec2((2 * di - 1) * wy[dj], (2 * dj - 1) * wx[di])
    mean /= tot
    centre /= tot
    return ti.math.vec3(mean - c.dot(centre), c.x, c.y)


@ti.func
def _fixed(x: ti.f32) -> ti.i64:
    """x in P2G's fixed-point units (truncated towards zero: any rounding will do, the same in every order)."""
    return ti.cast(x * FIXED, ti.i64)


@ti.func
def splat(mom: ti.template(), mass: ti.template(), gx: ti.f32, gy: ti.f32, value: ti.f32, c: ti.math.vec2,
          rho: ti.f32, sx: ti.i32, sy: ti.i32):
    """Add the affine velocity value + c . (x_i - x_p) of a particle of density rho, weighted by bilinear weight
    times rho, to the (up to) four samples around index-space point (gx, gy) that exist
    (0..sx-1, 0..sy-1): momentum into `mom`, mass into `mass` (fixed point, truncated)."""
    wx = _hat(gx)
    wy = _hat(gy)
    i0 = ti.cast(ti.floor(gx), ti.i32)
    j0 = ti.cast(ti.floor(gy), ti.i32)
    for di, dj in ti.static(ti.ndrange(2, 2)):
        i, j = i0 + di, j0 + dj
        if i >= 0 and i < sx and j >= 0 and j < sy:
            w = wx[di] * wy[dj] * rho
            ti.atomic_add(mass[i, j], _fixed(w))
            ti.atomic_add(mom[i, j], _fixed(w * (value + c.x * (di - wx[2]) + c.y * (dj - wy[2]))))


@ti.func
def _blend(mom: ti.i64, mass: ti.i64, rho: ti.f32, grid_value: ti.f32, add: ti.f32) -> ti.f32:
    """The particles' mass-weighted mean (plus `add`) where they cover a face, blended to the grid's value where
    their weight (mass over the face's density rho) thins out."""
    out = grid_value
    if mass > 0:
        a = ti.min(1.0, ti.cast(mass, ti.f32) / (FULL_WEIGHT * FIXED * rho))
        mean = ti.cast(ti.cast(mom, ti.f64) / ti.cast(mass, ti.f64), ti.f32)
        out = a * (mean + add) + (1.0 - a) * grid_value
    return out


@ti.kernel
def transfer(s: ti.template(), ps: ti.template(), dth: ti.f32, gdt: ti.f32, ratio: ti.f32):
    """G2P from the state u, v, move the particles dt (dth = dt / h) and P2G into u*, v* (gdt = g dt on v*);
    `ratio` is rho_water / rho_air.

    Runs after sim.advect's kernel, whose semi-Lagrangian u*, v* (gravity included) it keeps where the
    particles do not reach; wall faces stay 0. A particle's density is the water fraction of phi_a (the level
    set advected to the end of the substep) where it lands."""
    nx, ny, open_top = s.size[0], s.size[1], s.size[2]
    for i in range(nx + 1):
        for j in range(ny + 1):
            ps.ru[i, j] = 0
            ps.mu[i, j] = 0
            ps.rv[i, j] = 0
            ps.mv[i, j] = 0
            ps.du[i, j] = _face_density(s, 0, i, ti.min(j, ny - 1), ratio)
            ps.dv[i, j] = _face_density(s, 1, ti.min(i, nx - 1), j, ratio)
    hi = ti.math.vec2(ti.cast(nx, ti.f32) - EDGE, ti.cast(ny, ti.f32) - EDGE)
    for k in range(ps.n[0]):
        p = ps.x[k]
        gu = gather(s.u, ps.du, p.x, p.y - 0.5, nx + 1, ny)
        gv = gather(s.v, ps.dv, p.x - 0.5, p.y, nx, ny + 1)
        mid = inside(p + 0.5 * dth * ti.math.vec2(gu[0], gv[0]), nx, ny)
        q = ti.math.clamp(p + dth * velocity(s, mid, nx, ny), EDGE, hi)
        ps.x[k] = q
        wf = water_fraction(bilerp(s.phi_a, q.x - 0.5, q.y - 0.5, nx, ny) * ti.cast(ny, ti.f32))
        rho = wf * ratio + (1.0 - wf)
        splat(ps.mu, ps.ru, q.x, q.y - 0.5, gu[0], ti.math.vec2(gu[1], gu[2]), rho, nx + 1, ny)
        splat(ps.mv, ps.rv, q.x - 0.5, q.y, gv[0], ti.math.vec2(gv[1], gv[2]), rho, nx, ny + 1)
    for i in range(nx + 1):
        for j in range(ny + 1):
            if j < ny and i > 0 and i < nx:
                s.us[i, j] = _blend(ps.mu[i, j], ps.ru[i, j], ps.du[i, j], s.us[i, j], 0.0)
            if i < nx and ((j > 0 and j < ny) or (j == ny and open_top == 1)):
                s.vs[i, j] = _blend(ps.mv[i, j], ps.rv[i, j], ps.dv[i, j], s.vs[i, j], gdt)


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
