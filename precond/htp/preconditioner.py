"""The HTP preconditioner: the network's corrections on the analytic operator, as an H-matrix.

`HTP()` loads the shipped checkpoint (assets/htp.pt; another path by argument or the
HTP_CHECKPOINT environment variable); `HTP.from_model(model)` wraps a network in memory
(training, its validation, ablations). `setup(system)` runs the network once (inference mode,
on the system's device) and assembles M; `apply(r)` is the batched H-matrix apply, in the
network's dtype (float32 as shipped), on float64 (or any) vectors cast in and out. `operator`
is the same assembly with autograd, for training.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint, save_checkpoint
from ..system import PoissonSystem
from .analytic import Analytic
from .coarse import coarse_space
from .hmatrix import HMatrix
from .model import HTPConfig, HTPModel
from .partition import partition

LAYOUT = "htp-hmatrix-v4"   # bump when the meaning of the weights changes
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "assets" / "htp.pt"


class HTP:
    """Preconditioner protocol: name, setup(system), apply(r)."""

    name = "htp"

    def __init__(self, checkpoint: str | Path | None = None) -> None:
        """Load a checkpoint; one that is missing, unreadable or of another layout raises
        CheckpointError (a PreconditionerUnavailable, so `Solver("htp")` falls back)."""
        path = Path(checkpoint or os.environ.get("HTP_CHECKPOINT") or DEFAULT_CHECKPOINT)
        model, record = load_checkpoint(path, LAYOUT, lambda cfg: HTPModel(HTPConfig.from_dict(cfg)),
                                        hint="make one with `python -m precond.train`")
        self.path: Path | None = path
        self.model, self.record = model.eval(), record
        self.hm: HMatrix | None = None

    @classmethod
    def from_model(cls, model: HTPModel, record: dict | None = None) -> "HTP":
        """The preconditioner of `model` as it is (its device, dtype and train/eval mode), not a copy."""
        htp = cls.__new__(cls)
        htp.path, htp.model, htp.record, htp.hm = None, model, record or {}, None
        return htp

    def save(self, path: str | Path, half: bool = False) -> None:
        """Write the network and its record as a checkpoint; half: weights as float16."""
        save_checkpoint(path, LAYOUT, self.model, self.record, half)

    def operator(self, system: PoissonSystem) -> HMatrix:
        """M for `system` on the network's device and in its dtype, differentiable in the weights."""
        cfg = self.model.cfg
        weight = self.model.embed.weight
        system = system.to(device=weight.device)     # the analytic part reads it in float64
        space = coarse_space(partition(system.nx, system.ny, cfg.leaf_size), cfg.segments, cfg.rank)
        an = Analytic.build(system, space, weight.dtype)
        leaf_corr, cluster_corr = self.model(space.part, an.stencil)
        eye = torch.eye(cfg.rank, dtype=cluster_corr.dtype, device=cluster_corr.device)
        t = (eye + cluster_corr).split([r.shape[0] for r in an.galerkin])
        factors = [cfg.level_weight ** 0.5 * r @ tc for r, tc in zip(an.galerkin, t)]
        return HMatrix(space, an.leaf_operators, an.distinct_index, an.basis, an.scale[:, None, None] * leaf_corr,
                       factors, cfg.eps / float(system.diag.max()))

    def setup(self, system: PoissonSystem) -> None:
        if self.model.embed.weight.device != system.device:
            self.model.to(system.device)
        with torch.inference_mode():              # no autograd bookkeeping in a solve
            self.hm = self.operator(system)

    def apply(self, r: torch.Tensor) -> torch.Tensor:
        if self.hm is None:
            raise RuntimeError("HTP.apply before setup")
        return self.hm.apply(r).to(r.dtype)
