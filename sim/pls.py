"""The particle level set (Enright, Fedkiw, Ferziger & Mitchell 2002, "A hybrid particle level set method for
improved interface capturing"): marker particles that put back the air and the water the level set's
advection and reinitialisation lose, locally.

Marker particles on both sides of the interface, within `BAND` cells of it, each carry a signed
radius: its sign is the side it was seeded on (+ air, - water, as phi) and its magnitude, clamped to
[`MIN_RADIUS`, `MAX_RADIUS`] cells, its distance to the interface. They move with the same grid
velocity the level set sees (RK2). After each substep's advection (on phi_a, before the system is
assembled from it) and again after the frame's reinitialisation (on phi), the particles on the wrong
side by more than their radius ("escaped") rebuild phi around them: every escaped particle's sphere
phi_p(x) = s_p (r_p - |x - x_p|) raises phi+ (air particles, max) or lowers phi- (water particles,
min) at the four cell centres around it, both starting from phi, and each cell takes whichever of
phi+, phi- is smaller in magnitude. The global volume correction (sim.levelset) is left with what the
particles do not see; its shift is applied after the frame's correction, and the radii follow it.

After the frame's correction `maintain` sets the radii from phi (escaped particles keep theirs) and
takes out of use (radius 0) the particles still escaped by more than `DROP_ESCAPED` radii: the
correction could not hold them, they mark a feature thinner than the grid resolves (Enright, Losasso
& Fedkiw 2005 drop them too). Kept, they stamp sub-cell ripples of phi frame after frame, which the
smoothed volume counts as water or air and the interface does not have: a splashing dam break gained
12 % of its water over 1,000 frames that way, against the volume correction. Every `RESEED_FRAMES`
frames, in one serial pass (so a run repeats exactly), it drops those, the particles in solid cells,
those more than `BAND` + 1 cells from the interface and those beyond `MAX_PER_CELL` in a cell, then
tops the band's fluid cells holding fewer than `MIN_PER_CELL` up to `TARGET_PER_CELL`, at quasi-random
positions (the R2 sequence) inside the cell, each taking the side phi gives it there.

What it does not do: keep features thinner than a cell. Where bubbles break up under the grid's
resolution (the bubbles scene at 64x96 after about 0.25 s) it keeps the air worse than the level set
alone (the README's Validation section has the figures); a resolved small bubble (radius 4.8 cells) it keeps
about twice as well.

Positions are in cell units as in sim.advect, radii in cells, phi in domain units. Kernels take the grid
state `s` and the markers `ms` (allocated at the grid state's capacity, pooled the same way:
sim.grid.acquire).
"""
import weakref
from typing import Optional

import numpy as np
import taichi as ti

from .advect import bilerp, inside, velocity
from .levelset import measure
from .solids import is_fluid

BAND = 3.0  # cells: particles are seeded where |phi| < BAND h
TARGET_PER_CELL = 8
MIN_PER_CELL = 6  # a band cell with fewer is topped up to TARGET_PER_CELL
MAX_PER_CELL = 12  # particles beyond this many in a cell are dropped at reseeding
MIN_RADIUS = 0.1  # cells
MAX_RADIUS = 0.5  # cells
DROP_ESCAPED = 1.5  # radii: a particle still escaped by more than this after the frame's correction is dropped
RESEED_FRAMES = 4  # reseeding (and dropping) every this many frames
EDGE = 1e-3  # cells: particles stay this far inside the walls
R2 = (3242174889, 2447445414)  # the R2 sequence's steps 1/g, 1/g^2 (g the plastic number) times 2^32


def bytes_per_capacity_cell() -> int:
    """What the marker fields take per (capx + 1) x (capy + 1) cell (sim.memory's MARKER_BYTES)."""
    return TARGET_PER_CELL * (2 * 4 + 4) + 4 + 2 * 4


