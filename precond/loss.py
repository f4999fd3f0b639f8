"""Training objectives: the cosine-Hutchinson probe loss, the SAI-style ablation and unrolled PCG.

For probe vectors z, PCG converges fast when M A z points along z: the cosine loss
`1 - cos(M A z, z)` asks exactly that and nothing about where the eigenvalues of M A sit
as a whole (M may be any positive multiple of A^-1). The SAI loss `||M A z - z||^2` also pins
the scale. Probes mix plain Gaussian vectors with Gaussian vectors pre-smoothed by damped
Jacobi, which leaves mostly the smooth, low-eigenvalue modes that decide PCG's iteration
count. Both kinds sit inside every probe: the cosine of a probe made of smooth modes alone
is 1 whenever M A scales them alike, however small the scale, so a loss on such probes
cannot see the smallest eigenvalues of M A drifting down; next to a rough part it can.
On a singular (all-Neumann) system probes and M A z are projected to the range of A.

The cosine is only loosely tied to the iteration count (corrections that lower it can raise
the count), so `pcg` is also offered: the log relative residual after a few PCG iterations
with M on A x = z, unrolled and differentiated, i.e. the quantity the iteration count follows.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .htp.hmatrix import HMatrix
from .system import PoissonSystem


@dataclass
class LossConfig:
    kind: str = "cosine"                           # "cosine", "sai" or "pcg"
    probes: int = 32                               # per system and step
    smoothing: tuple[int, ...] = (0, 4, 16, 64)    # damped-Jacobi sweep counts of the probes' snapshots
    omega: float = 0.6                             # Jacobi damping
    mix: bool = True                               # each probe sums all smoothing levels (random weights)
    cg_steps: int = 10                             # "pcg": PCG iterations unrolled per probe


def project_rows(system: PoissonSystem, v: torch.Tensor) -> torch.Tensor:
    """system.project on every row of a (m, n) batch."""
    return torch.stack([system.project(row) for row in v]) if system.singular else v


def make_probes(system: PoissonSystem, cfg: LossConfig, generator: torch.Generator) -> torch.Tensor:
    """(probes, n) unit probe vectors in the system's dtype.

    One Gaussian vector per probe is smoothed by damped Jacobi; its snapshots after each
    count of `smoothing` sweeps are normalised and (mix) summed with random weights, so every
    probe holds smooth and rough parts side by side and the cosine sees where the smooth
    modes' eigenvalues sit relative to the rough ones; without mix, each probe is one snapshot.
    """
    z = torch.randn(cfg.probes, system.n, generator=generator, dtype=torch.float64).to(system.device, system.dtype)
    inv_diag = 1.0 / system.diag.reshape(-1)
    unit = lambda v: v / torch.linalg.vector_norm(v, dim=1, keepdim=True).clamp_min(1e-300)
    snaps, done = [], 0
    for sweeps in sorted(cfg.smoothing):
        for _ in range(sweeps - done):
            z = z - cfg.omega * inv_diag * system.matvec(z)
        done = sweeps
        snaps.append(unit(project_rows(system, z)))
    snaps = torch.stack(snaps, 1)                                       # (probes, groups, n)
    if cfg.mix:
        w = torch.rand(cfg.probes, snaps.shape[1], 1, generator=generator, dtype=torch.float64).to(z)
        return unit((w * snaps).sum(1))
    group = torch.arange(cfg.probes, device=z.device) * snaps.shape[1] // cfg.probes
    return snaps[torch.arange(cfg.probes, device=z.device), group]


def pcg_residual(hm: HMatrix, system: PoissonSystem, z: torch.Tensor, steps: int) -> torch.Tensor:
    """Mean log of the relative residual after `steps` PCG iterations with M on A x = z, one solve per
    probe (batched, differentiable): what the solver's iteration count follows."""
    system = system.to(dtype=hm.dtype)
    z = z.to(hm.dtype)
    dot = lambda a, b: (a * b).sum(1, keepdim=True)
    r = z
    u = project_rows(system, hm.apply(r))
    p, rz = u, dot(r, u)
    for _ in range(steps):
        q = system.matvec(p)
        r = r - rz / dot(p, q) * q
        u = project_rows(system, hm.apply(r))
        rz_new = dot(r, u)
        p, rz = u + rz_new / rz * p, rz_new
    return torch.log(torch.linalg.vector_norm(r, dim=1) / torch.linalg.vector_norm(z, dim=1)).mean()


def probe_loss(hm: HMatrix, system: PoissonSystem, z: torch.Tensor, kind: str = "cosine", cg_steps: int = 10) -> torch.Tensor:
    """Mean over probes of 1 - cos(M A z, z) (cosine), ||M A z - z||^2 (sai), z of unit norm, or the
    log residual of `cg_steps` PCG iterations on A x = z (pcg)."""
    if kind == "pcg":
        return pcg_residual(hm, system, z, cg_steps)
    dtype = hm.dtype
    maz = hm.apply(system.matvec(z).to(dtype))
    maz = project_rows(system, maz)
    z = z.to(dtype)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(maz, z, dim=1)).mean()
    if kind == "sai":
        return ((maz - z) ** 2).sum(1).mean()
    raise ValueError(f"unknown loss {kind!r}; expected 'cosine', 'sai' or 'pcg'")
