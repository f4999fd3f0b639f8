"""The floor: no preconditioner (plain CG) and Jacobi (diagonal scaling)."""
from __future__ import annotations

import torch

from .system import PoissonSystem


class Identity:
    """M = I: plain conjugate gradient."""

    name = "none"

    def setup(self, system: PoissonSystem) -> None:
        pass

    def apply(self, r: torch.Tensor) -> torch.Tensor:
        return r.clone()


class Jacobi:
    """M = diag(A)^-1."""

    name = "jacobi"

    def setup(self, system: PoissonSystem) -> None:
        self.inv_diag = (1.0 / system.diag).reshape(-1)

    def apply(self, r: torch.Tensor) -> torch.Tensor:
        return self.inv_diag * r
