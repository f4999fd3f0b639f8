"""The Taichi fields of one simulation, allocated at a capacity so that resizing rarely recompiles.

Every field is allocated at `(capx + 1, capy + 1)` with `capx`, `capy` powers of two, and the
kernels read the live size from `size = [nx, ny, open_top, flags, bodies]` (flags: the non-finite
values a kernel found, see sim.assemble), so any grid up to the capacity reuses the compiled kernels.
The solids (sim.solids) live here too: the fixed geometry's signed distance `solid`, every cell's
`kind` and the moving bodies' table `bodies` (size[4] of them live). States are pooled by capacity:
a simulation that is dropped (or outgrows its state) hands it back, and the next one of that
capacity takes it, compiled.
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import taichi as ti
from scipy.ndimage import map_coordinates

from .memory import capacity

# The scalar f32 fields of a state, all shaped (capx + 1, capy + 1); besides them, `fixed` and `kind` (u8) and
# `bt` (2 x f32).
_SCALARS = ("phi", "phi_f", "phi_a", "u", "us", "v", "vs", "cu", "cv", "p", "solid")
MAX_BODIES = 8  # rows of the bodies table (sim.scene.MAX_BODIES)
BODY_COLUMNS = 7  # kind (0 box, 1 circle), centre x, y, half-width or radius, half-height, velocity u, v


def bytes_per_capacity_cell() -> int:
    """What the fields of a state take per (capx + 1) x (capy + 1) cell (sim.memory's FIELD_BYTES)."""
    return 4 * len(_SCALARS) + 2 + 2 * 4


@ti.data_oriented
class GridState:
    """MAC grid state: u (nx+1, ny) on x-faces, v (nx, ny+1) on y-faces, level set phi and pressure p at centres.

    phi_f, phi_a: forward and corrected advection of phi, which the reinitialisation (after the last
    projection) reuses as its two buffers; fixed: the cells it keeps; solid, kind, bodies: sim.solids; us, vs: velocity after advection
    and forces (u*); cu, cv: face coefficients 1/rho_face; bt: the backtraced position of every cell
    centre (in cells).
    """

    def __init__(self, capx: int, capy: int) -> None:
        self.capx, self.capy = capx, capy
        self.nx, self.ny = 0, 0
        self.release: weakref.finalize | None = None
        shape = (capx + 1, capy + 1)
        fb = ti.FieldsBuilder()
        self.size = ti.field(ti.i32)
        fb.dense(ti.i, 5).place(self.size)
        for name in _SCALARS:
            f = ti.field(ti.f32)
            fb.dense(ti.ij, shape).place(f)
            setattr(self, name, f)
        self.fixed = ti.field(ti.u8)
        fb.dense(ti.ij, shape).place(self.fixed)
        self.kind = ti.field(ti.u8)
        fb.dense(ti.ij, shape).place(self.kind)
        self.bodies = ti.field(ti.f32)
        fb.dense(ti.ij, (MAX_BODIES, BODY_COLUMNS)).place(self.bodies)
        self.bt = ti.Vector.field(2, ti.f32)
        fb.dense(ti.ij, shape).place(self.bt)
        fb.finalize()

    def fits(self, nx: int, ny: int) -> bool:
        return nx <= self.capx and ny <= self.capy

    def set_size(self, nx: int, ny: int, open_top: bool) -> None:
        self.nx, self.ny = nx, ny
        self.size.from_numpy(np.array([nx, ny, int(open_top), 0, 0], dtype=np.int32))
        self.kind.fill(0)  # all fluid until sim.solids marks the cells

    # ------------------------------------------------------------------ host transfers (reset, resize)
    def read(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        return getattr(self, name).to_numpy()[: shape[0], : shape[1]].astype(np.float64)

    def write(self, name: str, values: np.ndarray) -> None:
        full = np.zeros((self.capx + 1, self.capy + 1), dtype=np.float32)
        full[: values.shape[0], : values.shape[1]] = values
        getattr(self, name).from_numpy(full)

    def state(self) -> dict[str, np.ndarray]:
        """phi, u, v, p at the live size, float64 copies."""
        return {name: self.read(name, shape) for name, shape in state_shapes(self.nx, self.ny).items()}


def state_shapes(nx: int, ny: int) -> dict[str, tuple[int, int]]:
    """The arrays that make up a state and their shapes on an nx x ny grid."""
    return {"phi": (nx, ny), "u": (nx + 1, ny), "v": (nx, ny + 1), "p": (nx, ny)}


# Where sample (0, 0) of each state array sits, in cell units.
STATE_OFFSETS = {"phi": (0.5, 0.5), "u": (0.0, 0.5), "v": (0.5, 0.0), "p": (0.5, 0.5)}

_pool: dict[tuple[type, int, int], list[Any]] = {}


def acquire(owner: Any, nx: int, ny: int, kind: type = GridState) -> Any:
    """A `kind` (GridState, or another set of fields built from (capx, capy) with a `release` slot, such as
    sim.apic.Particles) with room for nx x ny, reused from the pool when one is free: compiled kernels
    stay valid for it. It returns there when `owner` dies."""
    key = (capacity(nx), capacity(ny))
    free = _pool.setdefault((kind, *key), [])
    state = free.pop() if free else kind(*key)
    state.release = weakref.finalize(owner, free.append, state)
    return state


def release(state: Any) -> None:
    """Hand a state back to the pool now (its owner switched to another one)."""
    state.release()


def resample(values: np.ndarray, shape: tuple[int, int], offset: tuple[float, float],
             old_cells: tuple[int, int], new_cells: tuple[int, int]) -> np.ndarray:
    """Bilinear re-sampling of a grid quantity onto another grid over the same (stretched) domain.

    `offset` is where sample (0, 0) sits in cell units ((0.5, 0.5) for centres, (0, 0.5) for u,
    (0.5, 0) for v); positions map through the normalised domain [0, 1] x [0, 1].
    """
    i = (np.arange(shape[0]) + offset[0]) * (old_cells[0] / new_cells[0]) - offset[0]
    j = (np.arange(shape[1]) + offset[1]) * (old_cells[1] / new_cells[1]) - offset[1]
    gi, gj = np.meshgrid(i, j, indexing="ij")
    return map_coordinates(values, [gi, gj], order=1, mode="nearest")


def resample_state(state: dict[str, np.ndarray], old_cells: tuple[int, int],
                   new_cells: tuple[int, int]) -> dict[str, np.ndarray]:
    """Every array of a state re-sampled from an old_cells grid onto a new_cells one (see `resample`)."""
    shapes = state_shapes(*new_cells)
    return {name: resample(values, shapes[name], STATE_OFFSETS[name], old_cells, new_cells)
            for name, values in state.items()}
