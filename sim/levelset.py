"""The level set phi (signed distance in domain units, water negative): initial shapes, reinitialisation,
water volume and the global volume correction.

Reinitialisation keeps the interface where it is and rebuilds the distance around it: cells
with a sign change to a neighbour get their distance to the interface from phi and its gradient
there (Russo & Smereka's subcell fix, which leaves a distance function and its zero crossings
in place) and stay fixed, then Jacobi iterations of the Godunov
update solve the Eikonal equation |grad phi| = 1 outwards, one ring of cells per iteration. Three
a frame keep the band that matters (face fractions, volume, the MacCormack band) a distance; the
far field, warm-started by advection, converges over frames. All of it is one kernel launch.

Solid cells (sim.solids) are neither seeds nor neighbours: the interface and the distance are the
fluid's, and solid cells keep the values sim.solids.extrapolate gave them. Volume and length count
fluid cells only.

Volume: each cell holds water fraction w(phi) with a smoothed step of half-width one cell, so the
water volume is sum(w) h^2 and its change under phi -> phi + c is -c sum(delta) h with delta the
smoothed delta function: the interface length in cells. The volume correction shifts phi by
(V - V_target) / length once a frame (one Newton step, applied with the next reinitialisation),
which moves the interface by the same distance everywhere.
"""

import math
from dataclasses import replace
from typing import Sequence

import numpy as np
import taichi as ti

from .scene import Box, Shape
from .solids import is_fluid


def initial_phi(shapes: Sequence[Shape], nx: int, ny: int) -> np.ndarray:
    """phi at cell centres from the water and air shapes applied in order onto an all-air domain (not yet a
    distance; solid shapes are sim.solids')."""
    h = 1.0 / ny
    x, y = np.meshgrid((np.arange(nx) + 0.5) * h, (np.arange(ny) + 0.5) * h, indexing="ij", sparse=True)
    phi = np.full((nx, ny), max_distance(nx, ny))
    for shape in shapes:
        if shape.phase == "solid":
            continue
        d = _across_walls(shape, nx / ny).sdf(x, y)
        phi = np.minimum(phi, d) if shape.phase == "water" else np.maximum(phi, -d)
    return phi


def _across_walls(shape: Shape, width: float) -> Shape:
    """A box whose sides reach the domain's walls, extended past them: the walls are not part of the interface,
    so the distance near them is to the box's other sides (a pool filling the tank has a flat surface up to
    the walls, not one bent down within half a cell of them)."""
    if not isinstance(shape, Box):
        return shape
    (x0, y0), (x1, y1) = shape.min, shape.max
    far = width + 1.0
    lo = (x0 - far if x0 <= 0.0 else x0, y0 - far if y0 <= 0.0 else y0)
    hi = (x1 + far if x1 >= width else x1, y1 + far if y1 >= 1.0 else y1)
    return replace(shape, min=lo, max=hi)


def max_distance(nx: int, ny: int) -> float:
    """The bound |phi| is kept within: the domain's width plus height (domain units)."""
    return (nx + ny) / ny


@ti.func
def water_fraction(phi_cells: ti.f32) -> ti.f32:
    """Smoothed 1 - Heaviside(phi) of half-width one cell; phi in cells."""
    w = 0.0
    if phi_cells <= -1.0:
        w = 1.0
    elif phi_cells < 1.0:
        w = 0.5 - 0.5 * phi_cells - ti.sin(math.pi * phi_cells) / (2.0 * math.pi)
    return w


@ti.func
def smoothed_delta(phi_cells: ti.f32) -> ti.f32:
    d = 0.0
    if ti.abs(phi_cells) < 1.0:
        d = 0.5 + 0.5 * ti.cos(math.pi * phi_cells)
    return d


@ti.func
def measure(s: ti.template(), i: ti.i32, j: ti.i32, phi_cells: ti.f32) -> ti.math.vec2:
    """(water fraction, smoothed delta) of cell (i, j) where phi is phi_cells (0 in solid cells): its share of
    the water volume and of the interface length, in cells."""
    out = ti.math.vec2(0.0)
    if is_fluid(s, i, j):
        out = ti.math.vec2(water_fraction(phi_cells), smoothed_delta(phi_cells))
    return out


@ti.func
def eikonal(a: ti.f32, b: ti.f32, h: ti.f32) -> ti.f32:
    """Godunov solution d of ((d-a)+)^2 + ((d-b)+)^2 = h^2 from the nearest x and y neighbour distances a, b."""
    d = ti.min(a, b) + h
    if ti.abs(a - b) < h:
        d = 0.5 * (a + b + ti.sqrt(2.0 * h * h - (a - b) * (a - b)))
    return d


