"""Transport on the MAC grid: bilinear sampling, RK2 backtracing, velocity and level-set advection, gravity.

Positions are in cell units (x / h): u[i, j] sits at (i, j + 1/2), v[i, j] at (i + 1/2, j) and
cell-centred quantities at (i + 1/2, j + 1/2). Velocities are in domain units per second, so a
step moves a point by `dth * u` cells with dth = dt / h. Velocity is advected semi-Lagrangian
(RK2 backtrace); the level set by MacCormack with min/max clamping (Selle et al. 2008) within a
band around the interface, semi-Lagrangian with one Euler step beyond it, where only its sign and
a rough distance matter (reinitialisation rebuilds the distance from the interface outwards).

`advect_and_add_gravity` is one kernel launch: its two top-level loops (forward pass with the
state check, then the MacCormack correction) run one after the other. It leaves the state as it
was and writes u*, v* (gravity included) and phi_a, which the projection takes from there. Gravity
is added in the same pass as the velocity's transport: a separate pass would cost a sweep over the
faces and round v* differently. Loops are parallel over i with j inner: on the CPU that is several
times faster than a flattened ndrange.
"""
import taichi as ti

from .checks import report, scan_point


@ti.func
def bilerp(q: ti.template(), gx: ti.f32, gy: ti.f32, sx: ti.i32, sy: ti.i32) -> ti.f32:
    """q at index-space point (gx, gy) of its sx x sy samples, clamped to the sample range."""
    x = ti.math.clamp(gx, 0.0, ti.cast(sx - 1, ti.f32))
    y = ti.math.clamp(gy, 0.0, ti.cast(sy - 1, ti.f32))
    i = ti.min(ti.cast(x, ti.i32), sx - 2)
    j = ti.min(ti.cast(y, ti.i32), sy - 2)
    fx = x - i
    fy = y - j
    a = q[i, j] + fx * (q[i + 1, j] - q[i, j])
    b = q[i, j + 1] + fx * (q[i + 1, j + 1] - q[i, j + 1])
    return a + fy * (b - a)


@ti.func
def stencil_range(q: ti.template(), gx: ti.f32, gy: ti.f32, sx: ti.i32, sy: ti.i32) -> ti.math.vec2:
    """(min, max) of the four samples bilerp(q, gx, gy) blends."""
    x = ti.math.clamp(gx, 0.0, ti.cast(sx - 1, ti.f32))
    y = ti.math.clamp(gy, 0.0, ti.cast(sy - 1, ti.f32))
    i = ti.min(ti.cast(x, ti.i32), sx - 2)
    j = ti.min(ti.cast(y, ti.i32), sy - 2)
    a, b, c, d = q[i, j], q[i + 1, j], q[i, j + 1], q[i + 1, j + 1]
    return ti.math.vec2(ti.min(a, b, c, d), ti.max(a, b, c, d))


@ti.func
def velocity(s: ti.template(), p: ti.math.vec2, nx: ti.i32, ny: ti.i32) -> ti.math.vec2:
    """Velocity (domain units / s) at point p (cells)."""
    return ti.math.vec2(bilerp(s.u, p.x, p.y - 0.5, nx + 1, ny), bilerp(s.v, p.x - 0.5, p.y, nx, ny + 1))


@ti.func
def inside(p: ti.math.vec2, nx: ti.i32, ny: ti.i32) -> ti.math.vec2:
    return ti.math.vec2(ti.math.clamp(p.x, 0.0, ti.cast(nx, ti.f32)), ti.math.clamp(p.y, 0.0, ti.cast(ny, ti.f32)))


@ti.func
def backtrace(s: ti.template(), p: ti.math.vec2, v0: ti.math.vec2, dth: ti.f32, nx: ti.i32, ny: ti.i32) -> ti.math.vec2:
    """Where the point at p (velocity v0 there) was dt ago, by the midpoint rule; negative dth traces forward."""
    mid = inside(p - 0.5 * dth * v0, nx, ny)
    return inside(p - dth * velocity(s, mid, nx, ny), nx, ny)


