"""What the viewer draws: the display fields at the cell centres, from the MAC state in one kernel."""

import taichi as ti

from .advect import centre_velocity
from .levelset import water_fraction

FIELD_NAMES = ("phi", "rho", "pressure", "speed", "vorticity", "u", "v", "solid")


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
            out[7, i, j] = ti.cast(s.kind[i, j] != 0, ti.f32)
