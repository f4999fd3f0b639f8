"""The HTP preconditioner: the network's corrections on the analytic operator (hmatrix.py).

`HTP()` loads the shipped checkpoint (assets/htp.pt; another path by argument or the
HTP_CHECKPOINT environment variable); `HTP.from_model(model)` wraps a network in memory
(training, its validation, ablations). `setup(system)` runs the network once (inference mode,
on the system's device) and assembles M; `apply(r)` is the batched apply of M, in the
network's dtype (float32 as shipped), on float64 (or any) vectors cast in and out. `operator`
is the same assembly with autograd, for training.

Set-up reuse (`NetworkReuse`): consecutive substeps of a simulation change A only near the
interface. The analytic part (block-Jacobi leaves, Galerkin factors) must follow A exactly: a
preconditioner kept whole from the previous frame of a 128x64 dam break at 100:1 takes 239 PCG
iterations instead of 11.8 (mgpcg kept whole: 185 instead of 10). The network's corrections need
not, being a learned adjustment on top of it. So `setup` always rebuilds the analytic part and
reruns the network only for a new grid shape, every `max_age` set-ups, or when a solve (reported
through `observe`) took more than `growth` times the iterations of the first solve after the
network last ran.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import check_fields, is_int, is_positive
from ..system import PoissonSystem
from .analytic import Analytic
from .coarse import coarse_space
from .hmatrix import HMatrix
from .model import HTPConfig, HTPModel
from .partition import partition

LAYOUT = "htp-sweep-v5"   # bump when the meaning of the weights changes
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[2] / "assets" / "htp.pt"


@dataclass(frozen=True)
class NetworkReuse:
    """When `HTP.setup` may keep the network's corrections of an earlier system (module notes)."""

    max_age: int = 10       # set-ups one network pass serves at most
    growth: float = 1.25    # rerun when a solve takes more than growth x (first solve after the pass) + slack
    slack: int = 2

    def __post_init__(self) -> None:
        check_fields(self, {"max_age": (is_int(1), "an integer >= 1"),
                            "growth": (lambda v: is_positive(v) and v >= 1, "a number >= 1"),
                            "slack": (is_int(0), "an integer >= 0")})


class HTP:
    """Preconditioner protocol: name, setup(system), apply(r); observe(iterations) after each solve."""

    name = "htp"

    def __init__(self, checkpoint: str | Path | None = None, reuse: NetworkReuse | None = NetworkReuse()) -> None:
        """Load a checkpoint; one that is missing, unreadable or of another layout raises
        CheckpointError (a PreconditionerUnavailable, so `Solver("htp")` falls back).
        `reuse`: when the network's corrections may serve later systems (None: run it for every one)."""
        path = Path(checkpoint or os.environ.get("HTP_CHECKPOINT") or DEFAULT_CHECKPOINT)
        model, record = load_checkpoint(path, LAYOUT, lambda cfg: HTPModel(HTPConfig.from_dict(cfg)),
                                        hint="make one with `python -m precond.train`")
        self._init(path, model.eval(), record, reuse)

    def _init(self, path: Path | None, model: HTPModel, record: dict, reuse: NetworkReuse | None) -> None:
        if reuse is not None and not isinstance(reuse, NetworkReuse):
            raise TypeError(f"reuse must be None or a NetworkReuse, got {reuse!r}")
        self.path, self.model, self.record, self.reuse = path, model, record, reuse
        self.hm: HMatrix | None = None
        self.setup_reused = False    # the last setup reused the network's corrections of an earlier system
        self._corrections: tuple[tuple[int, int], torch.Tensor, torch.Tensor] | None = None
        self._age = 0                # set-ups since the network last ran
        self._first: int | None = None   # iterations of the first solve after it ran
        self._rerun = False

    @classmethod
    def from_model(cls, model: HTPModel, record: dict | None = None, reuse: NetworkReuse | None = None) -> "HTP":
        """The preconditioner of `model` as it is (its device, dtype and train/eval mode), not a copy."""
        htp = cls.__new__(cls)
        htp._init(None, model, record or {}, reuse)
        return htp

    def save(self, path: str | Path, half: bool = False) -> None:
        """Write the network and its record as a checkpoint; half: weights as float16."""
        save_checkpoint(path, LAYOUT, self.model, self.record, half)

    def operator(self, system: PoissonSystem) -> HMatrix:
        """M for `system` on the network's device and in its dtype, differentiable in the weights."""
        return self._build(system)[0]

    def _build(self, system: PoissonSystem, corrections: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[HMatrix, tuple[torch.Tensor, torch.Tensor]]:
        """(M, the network's corrections); given `corrections` (the network's output for an earlier
        system on this grid), the network does not run."""
        cfg = self.model.cfg
        weight = self.model.embed.weight
        system = system.to(device=weight.device)     # the analytic part reads it in float64
        space = coarse_space(partition(system.nx, system.ny, cfg.leaf_size), cfg.segments, cfg.rank)
        an = Analytic.build(system, space, weight.dtype)
        leaf_corr, cluster_corr = corrections if corrections is not None else self.model(space.part, an.stencil)
        eye = torch.eye(cfg.rank, dtype=cluster_corr.dtype, device=cluster_corr.device)
        t = (eye + cluster_corr).split([r.shape[0] for r in an.galerkin])
        hm = HMatrix(space, an.stencil, an.leaf_operators, an.distinct_index, an.basis, an.coupling, an.gram_root,
                     an.scale[:, None, None] * leaf_corr, an.galerkin, an.leaf_galerkin, list(t),
                     cfg.smoothing, cfg.eps)
        return hm, (leaf_corr, cluster_corr)

    def setup(self, system: PoissonSystem) -> None:
        if self.model.embed.weight.device != system.device:
            self.model.to(system.device)
        kept = self._corrections
        reuse = (self.reuse is not None and kept is not None and kept[0] == system.shape and not self._rerun
                 and self._age < self.reuse.max_age and kept[1].device == system.device)
        with torch.inference_mode():              # no autograd bookkeeping in a solve
            self.hm, corrections = self._build(system, kept[1:] if reuse else None)
        self.setup_reused = reuse
        if reuse:
            self._age += 1
        else:
            self._corrections = (system.shape, *corrections) if self.reuse is not None else None
            self._age, self._first, self._rerun = 0, None, False

    def observe(self, iterations: int) -> None:
        """The iterations of the solve just done with this set-up: too many for reused corrections
        (see NetworkReuse) make the next setup rerun the network."""
        if self.reuse is None:
            return
        if self._first is None:
            self._first = None if self.setup_reused else iterations
        elif iterations > self.reuse.growth * self._first + self.reuse.slack:
            self._rerun = True

    def apply(self, r: torch.Tensor) -> torch.Tensor:
        if self.hm is None:
            raise RuntimeError("HTP.apply before setup")
        return self.hm.apply(r).to(r.dtype)