@ti.func
def centre_velocity(s: ti.template(), i: ti.i32, j: ti.i32) -> ti.math.vec2:
    return ti.math.vec2(0.5 * (s.u[i, j] + s.u[i + 1, j]), 0.5 * (s.v[i, j] + s.v[i, j + 1]))


@ti.func
def advect_forward(s: ti.template(), dth: ti.f32, gdt: ti.f32, band: ti.f32, nx: ti.i32, ny: ti.i32, open_top: ti.i32):
    """u*, v* = semi-Lagrangian u, v plus gravity (gdt = g dt on v), 0 on the walls; phi_f = semi-Lagrangian
    phi, bt its trace (midpoint rule within `band` of the interface, Euler beyond).

    Also flags bad state values (scan_point)."""
    for i in range(nx + 1):
        for j in range(ny + 1):
            scan_point(s, s.u, s.v, s.phi, i, j, nx, ny)
            if j < ny:
                val = 0.0
                if i > 0 and i < nx:
                    v0 = 0.25 * (s.v[i - 1, j] + s.v[i, j] + s.v[i - 1, j + 1] + s.v[i, j + 1])
                    p = backtrace(s, ti.math.vec2(i, j + 0.5), ti.math.vec2(s.u[i, j], v0), dth, nx, ny)
                    val = bilerp(s.u, p.x, p.y - 0.5, nx + 1, ny)
                s.us[i, j] = val
            if i < nx:
                val = 0.0
                if (j > 0 and j < ny) or (j == ny and open_top == 1):
                    jt = ti.min(j, ny - 1)
                    u0 = 0.25 * (s.u[i, j - 1] + s.u[i + 1, j - 1] + s.u[i, jt] + s.u[i + 1, jt])
                    p = backtrace(s, ti.math.vec2(i + 0.5, j), ti.math.vec2(u0, s.v[i, j]), dth, nx, ny)
                    val = bilerp(s.v, p.x - 0.5, p.y, nx, ny + 1) + gdt
                s.vs[i, j] = val
            if i < nx and j < ny:
                c = ti.math.vec2(i + 0.5, j + 0.5)
                vc = centre_velocity(s, i, j)
                p = inside(c - dth * vc, nx, ny)  # far from the interface only the sign matters: one Euler step
                if ti.abs(s.phi[i, j]) < band:
                    p = backtrace(s, c, vc, dth, nx, ny)
                s.bt[i, j] = p
                s.phi_f[i, j] = bilerp(s.phi, p.x - 0.5, p.y - 0.5, nx, ny)


@ti.func
def advect_correct(s: ti.template(), dth: ti.f32, band: ti.f32, nx: ti.i32, ny: ti.i32):
    """phi_a = MacCormack correction of phi_f where |phi_f| < band (domain units), clamped to the source stencil."""
    for i in range(nx):
        for j in range(ny):
            f = s.phi_f[i, j]
            out = f
            if ti.abs(f) < band:
                p = s.bt[i, j]
                lim = stencil_range(s.phi, p.x - 0.5, p.y - 0.5, nx, ny)
                q = backtrace(s, ti.math.vec2(i + 0.5, j + 0.5), centre_velocity(s, i, j), -dth, nx, ny)
                back = bilerp(s.phi_f, q.x - 0.5, q.y - 0.5, nx, ny)
                out = ti.math.clamp(f + 0.5 * (s.phi[i, j] - back), lim[0], lim[1])
            s.phi_a[i, j] = out


@ti.kernel
def advect_and_add_gravity(s: ti.template(), dth: ti.f32, gdt: ti.f32, band: ti.f32) -> ti.math.vec2:
    """u*, v* (gdt = g dt added to v*) and phi_a from the state; reports (0, flags of the non-finite state values)."""
    nx, ny, open_top = s.size[0], s.size[1], s.size[2]
    s.size[3] = 0
    advect_forward(s, dth, gdt, band, nx, ny, open_top)
    advect_correct(s, dth, band, nx, ny)
    return report(s, 0.0)
