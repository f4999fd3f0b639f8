"""Two-phase Poisson systems from a level set and an optional solid mask, without the simulator.

Used by tests, benchmarks and the training set's randomised interfaces. The face rule is the
one the simulator uses (DESIGN.md): 1/rho_face = theta/rho_w + (1-theta)/rho_a with theta the
water fraction of the face, so A stays SPD for any ratio. Solid cells follow the contract: every
face touching one has coefficient 0 and its row is the identity, as is the row of a fluid cell
walled in on all four sides with no Dirichlet face.

`OBSTACLES` are scenes with solids (`ObstacleScene`: a generator of (phi, solid) for any grid and
a top boundary): a dam break against a box, a beach of steps, a funnel, and a held-out family of
many small random obstacles (some hollow, sealing floating pockets) in a random pool with drops
and bubbles. Tests and `python -m precond.bench --synthetic obstacles` use them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .system import PoissonSystem


def face_fraction(phi_a: np.ndarray, phi_b: np.ndarray) -> np.ndarray:
    """Water fraction of the face between two cells from their signed distances (water < 0)."""
    neg = np.maximum(-phi_a, 0.0) + np.maximum(-phi_b, 0.0)
    tot = np.abs(phi_a) + np.abs(phi_b)
    return np.where(tot > 0, neg / np.maximum(tot, 1e-30), 0.5)


def two_phase_system(phi: np.ndarray, ratio: float, open_top: bool = False, solid: np.ndarray | None = None,
                     dtype: torch.dtype = torch.float64, device: str = "cpu") -> PoissonSystem:
    """Assemble A for level set `phi` (nx, ny) with rho_air = 1, rho_water = ratio, unit spacing;
    `solid` (nx, ny) bool marks obstacle cells (no unknown: identity rows, no coupling)."""
    nx, ny = phi.shape
    fluid = np.ones((nx, ny), dtype=bool) if solid is None else ~np.asarray(solid, dtype=bool)
    inv_rho = lambda th: th / ratio + (1.0 - th)
    cx = np.zeros((nx, ny))
    cy = np.zeros((nx, ny))
    cx[:-1] = inv_rho(face_fraction(phi[:-1], phi[1:])) * (fluid[:-1] & fluid[1:])
    cy[:, :-1] = inv_rho(face_fraction(phi[:, :-1], phi[:, 1:])) * (fluid[:, :-1] & fluid[:, 1:])
    diag = np.zeros((nx, ny))
    diag[:-1] += cx[:-1]
    diag[1:] += cx[:-1]
    diag[:, :-1] += cy[:, :-1]
    diag[:, 1:] += cy[:, :-1]
    if open_top:
        diag[:, -1] += inv_rho(face_fraction(phi[:, -1], phi[:, -1])) * fluid[:, -1]
    diag[diag == 0] = 1.0          # solid cells and walled-in fluid cells: identity rows
    t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)
    return PoissonSystem(t(diag), t(cx), t(cy))


def dambreak_phi(nx: int, ny: int, width: float = 0.4, height: float = 0.6) -> np.ndarray:
    """Signed distance (in cells) to a water column in the lower-left corner, domain height ny."""
    x = (np.arange(nx) + 0.5)[:, None]
    y = (np.arange(ny) + 0.5)[None, :]
    wx, wy = width * nx, height * ny
    dx, dy = x - wx, y - wy
    outside = np.hypot(np.maximum(dx, 0), np.maximum(dy, 0))
    inside = np.minimum(np.maximum(dx, dy), 0)
    return outside + inside


def random_phi(nx: int, ny: int, rng: np.random.Generator) -> np.ndarray:
    """A random interface: a pool of random depth plus random drops and bubbles, in cells."""
    x = (np.arange(nx) + 0.5)[:, None]
    y = (np.arange(ny) + 0.5)[None, :]
    level = rng.uniform(0.1, 0.7) * ny
    wave = rng.uniform(0, 0.15) * ny * np.sin(2 * np.pi * (rng.integers(1, 4) * x / nx + rng.uniform()))
    phi = y - level - wave
    for _ in range(rng.integers(0, 6)):
        cxx, cyy = rng.uniform(0, nx), rng.uniform(0, ny)
        rad = rng.uniform(0.03, 0.15) * min(nx, ny)
        d = np.hypot(x - cxx, y - cyy) - rad
        phi = np.minimum(phi, d) if rng.uniform() < 0.5 else np.maximum(phi, -d)
    return phi.astype(np.float64)


def _cells(nx: int, ny: int) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre coordinates x and y, each (nx, ny), in cells."""
    return np.meshgrid(np.arange(nx) + 0.5, np.arange(ny) + 0.5, indexing="ij")


