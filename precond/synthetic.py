"""Two-phase Poisson systems from a level set, without the simulator.

Used by tests, benchmarks and the training set's randomised interfaces. The face rule is the
one the simulator uses (DESIGN.md): 1/rho_face = theta/rho_w + (1-theta)/rho_a with theta the
water fraction of the face, so A stays SPD for any ratio.
"""
from __future__ import annotations

import numpy as np
import torch

from .system import PoissonSystem


def face_fraction(phi_a: np.ndarray, phi_b: np.ndarray) -> np.ndarray:
    """Water fraction of the face between two cells from their signed distances (water < 0)."""
    neg = np.maximum(-phi_a, 0.0) + np.maximum(-phi_b, 0.0)
    tot = np.abs(phi_a) + np.abs(phi_b)
    return np.where(tot > 0, neg / np.maximum(tot, 1e-30), 0.5)


def two_phase_system(phi: np.ndarray, ratio: float, open_top: bool = False,
                     dtype: torch.dtype = torch.float64, device: str = "cpu") -> PoissonSystem:
    """Assemble A for level set `phi` (nx, ny) with rho_air = 1, rho_water = ratio, unit spacing."""
    nx, ny = phi.shape
    inv_rho = lambda th: th / ratio + (1.0 - th)
    cx = np.zeros((nx, ny))
    cy = np.zeros((nx, ny))
    cx[:-1] = inv_rho(face_fraction(phi[:-1], phi[1:]))
    cy[:, :-1] = inv_rho(face_fraction(phi[:, :-1], phi[:, 1:]))
    diag = np.zeros((nx, ny))
    diag[:-1] += cx[:-1]
    diag[1:] += cx[:-1]
    diag[:, :-1] += cy[:, :-1]
    diag[:, 1:] += cy[:, :-1]
    if open_top:
        diag[:, -1] += inv_rho(face_fraction(phi[:, -1], phi[:, -1]))
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