@ti.func
def _seed(s: ti.template(), nx: ti.i32, ny: ti.i32, h: ti.f32):
    """phi_a = distance to the interface at cells next to it (fixed = 1), phi elsewhere (fixed = 0; solid
    cells: fixed = 1, phi as it is).

    A cell next to the interface (a sign change to a fluid neighbour) gets phi h / |grad phi|: Russo &
    Smereka's (2000) subcell estimate, with |grad phi| h the largest of the central-difference gradient's
    length and the one-sided differences (|phi_n - phi| for each fluid neighbour n), so that a thin feature,
    whose central differences vanish, is not blown up. A distance function is left as it is, and where
    neighbours are rescaled alike the crossing between them stays where it was (on a curved interface the
    two sides are rescaled a little differently: a bubble of 3 to 8 cells' radius at rest gains about 0.1 %
    of its area a frame)."""
    for i in range(nx):
        for j in range(ny):
            c = s.phi[i, j]
            fluid = is_fluid(s, i, j)
            w = c  # neighbours that are not fluid (or beyond the walls) count as c: no crossing, no difference
            e = c
            south = c
            north = c
            if i > 0 and is_fluid(s, i - 1, j):
                w = s.phi[i - 1, j]
            if i < nx - 1 and is_fluid(s, i + 1, j):
                e = s.phi[i + 1, j]
            if j > 0 and is_fluid(s, i, j - 1):
                south = s.phi[i, j - 1]
            if j < ny - 1 and is_fluid(s, i, j + 1):
                north = s.phi[i, j + 1]
            crossing = fluid and (c == 0.0 or c * w < 0.0 or c * e < 0.0 or c * south < 0.0 or c * north < 0.0)
            out = c
            if crossing:
                gx = 0.5 * (e - w) if (i > 0 and i < nx - 1) else e - w
                gy = 0.5 * (north - south) if (j > 0 and j < ny - 1) else north - south
                grad = ti.max(ti.sqrt(gx * gx + gy * gy), ti.abs(e - c), ti.abs(c - w), ti.abs(north - c),
                              ti.abs(c - south), 1e-6 * h)
                out = c * h / grad
            s.phi_a[i, j] = out
            s.fixed[i, j] = ti.cast(crossing or not fluid, ti.u8)


@ti.func
def _godunov(s: ti.template(), src: ti.template(), i: ti.i32, j: ti.i32, nx: ti.i32, ny: ti.i32, h: ti.f32,
             cap: ti.f32) -> ti.f32:
    """Cell (i, j) updated from its fluid neighbours in src (interface and solid cells keep their seed)."""
    c = src[i, j]
    out = c
    if s.fixed[i, j] == 0:
        a = cap
        b = cap
        if i > 0 and is_fluid(s, i - 1, j):
            a = ti.abs(src[i - 1, j])
        if i < nx - 1 and is_fluid(s, i + 1, j):
            a = ti.min(a, ti.abs(src[i + 1, j]))
        if j > 0 and is_fluid(s, i, j - 1):
            b = ti.abs(src[i, j - 1])
        if j < ny - 1 and is_fluid(s, i, j + 1):
            b = ti.min(b, ti.abs(src[i, j + 1]))
        out = ti.math.sign(c) * ti.min(eikonal(a, b, h), cap)
    return out


@ti.func
def _jacobi(s: ti.template(), src: ti.template(), dst: ti.template(), nx: ti.i32, ny: ti.i32, h: ti.f32, cap: ti.f32):
    """One Godunov update of every cell from src into dst."""
    for i in range(nx):
        for j in range(ny):
            dst[i, j] = _godunov(s, src, i, j, nx, ny, h, cap)


@ti.kernel
def reinitialize(s: ti.template(), dphi: ti.f32) -> ti.math.vec2:
    """Rebuild phi as a distance around its zero level set (seed, three Jacobi updates: one launch), then add
    dphi (domain units; the volume correction's shift). Returns (water volume, interface length) in cells, over
the fluid cells.

    Its buffers are phi_a and phi_f: advection's results, dead once the projection has taken them."""
    nx, ny = s.size[0], s.size[1]
    h = 1.0 / ny
    cap = ti.cast(nx + ny, ti.f32) * h
    _seed(s, nx, ny, h)
    _jacobi(s, s.phi_a, s.phi_f, nx, ny, h, cap)
    _jacobi(s, s.phi_f, s.phi_a, nx, ny, h, cap)
    vol = 0.0
    length = 0.0
    for i in range(nx):
        row = ti.math.vec2(0.0)  # per-row partial sums: one atomic add per row
        for j in range(ny):
            out = _godunov(s, s.phi_a, i, j, nx, ny, h, cap) + dphi
            s.phi[i, j] = out
            row += measure(s, i, j, out / h)
        vol += row[0]
        length += row[1]
    return ti.math.vec2(vol, length)


@ti.kernel
def add_disc(s: ti.template(), x: ti.f32, y: ti.f32, r: ti.f32):
    """Union a water disc (centre x, y, radius r in domain units) into phi; faces it newly floods come to rest."""
    nx, ny = s.size[0], s.size[1]
    h = 1.0 / ny
    for i in range(nx + 1):  # first pass: velocities, against the old phi
        for j in range(ny + 1):
            if j < ny and i > 0 and i < nx:
                if ti.sqrt((i * h - x) ** 2 + ((j + 0.5) * h - y) ** 2) < r and s.phi[i - 1, j] + s.phi[i, j] > 0.0:
                    s.u[i, j] = 0.0
            if i < nx and j > 0 and j < ny:
                if ti.sqrt(((i + 0.5) * h - x) ** 2 + (j * h - y) ** 2) < r and s.phi[i, j - 1] + s.phi[i, j] > 0.0:
                    s.v[i, j] = 0.0
    for i in range(nx):  # top-level loops run one after the other
        for j in range(ny):
            d = ti.sqrt(((i + 0.5) * h - x) ** 2 + ((j + 0.5) * h - y) ** 2) - r
            s.phi[i, j] = ti.min(s.phi[i, j], d)
