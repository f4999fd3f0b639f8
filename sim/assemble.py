"""Pressure projection: the Poisson system A p = b from the level set and u*, and the velocity update.

With p_hat = p dt / h the projection reads, on a face between cells a and b,

    u = u* - c (p_hat_b - p_hat_a),   c = 1/rho_face = theta / rho_w + (1 - theta) / rho_a,

theta being the face's water fraction from phi (precond.synthetic's rule, rho_a = 1). Zero
divergence of u in every cell is then A p_hat = b with A the 5-point stencil of the face
coefficients (walls: 0; the open top: p = 0 outside, so its coefficient goes on the diagonal
only) and b = -(sum of outward u* fluxes), in velocity units. After the solve the divergence
of u is exactly the residual b - A p_hat, up to float32 rounding of the velocity.

Gravity is added to u* on every vertical face and balanced by the same face coefficient, so a
flat interface at rest stays at rest to solver tolerance.

Non-finite values are flagged in s.size[3]: 1 velocity u, 2 velocity v, 4 level set phi,
8 the assembled system, 16 the solver's pressure.
"""
import taichi as ti

BAD_U, BAD_V, BAD_PHI, BAD_SYSTEM, BAD_PRESSURE = 1, 2, 4, 8, 16


@ti.func
def finite(x: ti.f32) -> bool:
    """False for NaN and +-inf (by the exponent bits, so fast-math cannot fold it away)."""
    return (ti.bit_cast(x, ti.i32) & 0x7F800000) != 0x7F800000


@ti.func
def finite64(x: ti.f64) -> bool:
    exponent = ti.i64(0x7FF0000000000000)
    return (ti.bit_cast(x, ti.i64) & exponent) != exponent


@ti.func
def face_coefficient(a: ti.f32, b: ti.f32, inv_ratio: ti.f32) -> ti.f32:
    """1/rho on the face between cells with level-set values a and b (rho_air = 1, rho_water = ratio)."""
    neg = ti.max(-a, 0.0) + ti.max(-b, 0.0)
    tot = ti.abs(a) + ti.abs(b)
    theta = 0.5
    if tot > 0.0:
        theta = neg / tot
    return theta * inv_ratio + (1.0 - theta)


@ti.func
def scan_point(s: ti.template(), i: ti.i32, j: ti.i32, nx: ti.i32, ny: ti.i32) -> ti.f32:
    """OR the flags of non-finite u[i, j], v[i, j], phi[i, j] (those that exist) into s.size[3]; max |u|, |v| there."""
    m = 0.0
    if j < ny:
        x = s.u[i, j]
        if not finite(x):
            ti.atomic_or(s.size[3], BAD_U)
        m = ti.abs(x)
    if i < nx:
        y = s.v[i, j]
        if not finite(y):
            ti.atomic_or(s.size[3], BAD_V)
        m = ti.max(m, ti.abs(y))
        if j < ny and not finite(s.phi[i, j]):
            ti.atomic_or(s.size[3], BAD_PHI)
    return m


@ti.kernel
def check(s: ti.template()) -> ti.f32:
    """Largest |u|, |v| on the faces, or minus the flags of the non-finite fields."""
    nx, ny = s.size[0], s.size[1]
    s.size[3] = 0
    vmax = 0.0
    for i in range(nx + 1):
        m = 0.0  # per-row partial results: one atomic per row, not per cell
        for j in range(ny + 1):
            m = ti.max(m, scan_point(s, i, j, nx, ny))
        ti.atomic_max(vmax, m)
    out = vmax
    if s.size[3] != 0:
        out = -ti.cast(s.size[3], ti.f32)
    return out


