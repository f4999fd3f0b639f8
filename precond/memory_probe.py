"""Measure a solver's peak memory: the figures precond.memory's model is fitted to.

    python -m precond.memory_probe [--grids 256x256 512x512] [--methods mgpcg ic0 ...]

Each measurement runs in a fresh process (peak RSS is process-wide, and a warm per-shape cache
would hide part of a set-up): it builds the system and b, resets the kernel's peak-RSS mark
(/proc/self/clear_refs, Linux only), runs one set-up plus solve and reports the new peak minus
the RSS before it. glibc's mmap threshold is pinned at 128 KiB (MALLOC_MMAP_THRESHOLD_), so every
array larger than that is returned to the kernel when freed: the figure is the live peak, the
same on every run, not whatever heap glibc happened to keep. The solve is capped at `maxiter` iterations: its vectors are all allocated
in the first one.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from .memory import MIB, MODELS, estimate_memory

_PROBE = r"""
import json, sys
import torch
from precond import Solver
from precond.synthetic import dambreak_phi, two_phase_system

method, nx, ny, ratio, maxiter = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(1)
system = two_phase_system(dambreak_phi(nx, ny), ratio, open_top=True)
b = torch.randn(system.n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
solver = Solver(method, maxiter=maxiter, fallback=None)
solver.solve(two_phase_system(dambreak_phi(8, 8), ratio, open_top=True), torch.ones(64, dtype=torch.float64))

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

with open("/proc/self/clear_refs", "w") as f:   # "5": reset the peak (VmHWM) to the current RSS
    f.write("5")
base = status("VmRSS")
result = solver.solve(system, b)
print(json.dumps({"peak": status("VmHWM") - base, "iterations": result.iterations}))
"""


def measure_memory(method: str, nx: int, ny: int, ratio: float = 100.0, maxiter: int = 20) -> int:
    """Peak bytes one set-up plus solve of the nx x ny dam break at `ratio` adds to the process."""
    out = subprocess.run([sys.executable, "-c", _PROBE, method, str(nx), str(ny), str(ratio), str(maxiter)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)})
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak"])


def main(argv: list[str] | None = None) -> None:
    from .dataset import parse_grid
    p = argparse.ArgumentParser(prog="python -m precond.memory_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--grids", type=parse_grid, nargs="+", default=[(256, 256), (512, 512)])
    p.add_argument("--methods", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = p.parse_args(argv)
    print("method       grid       measured MiB  bytes/cell  estimate MiB")
    for method in args.methods:
        for nx, ny in args.grids:
            peak = measure_memory(method, nx, ny)
            print(f"{method:12s} {nx:4d}x{ny:<4d}  {peak / MIB:12.1f}  {peak / (nx * ny):10.0f}"
                  f"  {estimate_memory(method, nx, ny) / MIB:12.1f}", flush=True)


if __name__ == "__main__":
    main()
