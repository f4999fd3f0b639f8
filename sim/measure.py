"""Physical measurements of a state, in numpy, from the arrays `Simulation.state()` returns (or a
`--dump-fields` file holds): the water fraction, the surge front on the floor, the mechanical energy.

Units are the simulator's: domain units (the domain is 1 high), seconds, densities with rho_air = 1
and rho_water = ratio. Kinetic energy weighs the faces with the simulator's own smoothed water
fraction (sim.levelset.water_fraction); potential energy takes the interface where phi crosses
zero along each column, so it measures where the water is, not how phi is scaled around it.
"""
from __future__ import annotations

import numpy as np


def water_fraction(phi: np.ndarray, h: float) -> np.ndarray:
    """1 - smoothed Heaviside(phi / h), half-width one cell (as sim.levelset)."""
    x = np.clip(phi / h, -1.0, 1.0)
    return 0.5 - 0.5 * x - np.sin(np.pi * x) / (2.0 * np.pi)


def surge_front(phi: np.ndarray, h: float) -> float:
    """x of the water's leading edge along the floor (the bottom row of cells), domain units.

    The last zero crossing of phi along the row, between cell centres by linear interpolation; 0 if
    the row is dry, the domain width if it is wet to the far wall."""
    row = phi[:, 0]
    wet = np.flatnonzero(row < 0.0)
    if wet.size == 0:
        return 0.0
    i = int(wet[-1])
    if i == row.size - 1:
        return row.size * h
    return (i + 0.5 + row[i] / (row[i] - row[i + 1])) * h


def densities(phi: np.ndarray, h: float, ratio: float) -> np.ndarray:
    """rho at the cell centres: w ratio + (1 - w), w the water fraction."""
    w = water_fraction(phi, h)
    return w * ratio + (1.0 - w)


def kinetic_energy(u: np.ndarray, v: np.ndarray, rho: np.ndarray, h: float) -> float:
    """sum over faces of rho_face |u|^2 / 2 h^2, rho_face the mean of the two cells' densities (per unit depth)."""
    rho_u = np.empty_like(u)
    rho_u[1:-1] = 0.5 * (rho[1:] + rho[:-1])
    rho_u[0], rho_u[-1] = rho[0], rho[-1]
    rho_v = np.empty_like(v)
    rho_v[:, 1:-1] = 0.5 * (rho[:, 1:] + rho[:, :-1])
    rho_v[:, 0], rho_v[:, -1] = rho[:, 0], rho[:, -1]
    return 0.5 * h * h * float(np.sum(rho_u * u * u) + np.sum(rho_v * v * v))


def column_water(phi: np.ndarray, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column of cells: (water height, integral of y over the water), from phi interpolated linearly along
    the column between cell centres (constant beyond the first and last), so the interface sits where phi
    crosses zero whatever phi's slope: the figures do not change when phi is rescaled (reinitialised)."""
    y = (np.arange(phi.shape[1]) + 0.5) * h
    a, b = phi[:, :-1], phi[:, 1:]
    lo, hi = np.broadcast_to(y[:-1], a.shape), np.broadcast_to(y[1:], a.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = lo + h * np.where(a != b, a / (a - b), 0.5)
    start = np.where(a < 0.0, lo, np.where(b < 0.0, cross, hi))  # water from start to end in each segment
    end = np.where(a < 0.0, np.where(b < 0.0, hi, cross), hi)
    length = (end - start).sum(axis=1)
    moment = 0.5 * (end ** 2 - start ** 2).sum(axis=1)
    bottom, top = phi[:, 0] < 0.0, phi[:, -1] < 0.0  # the half cells below the first and above the last centre
    length = length + 0.5 * h * (bottom + top)
    top_y = phi.shape[1] * h
    moment = moment + bottom * 0.5 * y[0] ** 2 + top * 0.5 * (top_y ** 2 - y[-1] ** 2)
    return length, moment


def rest_level(phi: np.ndarray, h: float) -> float:
    """The height of the flat free surface holding the same water area as phi (column_water's)."""
    return float(column_water(phi, h)[0].mean())


def available_potential_energy(phi: np.ndarray, h: float, ratio: float, gravity: float) -> float:
    """(rho_w - rho_a) |g| (integral of y over the water - the same for the flat rest state of equal area), per
    unit depth; the air's share is in the rho_a offset (its total is fixed)."""
    length, moment = column_water(phi, h)
    depth = float(length.mean())
    width = phi.shape[0] * h
    return (ratio - 1.0) * abs(gravity) * (h * float(moment.sum()) - width * 0.5 * depth ** 2)


def available_energy(state: dict[str, np.ndarray], h: float, ratio: float, gravity: float) -> float:
    """Kinetic (both phases) plus potential energy above the flat rest state of the same water area."""
    phi = state["phi"]
    rho = densities(phi, h, ratio)
    return kinetic_energy(state["u"], state["v"], rho, h) + available_potential_energy(phi, h, ratio, gravity)
