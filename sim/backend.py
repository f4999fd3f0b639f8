"""Taichi is initialised once per process, on the CPU or on CUDA; everything in sim/ runs there."""
from __future__ import annotations

from typing import Optional

import taichi as ti

from .limits import DEVICES

_current: Optional[str] = None


def init(device: str) -> None:
    """Start Taichi on `device` ('cpu' or 'cuda'); later calls must name the same device."""
    global _current
    if device not in DEVICES:
        raise ValueError(f"device: expected one of {', '.join(DEVICES)}, got {device!r}")
    if _current is not None:
        if device != _current:
            raise RuntimeError(f"Taichi already runs on {_current} in this process; cannot switch to {device}")
        return
    arch = ti.cuda if device == "cuda" else ti.cpu
    # Kernels test float bit patterns for NaN/inf, so fast-math may stay on.
    ti.init(arch=arch, default_fp=ti.f32, log_level=ti.WARN)
    if device == "cuda" and ti.lang.impl.current_cfg().arch != ti.cuda:
        raise RuntimeError("device cuda: Taichi found no usable CUDA device here; use device cpu")
    _current = device


def sync() -> None:
    """Wait for queued kernels (needed before reading wall-clock times on CUDA)."""
    if _current == "cuda":
        ti.sync()
