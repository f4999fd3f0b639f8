"""What the viewer reads and pokes: cell-centred display fields, and pushes from the mouse."""

import taichi as ti

from .advect import centre_velocity
from .levelset import water_fraction

FIELD_NAMES = ("phi", "rho", "pressure", "speed", "vorticity", "u", "v")


@ti.kernel
def cell_fields(s: ti.template(), out: ti.types.ndarray(dtype=ti.f32, ndim=3), ratio: ti.f32):
    """out[k] = the FIELD_NAMES[k] field at cell centres, (nx, ny) each."""
    nx, ny = s.size[0], s.size[1]
    inv_h = ti.cast(ny, ti.f32)
    for i in range(nx):
        for j in range(ny):
            phi = s.phi[i, j]
            w = water_fraction(phi * inv_h)
            vel = centre_velocity(s, i, j)
            il, ir = ti.max(i - 1, 0), ti.min(i + 1, nx - 1)
            jd, ju = ti.max(j - 1, 0), ti.min(j + 1, ny - 1)
            dvdx = (centre_velocity(s, ir, j).y - centre_velocity(s, il, j).y) / ti.cast(ir - il, ti.f32)
            dudy = (centre_velocity(s, i, ju).x - centre_velocity(s, i, jd).x) / ti.cast(ju - jd, ti.f32)
            out[0, i, j] = phi
            out[1, i, j] = w * ratio + (1.0 - w)
            out[2, i, j] = s.p[i, j]
            out[3, i, j] = vel.norm()
            out[4, i, j] = (dvdx - dudy) * inv_h
            out[5, i, j] = vel.x
            out[6, i, j] = vel.y


@ti.kernel
def push(s: ti.template(), x: ti.f32, y: ti.f32, r: ti.f32, du: ti.f32, dv: ti.f32) -> ti.f32:
    """Add (du, dv) to the velocity within radius r of (x, y) (domain units), fading smoothly to the rim.

    Returns the largest |u|, |v| among the faces it changed."""
    nx, ny = s.size[0], s.size[1]
    h = 1.0 / ny
    vmax = 0.0
    for i in range(nx + 1):
        m = 0.0
        for j in range(ny + 1):
            if j < ny and i > 0 and i < nx:
                q = ((i * h - x) ** 2 + ((j + 0.5) * h - y) ** 2) / (r * r)
                if q < 1.0:
                    s.u[i, j] += du * (1.0 - q) ** 2
                    m = ti.max(m, ti.abs(s.u[i, j]))
            if i < nx and j > 0 and j < ny:
                q = (((i + 0.5) * h - x) ** 2 + (j * h - y) ** 2) / (r * r)
                if q < 1.0:
                    s.v[i, j] += dv * (1.0 - q) ** 2
                    m = ti.max(m, ti.abs(s.v[i, j]))
        ti.atomic_max(vmax, m)
    return vmax
