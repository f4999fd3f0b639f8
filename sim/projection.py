"""Pressure projection: the Poisson system A p = b from the level set and u*, and the velocity update.

With p_hat = p dt / h the projection reads, on a face between cells a and b,

    u = u* - c (p_hat_b - p_hat_a),   c = 1/rho_face = theta / rho_w + (1 - theta) / rho_a,

theta being the face's water fraction from phi (precond.synthetic's rule, rho_a = 1). Zero
divergence of u in every cell is then A p_hat = b with A the 5-point stencil of the face
coefficients (walls: 0; the open top: p = 0 outside, so its coefficient goes on the diagonal
only) and b = -(sum of outward u* fluxes), in velocity units. After the solve the divergence
of u is exactly the residual b - A p_hat, up to float32 rounding of the velocity.

A face touching a solid cell (sim.solids) has coefficient 0 and keeps the solid's velocity, which
sim.solids.place put in u*; a solid cell's row is the identity with right-hand side 0, and so is the
row of a fluid cell closed on all four sides, whose pressure nothing sets (the PoissonSystem contract).

Gravity (sim.forces) is in u* on every vertical face and is balanced by the same face
coefficient, so a flat interface at rest stays at rest to solver tolerance.

Bad values are flagged as sim.checks describes: the assembled system (BAD_SYSTEM), the solver's
pressure (BAD_PRESSURE) and the projected velocity, which reaches the state only when it is sound.
"""
import taichi as ti

from .checks import BAD_PRESSURE, BAD_SYSTEM, finite, finite64, report, scan_point
from .solids import is_fluid


@ti.func
def face_coefficient(a: ti.f32, b: ti.f32, inv_ratio: ti.f32) -> ti.f32:
    """1/rho on the face between cells with level-set values a and b (rho_air = 1, rho_water = ratio)."""
    neg = ti.max(-a, 0.0) + ti.max(-b, 0.0)
    tot = ti.abs(a) + ti.abs(b)
    theta = 0.5
    if tot > 0.0:
        theta = neg / tot
    return theta * inv_ratio + (1.0 - theta)


@ti.kernel
def assemble(s: ti.template(), system: ti.types.ndarray(dtype=ti.f64, ndim=3), inv_ratio: ti.f32) -> ti.math.vec2:
    """cu, cv = face coefficients from phi_a; system[0..4] = diag, cx, cy, b and the cells with an unknown
    (1.0, others 0.0).

    Reports (0, BAD_SYSTEM if any of them is not finite)."""
    nx, ny, open_top = s.size[0], s.size[1], s.size[2]
    s.size[3] = 0
    for i in range(nx):
        for j in range(ny):
            c = s.phi_a[i, j]
            fluid = is_fluid(s, i, j)
            ce = 0.0
            cn = 0.0
            if fluid:
                if i < nx - 1 and is_fluid(s, i + 1, j):
                    ce = face_coefficient(c, s.phi_a[i + 1, j], inv_ratio)
                if j < ny - 1:
                    if is_fluid(s, i, j + 1):
                        cn = face_coefficient(c, s.phi_a[i, j + 1], inv_ratio)
                elif open_top == 1:
                    cn = face_coefficient(c, c, inv_ratio)
            cw = 0.0
            cs = 0.0
            if fluid:
                if i > 0 and is_fluid(s, i - 1, j):
                    cw = face_coefficient(s.phi_a[i - 1, j], c, inv_ratio)
                if j > 0 and is_fluid(s, i, j - 1):
                    cs = face_coefficient(s.phi_a[i, j - 1], c, inv_ratio)
            # Sum in float64 so that a closed box's rows sum to zero to rounding (its null space is detected).
            diag = ti.cast(ce, ti.f64) + ti.cast(cw, ti.f64) + ti.cast(cn, ti.f64) + ti.cast(cs, ti.f64)
            flux = (ti.cast(s.us[i + 1, j], ti.f64) - ti.cast(s.us[i, j], ti.f64)
                    + ti.cast(s.vs[i, j + 1], ti.f64) - ti.cast(s.vs[i, j], ti.f64))
            unknown = diag > 0.0
            if not unknown:  # a solid cell, or a fluid one closed on every side: an identity row
                diag = 1.0
                flux = 0.0
            system[0, i, j] = diag
            system[1, i, j] = ce
            system[2, i, j] = 0.0
            if j < ny - 1:
                system[2, i, j] = cn
            system[3, i, j] = -flux
            system[4, i, j] = ti.cast(unknown, ti.f64)
            s.cu[i + 1, j] = ce
            s.cv[i, j + 1] = cn
            if i == 0:
                s.cu[0, j] = 0.0
            if j == 0:
                s.cv[i, 0] = 0.0
            if not (finite64(diag) and finite64(flux)):
                ti.atomic_or(s.size[3], BAD_SYSTEM)
    return report(s, 0.0)