@ti.kernel
def assemble(s: ti.template(), system: ti.types.ndarray(dtype=ti.f64, ndim=3), inv_ratio: ti.f32) -> ti.i32:
    """cu, cv = face coefficients from phi_a; system[0..3] = diag, cx, cy, b. Returns BAD_SYSTEM if any is not finite."""
    nx, ny, open_top = s.size[0], s.size[1], s.size[2]
    s.size[3] = 0
    for i in range(nx):
        for j in range(ny):
            c = s.phi_a[i, j]
            ce = 0.0
            cn = 0.0
            if i < nx - 1:
                ce = face_coefficient(c, s.phi_a[i + 1, j], inv_ratio)
            if j < ny - 1:
                cn = face_coefficient(c, s.phi_a[i, j + 1], inv_ratio)
            elif open_top == 1:
                cn = face_coefficient(c, c, inv_ratio)
            cw = 0.0
            cs = 0.0
            if i > 0:
                cw = face_coefficient(s.phi_a[i - 1, j], c, inv_ratio)
            if j > 0:
                cs = face_coefficient(s.phi_a[i, j - 1], c, inv_ratio)
            # Sum in float64 so that a closed box's rows sum to zero to rounding (its null space is detected).
            diag = ti.cast(ce, ti.f64) + ti.cast(cw, ti.f64) + ti.cast(cn, ti.f64) + ti.cast(cs, ti.f64)
            flux = (ti.cast(s.us[i + 1, j], ti.f64) - ti.cast(s.us[i, j], ti.f64)
                    + ti.cast(s.vs[i, j + 1], ti.f64) - ti.cast(s.vs[i, j], ti.f64))
            system[0, i, j] = diag
            system[1, i, j] = ce
            system[2, i, j] = 0.0
            if j < ny - 1:
                system[2, i, j] = cn
            system[3, i, j] = -flux
            s.cu[i + 1, j] = ce
            s.cv[i, j + 1] = cn
            if i == 0:
                s.cu[0, j] = 0.0
            if j == 0:
                s.cv[i, 0] = 0.0
            if not (finite64(diag) and finite64(flux)):
                ti.atomic_or(s.size[3], BAD_SYSTEM)
    return s.size[3]


@ti.kernel
def project(s: ti.template(), x: ti.types.ndarray(dtype=ti.f64, ndim=1), to_pressure: ti.f64) -> ti.f32:
    """u = u* - c grad p_hat, p = p_hat * to_pressure (= h / dt), phi = phi_a; returns the new max |u|, |v|.

    A non-finite pressure leaves the state untouched and returns -BAD_PRESSURE; a non-finite
    velocity after the update returns minus its flags.
    """
    nx, ny, open_top = s.size[0], s.size[1], s.size[2]
    s.size[3] = 0
    for k in range(nx * ny):
        if not finite64(x[k]):
            ti.atomic_or(s.size[3], BAD_PRESSURE)
    vmax = 0.0
    for i in range(nx + 1):
        m = 0.0
        for j in range(ny + 1):
            if s.size[3] == 0:
                if j < ny:
                    val = 0.0
                    if i > 0 and i < nx:
                        val = ti.cast(s.us[i, j] - s.cu[i, j] * (x[i * ny + j] - x[(i - 1) * ny + j]), ti.f32)
                    s.u[i, j] = val
                if i < nx:
                    val = 0.0
                    if j > 0 and j < ny:
                        val = ti.cast(s.vs[i, j] - s.cv[i, j] * (x[i * ny + j] - x[i * ny + j - 1]), ti.f32)
                    elif j == ny and open_top == 1:
                        val = ti.cast(s.vs[i, j] + s.cv[i, j] * x[i * ny + ny - 1], ti.f32)
                    s.v[i, j] = val
                if i < nx and j < ny:
                    s.p[i, j] = ti.cast(x[i * ny + j] * to_pressure, ti.f32)
                    s.phi[i, j] = s.phi_a[i, j]
                m = ti.max(m, scan_point(s, i, j, nx, ny))
        ti.atomic_max(vmax, m)
    out = vmax
    if s.size[3] != 0:
        out = -ti.cast(s.size[3], ti.f32)
    return out