def box_scene(nx: int, ny: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A dam break against a box standing on the floor in the middle of the tank."""
    x, y = _cells(nx, ny)
    solid = (x > 0.55 * nx) & (x < 0.7 * nx) & (y < 0.3 * ny)
    return dambreak_phi(nx, ny, width=0.35, height=0.7), solid


def steps_scene(nx: int, ny: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A sloping beach of six steps rising to the right out of a still pool."""
    x, y = _cells(nx, ny)
    rise = np.clip((x - 0.3 * nx) / (0.6 * nx), 0.0, 1.0)
    solid = y < 0.5 * ny * np.floor(6 * rise) / 6
    return y - 0.35 * ny, solid


def funnel_scene(nx: int, ny: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Water held in a funnel (two sloping walls with a gap between them) above a shallow pool."""
    x, y = _cells(nx, ny)
    wall = np.abs(y - (0.45 * ny + 0.5 * ny * np.abs(x - 0.5 * nx) / nx)) < max(1.0, ny / 40)
    solid = wall & (np.abs(x - 0.5 * nx) > 0.06 * nx)
    above = np.maximum(0.45 * ny + 0.5 * ny * np.abs(x - 0.5 * nx) / nx - y, y - 0.8 * ny)
    return np.minimum(above, y - 0.12 * ny), solid


def porous_scene(nx: int, ny: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Many small random obstacles (discs and boxes, one in six hollow: a sealed pocket inside)
    in a random pool with drops and bubbles (random_phi): the held-out family."""
    x, y = _cells(nx, ny)
    solid = np.zeros((nx, ny), dtype=bool)
    for _ in range(max(4, nx * ny // 200)):
        cx, cy, rad = rng.uniform(0, nx), rng.uniform(0, ny), rng.uniform(1.5, 4.0)
        dist = np.hypot(x - cx, y - cy) if rng.uniform() < 0.5 else np.maximum(np.abs(x - cx), np.abs(y - cy))
        solid |= (dist < rad) & ((dist > rad - 1.5) | (rng.uniform() >= 1 / 6))
    return random_phi(nx, ny, rng), solid


@dataclass(frozen=True)
class ObstacleScene:
    """A scene with solids: its (phi, solid) generator and its top boundary (open: Dirichlet)."""

    make: Callable[[int, int, np.random.Generator], tuple[np.ndarray, np.ndarray]]
    open_top: bool

    def system(self, nx: int, ny: int, ratio: float, seed: int = 0) -> PoissonSystem:
        """The scene's system on an nx x ny grid at `ratio` (random scenes drawn with `seed`)."""
        phi, solid = self.make(nx, ny, np.random.default_rng(seed))
        return two_phase_system(phi, ratio, self.open_top, solid)


# closed tops as in the simulator's dam break; the pores' sealed pockets float beside an open pool
OBSTACLES = {"box": ObstacleScene(box_scene, False), "steps": ObstacleScene(steps_scene, False),
             "funnel": ObstacleScene(funnel_scene, True), "porous": ObstacleScene(porous_scene, True)}