@ti.kernel
def project(s: ti.template(), x: ti.types.ndarray(dtype=ti.f64, ndim=1), to_pressure: ti.f64) -> ti.math.vec2:
    """u = u* - c grad p_hat, p = p_hat * to_pressure (= h / dt), phi = phi_a; reports the new max |u|, |v|.

    The new velocity is built in us, vs (u* is not needed after this) and checked there; only a
    new state with no bad value is copied into u, v, p, phi. A non-finite pressure is reported as
    BAD_PRESSURE, a bad velocity by its flags, and either way the state stays as it was.
    """
    nx, ny, open_top = s.size[0], s.size[1], s.size[2]
    s.size[3] = 0
    for k in range(nx * ny):
        if not (finite64(x[k]) and finite(ti.cast(x[k] * to_pressure, ti.f32))):
            ti.atomic_or(s.size[3], BAD_PRESSURE)
    solved = s.size[3] == 0
    vmax = 0.0
    for i in range(nx + 1):
        m = 0.0
        for j in range(ny + 1):
            if solved:
                if j < ny:
                    val = 0.0
                    if i > 0 and i < nx:
                        val = ti.cast(s.us[i, j] - s.cu[i, j] * (x[i * ny + j] - x[(i - 1) * ny + j]), ti.f32)
                    s.us[i, j] = val
                if i < nx:
                    val = 0.0
                    if j > 0 and j < ny:
                        val = ti.cast(s.vs[i, j] - s.cv[i, j] * (x[i * ny + j] - x[i * ny + j - 1]), ti.f32)
                    elif j == ny and open_top == 1:
                        val = ti.cast(s.vs[i, j] + s.cv[i, j] * x[i * ny + ny - 1], ti.f32)
                    s.vs[i, j] = val
                m = ti.max(m, scan_point(s, s.us, s.vs, s.phi_a, i, j, nx, ny))
        ti.atomic_max(vmax, m)
    sound = s.size[3] == 0
    for i in range(nx + 1):  # a top-level loop (parallel), so the condition goes inside
        for j in range(ny + 1):
            if sound:
                if j < ny:
                    s.u[i, j] = s.us[i, j]
                if i < nx:
                    s.v[i, j] = s.vs[i, j]
                if i < nx and j < ny:
                    s.p[i, j] = ti.cast(x[i * ny + j] * to_pressure, ti.f32)
                    s.phi[i, j] = s.phi_a[i, j]
    return report(s, vmax)


@ti.kernel
def first_guess(s: ti.template(), x0: ti.types.ndarray(dtype=ti.f64, ndim=1),
                unknown: ti.types.ndarray(dtype=ti.f64, ndim=1), scale: ti.f64):
    """x0 = p * scale (= dt / h: the last pressure as this substep's p_hat) at the cells with an unknown, 0 in
    the identity rows: the solver's first guess."""
    nx, ny = s.size[0], s.size[1]
    for i in range(nx):
        for j in range(ny):
            k = i * ny + j
            x0[k] = ti.cast(s.p[i, j], ti.f64) * scale * unknown[k]