@ti.data_oriented
class Markers:
    """Positions `x` (cells) and signed radii `r` (cells; + air, - water) of the `n[0]` live particles (n[1]:
    maintain's running count); per cell `count` and the correction's `phi_plus`, `phi_minus` (domain units)."""

    def __init__(self, capx: int, capy: int) -> None:
        self.capx, self.capy = capx, capy
        self.capacity = TARGET_PER_CELL * (capx + 1) * (capy + 1)
        self.release: Optional[weakref.finalize] = None
        fb = ti.FieldsBuilder()
        self.n = ti.field(ti.i32)
        fb.dense(ti.i, 2).place(self.n)
        self.x = ti.Vector.field(2, ti.f32)
        self.r = ti.field(ti.f32)
        fb.dense(ti.i, self.capacity).place(self.x, self.r)
        shape = (capx + 1, capy + 1)
        self.count = ti.field(ti.i32)
        self.phi_plus = ti.field(ti.f32)
        self.phi_minus = ti.field(ti.f32)
        fb.dense(ti.ij, shape).place(self.count, self.phi_plus, self.phi_minus)
        fb.finalize()

    def live(self) -> int:
        """How many particles there are."""
        return int(self.n[0])

    def positions(self) -> np.ndarray:
        """(n, 2) float32 positions in cells, a copy."""
        return self.x.to_numpy()[: self.live()]

    def radii(self) -> np.ndarray:
        """(n,) float32 signed radii in cells (+ air, - water), a copy."""
        return self.r.to_numpy()[: self.live()]

    def clear(self) -> None:
        """No particles (maintain then seeds the whole band)."""
        self.n.from_numpy(np.zeros(2, dtype=np.int32))


@ti.func
def _phi_cells(q: ti.template(), p: ti.math.vec2, nx: ti.i32, ny: ti.i32) -> ti.f32:
    """The level set q at point p (cells), in cells."""
    return bilerp(q, p.x - 0.5, p.y - 0.5, nx, ny) * ti.cast(ny, ti.f32)


@ti.func
def _r2(k: ti.u32) -> ti.math.vec2:
    """Point k of the R2 low-discrepancy sequence in the unit square (fixed point: exact for any k)."""
    a = (k * ti.u32(R2[0]) + ti.u32(0x80000000)) >> 8
    b = (k * ti.u32(R2[1]) + ti.u32(0x80000000)) >> 8
    return ti.math.vec2(ti.cast(a, ti.f32), ti.cast(b, ti.f32)) / 16777216.0


@ti.func
def _radius(phi_cells: ti.f32, side: ti.f32) -> ti.f32:
    """The signed radius of a particle on `side` (+1 air, -1 water) where phi is phi_cells."""
    return side * ti.math.clamp(side * phi_cells, MIN_RADIUS, MAX_RADIUS)


@ti.func
def _correct(s: ti.template(), ms: ti.template(), q: ti.template(), dphi: ti.f32, nx: ti.i32,
             ny: ti.i32) -> ti.math.vec2:
    """Correct the level set q from the escaped particles (phi+ / phi-, min-magnitude merge), then add dphi;
    returns the water volume and interface length of the result (sim.levelset.measure), in cells."""
    h = 1.0 / ti.cast(ny, ti.f32)
    for i in range(nx):
        for j in range(ny):
            ms.phi_plus[i, j] = q[i, j]
            ms.phi_minus[i, j] = q[i, j]
    for k in range(ms.n[0]):
        p = ms.x[k]
        r = ms.r[k]
        phi = _phi_cells(q, p, nx, ny)
        if r * phi < 0.0 and ti.abs(phi) > ti.abs(r):  # escaped
            side = ti.math.sign(r)
            i0 = ti.cast(ti.floor(p.x - 0.5), ti.i32)
            j0 = ti.cast(ti.floor(p.y - 0.5), ti.i32)
            for di, dj in ti.static(ti.ndrange(2, 2)):
                a, b = i0 + di, j0 + dj
                if a >= 0 and a < nx and b >= 0 and b < ny:
                    if is_fluid(s, a, b):
                        sphere = (r - side * (ti.math.vec2(a + 0.5, b + 0.5) - p).norm()) * h
                        if side > 0.0:
                            ti.atomic_max(ms.phi_plus[a, b], sphere)
                        else:
                            ti.atomic_min(ms.phi_minus[a, b], sphere)
    vol = 0.0
    length = 0.0
    for i in range(nx):
        row = ti.math.vec2(0.0)  # per-row partial sums: one atomic add per row
        for j in range(ny):
            plus, minus = ms.phi_plus[i, j], ms.phi_minus[i, j]
            out = (plus if ti.abs(plus) <= ti.abs(minus) else minus) + dphi
            q[i, j] = out
            row += measure(s, i, j, out / h)
        vol += row[0]
        length += row[1]
    return ti.math.vec2(vol, length)


