"""The memory a run needs, estimated before anything is allocated, against what this machine has free.

A run holds the process itself (Python, torch, Taichi: `PROCESS_BYTES`), the simulation's
Taichi fields at their power-of-two capacity (`FIELD_BYTES` per capacity cell, sim.grid), its
per-frame buffers (`FRAME_BYTES` per cell: the assembled system, right-hand side and unknowns in float64,
the pressure and the last one kept as the next first guess, the display fields), the peak of a
reset or resize (`RESET_BYTES` per cell: the numpy arrays the initial state and re-sampling are
built from), and the solver's set-up and solve (`precond.estimate_memory`, for the method and
for mgpcg, which every solver falls back to). Callers add their own parts (the viewer's
textures, the frame records of a long run). Available is MemAvailable from /proc/meminfo, or
less where the process's cgroup has a memory limit.

Imports neither Taichi nor torch's solvers beyond `precond.estimate_memory`, so the command line
refuses a grid before Taichi starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from precond import estimate_memory

GB = 1e9
PROCESS_BYTES = 450_000_000  # resident after importing torch and Taichi and starting Taichi (measured: 333 MB;
#                               a whole headless dam break at 128x64 with mgpcg peaks at 408 MB)
FIELD_BYTES = 54  # per (capx + 1) x (capy + 1) cell: sim.grid.bytes_per_capacity_cell()
PARTICLE_BYTES = 84  # the same, for APIC's particles: sim.apic.bytes_per_capacity_cell()
MARKER_BYTES = 108  # the same, for the particle level set's markers: sim.pls.bytes_per_capacity_cell()
FRAME_BYTES = 88  # per cell: system, b and the unknowns mask (40), pressure and first guess (16), display fields (32)
RESET_BYTES = 200  # per cell: the peak numpy arrays of a reset or resize (measured: 120 to 170)
FALLBACK = "mgpcg"  # what precond.Solver falls back to


class MemoryLimitError(ValueError):
    """A run (or a resize) needs more memory than is available; the message is one line."""


def capacity(n: int) -> int:
    """The power of two (at least 8) that n cells fit in: the size sim.grid allocates a side at."""
    return 1 << max(3, (n - 1).bit_length())


@dataclass(frozen=True)
class Estimate:
    """Bytes by part; `total` is what must be free."""

    parts: Mapping[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        """e.g. '9.3 GB (process 0.45, simulation 0.9, solver 7.9)'."""
        return f"{self.total / GB:.2f} GB (" + ", ".join(f"{k} {v / GB:.2f}" for k, v in self.parts.items()) + ")"


def estimate(nx: int, ny: int, method: str, *, process: bool = True,
             extra: Optional[Mapping[str, int]] = None, particles: bool = False, markers: bool = False) -> Estimate:
    """What an nx x ny run with solver `method` needs; `process`: count the process itself (a run not
    started yet); `extra`: the caller's own parts; `particles`: the run uses APIC's particles; `markers`:
    the particle level set's."""
    cells = nx * ny
    per_capacity_cell = FIELD_BYTES + (PARTICLE_BYTES if particles else 0) + (MARKER_BYTES if markers else 0)
    sim = per_capacity_cell * (capacity(nx) + 1) * (capacity(ny) + 1) + (FRAME_BYTES + RESET_BYTES) * cells
    solver = estimate_memory(method, nx, ny) + (estimate_memory(FALLBACK, nx, ny) if method != FALLBACK else 0)
    parts = {"process": PROCESS_BYTES} if process else {}
    parts.update(simulation=sim, solver=solver, **(extra or {}))
    return Estimate(parts)


def _meminfo_available(path: Path = Path("/proc/meminfo")) -> Optional[int]:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_headroom(root: Path = Path("/sys/fs/cgroup")) -> Optional[int]:
    """limit - usage of the memory cgroup (v2, then v1), or None where no limit is set."""
    for limit_name, usage_name in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = (root / limit_name).read_text().strip()
            usage = int((root / usage_name).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
            return None
        return max(0, int(limit) - usage)
    return None


def available() -> tuple[Optional[int], str]:
    """(bytes free for this process, where the figure comes from); (None, ...) where it cannot be told."""
    meminfo, cgroup = _meminfo_available(), _cgroup_headroom()
    if cgroup is not None and (meminfo is None or cgroup < meminfo):
        return cgroup, "the cgroup's memory limit"
    return meminfo, "MemAvailable"


def check(nx: int, ny: int, method: str, *, process: bool = True, extra: Optional[Mapping[str, int]] = None,
          what: str = "", particles: bool = False, markers: bool = False) -> Estimate:
    """The estimate, or MemoryLimitError (one line naming it and what is available) if it does not fit.

    `what` starts the message (e.g. '--grid 2048x2048'); where the free memory cannot be told
    (no /proc), nothing is refused."""
    need = estimate(nx, ny, method, process=process, extra=extra, particles=particles, markers=markers)
    free, source = available()
    if free is not None and need.total > free:
        label = what or f"a {nx}x{ny} grid"
        raise MemoryLimitError(f"{label} with solver {method} needs about {need.describe()} of memory, but "
                               f"{free / GB:.2f} GB is available ({source}); choose a smaller grid or another solver")
    return need
