"""Guards against a broken state: the flag bits, the per-point scan the kernels share, and the state check.

Every kernel that can meet a bad value resets the flag word `s.size[3]`, ORs into it the bit of
each kind it found (non-finite, or a velocity beyond limits.STATE_SPEED) and returns
`report(speed)`: a vec2 (largest |u|, |v| it measured, 0 if it measures none; the flags). `Simulation` turns flags into a SimulationError
naming the fields (FLAG_NAMES) before a bad value can reach the state it keeps.
"""
import taichi as ti

from .limits import STATE_SPEED

SPEED_LIMIT = STATE_SPEED.hi  # m/s: a face velocity beyond it is a blow-up, flagged like a non-finite one
BAD_U, BAD_V, BAD_PHI, BAD_SYSTEM, BAD_PRESSURE, BAD_SPEED = 1, 2, 4, 8, 16, 32
FLAG_NAMES = ((BAD_U, "non-finite velocity u"), (BAD_V, "non-finite velocity v"),
              (BAD_PHI, "non-finite level set phi"),
              (BAD_SYSTEM, "non-finite Poisson system (coefficients or right-hand side)"),
              (BAD_PRESSURE, "non-finite pressure"),
              (BAD_SPEED, f"absurd velocity (|u| or |v| above {SPEED_LIMIT:g} m/s)"))


@ti.func
def finite(x: ti.f32) -> bool:
    """False for NaN and +-inf (by the exponent bits, so fast-math cannot fold it away)."""
    return (ti.bit_cast(x, ti.i32) & 0x7F800000) != 0x7F800000


@ti.func
def finite64(x: ti.f64) -> bool:
    exponent = ti.i64(0x7FF0000000000000)
    return (ti.bit_cast(x, ti.i64) & exponent) != exponent


@ti.func
def report(s: ti.template(), speed: ti.f32) -> ti.math.vec2:
    """The (speed, flags) pair every guarding kernel returns."""
    return ti.math.vec2(speed, ti.cast(s.size[3], ti.f32))


@ti.func
def scan_point(s: ti.template(), u: ti.template(), v: ti.template(), phi: ti.template(), i: ti.i32, j: ti.i32,
               nx: ti.i32, ny: ti.i32) -> ti.f32:
    """OR the flags of non-finite or absurd u[i, j], v[i, j] and non-finite phi[i, j] (those that exist) into
    s.size[3]; max |u|, |v| there. u, v, phi: the state's fields, or the ones a kernel builds a new state in."""
    m = 0.0
    if j < ny:
        x = u[i, j]
        if not finite(x):
            ti.atomic_or(s.size[3], BAD_U)
        m = ti.abs(x)
    if i < nx:
        y = v[i, j]
        if not finite(y):
            ti.atomic_or(s.size[3], BAD_V)
        m = ti.max(m, ti.abs(y))
        if j < ny and not finite(phi[i, j]):
            ti.atomic_or(s.size[3], BAD_PHI)
    if m > SPEED_LIMIT and finite(m):  # an infinite one is flagged as non-finite
        ti.atomic_or(s.size[3], BAD_SPEED)
    return m


@ti.kernel
def check(s: ti.template()) -> ti.math.vec2:
    """(largest |u|, |v| on the faces, flags of the non-finite state values)."""
    nx, ny = s.size[0], s.size[1]
    s.size[3] = 0
    vmax = 0.0
    for i in range(nx + 1):
        m = 0.0  # per-row partial results: one atomic per row, not per cell
        for j in range(ny + 1):
            m = ti.max(m, scan_point(s, s.u, s.v, s.phi, i, j, nx, ny))
        ti.atomic_max(vmax, m)
    return report(s, vmax)
