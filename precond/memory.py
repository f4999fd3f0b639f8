"""How much memory a solve needs: a measured model per method, for up-front checks.

`estimate_memory(method, nx, ny)` is the peak resident bytes that building `method`'s
preconditioner for an nx x ny system and running PCG on it add to a process that already
holds the system and its right-hand side (the per-shape caches a method keeps included).
The model is `fixed + per_cell * nx * ny`, fitted to the peak RSS that precond.memory_probe
measures (a fresh process, CPU, float64 system) at 256x256 and 512x512 and rounded up, so it
errs on the large side: tests/test_precond_memory.py holds it between 1x and 2x of the measured
peak at 512x512. Refit after changing a solver's set-up or solve with

    python -m precond.memory_probe --grids 256x256 512x512
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryModel:
    """Peak bytes of set-up plus solve: fixed + per_cell * cells."""

    per_cell: float
    fixed: int


MIB = 1 << 20
MODELS: dict[str, MemoryModel] = {
    "none": MemoryModel(per_cell=90, fixed=4 * MIB),
    "jacobi": MemoryModel(per_cell=90, fixed=4 * MIB),
    "ic0": MemoryModel(per_cell=800, fixed=16 * MIB),
    "mgpcg": MemoryModel(per_cell=4000, fixed=24 * MIB),
    "htp": MemoryModel(per_cell=2500, fixed=32 * MIB),
    "neural_spai": MemoryModel(per_cell=400, fixed=8 * MIB),
}


def estimate_memory(method: str, nx: int, ny: int) -> int:
    """Peak bytes `method`'s set-up plus solve needs on an nx x ny grid (beyond the system and b)."""
    if method not in MODELS:
        raise ValueError(f"unknown solver {method!r}; expected one of: {', '.join(MODELS)}")
    for name, v in (("nx", nx), ("ny", ny)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    model = MODELS[method]
    return int(model.fixed + model.per_cell * nx * ny)