@ti.kernel
def advect_and_correct(s: ti.template(), ms: ti.template(), dth: ti.f32):
    """Move the particles dt (dth = dt / h) through the state velocity (RK2, as sim.advect traces phi), then
    correct phi_a, the advected level set, from the escaped particles."""
    nx, ny = s.size[0], s.size[1]
    hi = ti.math.vec2(ti.cast(nx, ti.f32) - EDGE, ti.cast(ny, ti.f32) - EDGE)
    for k in range(ms.n[0]):
        p = ms.x[k]
        mid = inside(p + 0.5 * dth * velocity(s, p, nx, ny), nx, ny)
        ms.x[k] = ti.math.clamp(p + dth * velocity(s, mid, nx, ny), EDGE, hi)
    _correct(s, ms, s.phi_a, 0.0, nx, ny)


@ti.kernel
def maintain(s: ti.template(), ms: ti.template(), dphi: ti.f32, seed: ti.i32, reseed: ti.i32) -> ti.math.vec2:
    """After the reinitialisation: correct phi from the escaped particles and add dphi (the volume correction's
    shift, domain units: the markers take it as the interface's new place), set the radii from it; with `reseed`,
    drop the stray and crowded particles and top up the band's thin cells (`seed` varies the positions from
    call to call). ms.n[0] is the new count. Returns the water volume and interface length, in cells."""
    nx, ny = s.size[0], s.size[1]
    measured = _correct(s, ms, s.phi, dphi, nx, ny)
    for k in range(ms.n[0]):
        r = ms.r[k]
        side = ti.math.sign(r)
        phi = _phi_cells(s.phi, ms.x[k], nx, ny)
        if side * phi < -DROP_ESCAPED * ti.abs(r):  # one the correction could not hold: r = 0, out of use
            ms.r[k] = 0.0
        elif side * phi >= -ti.abs(r):  # escaped particles keep their radius
            ms.r[k] = _radius(phi, side)
    if reseed == 1:
        for i in range(nx):
            for j in range(ny):
                ms.count[i, j] = 0
        ti.loop_config(serialize=True)
        for k in range(ms.n[0]):  # in order: kept particles move down over the dropped ones
            p = ms.x[k]
            r = ms.r[k]
            i = ti.min(ti.cast(p.x, ti.i32), nx - 1)
            j = ti.min(ti.cast(p.y, ti.i32), ny - 1)
            phi = _phi_cells(s.phi, p, nx, ny)
            if r != 0.0 and ti.abs(phi) < BAND + 1.0 and ms.count[i, j] < MAX_PER_CELL and is_fluid(s, i, j):
                ms.count[i, j] += 1
                ms.x[ms.n[1]] = p
                ms.r[ms.n[1]] = r
                ms.n[1] += 1
        ms.n[0] = ms.n[1]
        ms.n[1] = 0
        ti.loop_config(serialize=True)
        for c in range(nx * ny):
            i, j = c // ny, c % ny
            have = ms.count[i, j]
            if ti.abs(s.phi[i, j]) < BAND / ti.cast(ny, ti.f32) and have < MIN_PER_CELL and is_fluid(s, i, j):
                for slot in range(have, TARGET_PER_CELL):
                    k = ms.n[0]
                    if k < ms.capacity:
                        p = ti.math.vec2(i, j) + _r2(ti.cast(c * TARGET_PER_CELL + slot, ti.u32)
                                                     + ti.cast(seed, ti.u32) * ti.u32(0x9E3779B9))
                        phi = _phi_cells(s.phi, p, nx, ny)
                        ms.x[k] = p
                        ms.r[k] = _radius(phi, 1.0 if phi >= 0.0 else -1.0)
                        ms.n[0] = k + 1
    return measured
