"""Forces from outside: the mouse's push on the velocity. (Gravity is added to u* by sim.advect, in the same pass.)"""
import taichi as ti


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
