"""Physical measurements of a state, in numpy, from the arrays `Simulation.state()` returns (or a
`--dump-fields` file holds): the water fraction, the surge front on the floor, the mechanical energy.

Units are the simulator's: domain units (the domain is 1 high), seconds, densities with rho_air = 1
and rho_water = ratio. The water fraction is the simulator's own smoothed step of half-width one
cell (sim.levelset.water_fraction), so the energies here weigh the cells as the projection does.
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


def potential_energy(rho: np.ndarray, h: float, gravity: float) -> float:
    """sum over cells of rho |g| y h^2 (y the cell centre's height)."""
    y = (np.arange(rho.shape[1]) + 0.5) * h
    return abs(gravity) * h * h * float(np.sum(rho * y[None, :]))


def rest_level(phi: np.ndarray, h: float) -> float:
    """The height of the flat free surface holding the same (smoothed) water area as phi."""
    return float(water_fraction(phi, h).sum()) * h / phi.shape[0]


def available_energy(state: dict[str, np.ndarray], h: float, ratio: float, gravity: float) -> float:
    """Kinetic plus potential energy above the flat rest state of the same water area (both phases counted)."""
    phi = state["phi"]
    rho = densities(phi, h, ratio)
    y = (np.arange(phi.shape[1]) + 0.5) * h
    rest_phi = np.broadcast_to(y[None, :] - rest_level(phi, h), phi.shape)
    rest = potential_energy(densities(rest_phi, h, ratio), h, gravity)
    return kinetic_energy(state["u"], state["v"], rho, h) + potential_energy(rho, h, gravity) - rest
