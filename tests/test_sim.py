"""The simulator against its contracts: the Poisson system it builds, the projection, rest, volume, robustness."""
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from precond import METHODS, PoissonSystem, SolveResult, Solver
from precond.synthetic import two_phase_system
from sim import backend, grid, levelset
from sim.projection import assemble
from sim.scene import load_scene, parse_scene
from sim.simulation import Simulation, SimulationError
from sim.stats import FrameStats

SCENES = Path(__file__).resolve().parent.parent / "scenes"
EPS32 = float(np.finfo(np.float32).eps)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _scene(shapes, nx=32, ny=16, ratio=1000.0, top="wall", **extra):
    return parse_scene({"grid": {"nx": nx, "ny": ny}, "ratio": ratio, "boundary": {"top": top},
                        "shapes": shapes, **extra}, "test", methods=METHODS)


def _shipped(name, grid, **overrides):
    return load_scene(SCENES / f"{name}.yaml", methods=METHODS).with_overrides(methods=METHODS, grid=grid, **overrides)


def _sim(scene):
    return Simulation(scene, Solver("mgpcg"))


def _dambreak(nx=32, ny=16, ratio=1000.0, top="wall", **extra):
    width = 0.2 * nx / ny  # 0.4 of a 2-wide domain: the same fractions on every grid
    return _scene([{"type": "box", "min": [0, 0], "max": [width, 0.6]}], nx, ny, ratio, top, **extra)


def _face_velocities(sim):
    state = sim.state()
    return state["u"], state["v"]


def _step_keeping_system(sim):
    """Step once; (stats, the frame's last Poisson system, its right-hand side)."""
    kept = []
    stats = sim.step(on_system=lambda system, b: kept.append((system, b)))
    (system, b), = kept
    return stats, system, b


class _Owner:
    """Something a grid state can belong to (the pool takes it back when this dies)."""


def _sharp_volume(phi):
    """Area fraction where the bilinear interpolant of phi is negative, by 4 x 4 supersampling per cell."""
    nx, ny = phi.shape
    s = (np.arange(4 * nx) + 0.5) / 4 - 0.5
    t = (np.arange(4 * ny) + 0.5) / 4 - 0.5
    return float((map_coordinates(phi.astype(np.float64), np.meshgrid(s, t, indexing="ij"), order=1,
                                  mode="nearest") < 0).mean())


# ---------------------------------------------------------------------- the Poisson system
SHAPES = [{"type": "box", "min": [0, 0], "max": [1.2, 0.35]},
          {"type": "circle", "center": [0.5, 0.7], "radius": 0.15, "velocity": [0.5, -1]},
          {"type": "circle", "center": [0.9, 0.15], "radius": 0.1, "phase": "air"}]


@pytest.mark.parametrize("top", ["open", "wall"])
def test_assembled_matrix_is_spd(top):
    sim = _sim(_scene(SHAPES, nx=12, ny=10, ratio=1000.0, top=top))
    _, system, b = _step_keeping_system(sim)
    assert isinstance(system, PoissonSystem) and system.shape == (12, 10) and system.dtype == torch.float64
    a = system.to_csr().toarray()
    assert np.array_equal(a, a.T)
    w = np.linalg.eigvalsh(a)
    if top == "open":
        assert w[0] > 1e-6 * w[-1] and not system.singular
    else:  # closed box: positive semi-definite, null space exactly the constants
        assert abs(w[0]) < 1e-12 * w[-1] and w[1] > 1e-6 * w[-1] and system.singular
        assert np.abs(a @ np.ones(a.shape[0])).max() < 1e-12 * w[-1]
    assert b.shape == (120,) and b.dtype == torch.float64


@pytest.mark.parametrize("top", ["open", "wall"])
def test_assembly_follows_the_face_rule_and_the_flux_balance(top):
    """The assembly kernel on a given level set and u*: precond.synthetic's face rule, b = -(outward u* flux)."""
    nx, ny = 12, 10
    backend.init("cpu")
    owner = _Owner()
    state = grid.acquire(owner, nx, ny)
    state.set_size(nx, ny, top == "open")
    state.write("phi_a", levelset.initial_phi(_scene(SHAPES, nx, ny).shapes, nx, ny))
    rng = np.random.default_rng(0)
    state.write("us", rng.standard_normal((nx + 1, ny)))
    state.write("vs", rng.standard_normal((nx, ny + 1)))
    packed = torch.empty((5, nx, ny), dtype=torch.float64)
    speed, flags = assemble(state, packed, 1e-3)
    assert flags == 0
    ref = two_phase_system(state.read("phi_a", (nx, ny)), 1000.0, open_top=top == "open")
    for k, name in enumerate(("diag", "cx", "cy")):
        np.testing.assert_allclose(packed[k].numpy(), getattr(ref, name).numpy(), rtol=1e-5, atol=1e-7)
    us, vs = state.read("us", (nx + 1, ny)), state.read("vs", (nx, ny + 1))
    np.testing.assert_allclose(packed[3].numpy(), -(us[1:] - us[:-1] + vs[:, 1:] - vs[:, :-1]), rtol=1e-12, atol=1e-12)
    assert (packed[4] == 1.0).all()  # every cell has an unknown


@pytest.mark.parametrize("scene", ["dambreak", "drop"])
def test_divergence_after_projection_is_the_solver_residual(scene):
    sim = _sim(_shipped(scene, (32, 16) if scene == "dambreak" else (24, 24)))
    for _ in range(11):
        sim.step()
    stats, _, b = _step_keeping_system(sim)
    u, v = _face_velocities(sim)
    div = (u[1:] - u[:-1] + v[:, 1:] - v[:, :-1]).reshape(-1)  # outward flux per cell, the units of b
    b = b.numpy()
    tol = sim.solver.tol
    assert stats.converged and stats.residual <= tol
    # div = b - A p exactly, plus the float32 rounding of the four face velocities of every cell.
    bound = 2.0 * tol * np.linalg.norm(b) + 4.0 * EPS32 * max(np.abs(u).max(), np.abs(v).max()) * np.sqrt(div.size)
    assert np.linalg.norm(div) <= bound
    assert np.linalg.norm(div) < 1e-5 * np.linalg.norm(b)


# ---------------------------------------------------------------------- physics
@pytest.mark.parametrize("top", ["wall", "open"])
def test_hydrostatic_rest_at_1000_to_1(top):
    sim = _sim(_scene([{"type": "box", "min": [0, 0], "max": [1, 0.37]}], nx=32, ny=32, ratio=1000.0, top=top))
    worst = 0.0
    for _ in range(200):
        sim.step()
        f = sim.fields()
        worst = max(worst, float(np.abs(f["u"]).max()), float(np.abs(f["v"]).max()))
    # Gravity adds g dt = 0.16 m/s to every vertical face each frame and the pressure gradient,
    # weighted by the same face densities, must take all of it back: with a flat interface the
    # balance is exact, so only the PCG residual (1e-6 relative to |b| ~ g dt) and float32
    # rounding of u* - c grad p (~1e-7 g dt) remain, and the next projection removes them again
    # rather than letting them add up. 1e-5 m/s (1e-4 g dt) leaves a 30x margin over the measured
    # ~3e-7 m/s; a free fall would reach 33 m/s in these 200 frames.
    assert worst < 1e-5
    assert abs(sim.water_volume() - 0.37) < 1e-4


@pytest.mark.slow
def test_dambreak_keeps_its_volume_over_1000_frames():
    """N = 4,096 (64 x 64), the dam break's fractions: the column is 20% wide and 60% high."""
    sim = _sim(_dambreak(64, 64))
    start = _sharp_volume(sim.fields()["phi"])
    assert start == pytest.approx(0.12, abs=2e-3)
    for frame in range(1, 1001):
        stats = sim.step()
        if frame % 100 == 0:
            assert abs(_sharp_volume(sim.fields()["phi"]) / start - 1.0) < 0.01, f"frame {frame}"
            assert abs(stats.volume / start - 1.0) < 0.01
    assert sim.frame == 1000 and sim.time == pytest.approx(1000 / 60)


@pytest.mark.parametrize("correct", [True, False])
def test_volume_correction_restores_the_target(correct):
    sim = _sim(_dambreak(volume_correction=correct))
    target = sim.water_volume()
    state = sim.state()
    state["phi"] += 0.3 / sim.ny  # the interface moves 0.3 cells into the water: a volume loss
    sim.restore(state)
    assert sim.water_volume() < 0.97 * target
    shifts = [sim.step().volume_shift for _ in range(4)]
    error = abs(sim.water_volume() / target - 1.0)
    assert error < 0.005 if correct else error > 0.02
    # the stats report the shifts that undid it: 0.3 cells back out of the water in all, or none at all
    assert sum(shifts) == pytest.approx(-0.3, abs=0.1) if correct else shifts == [0.0] * 4


@pytest.mark.slow
@pytest.mark.parametrize("name, grid", [("dambreak", (32, 16)), ("drop", (24, 24)), ("bubbles", (16, 24)),
                                        ("sloshing", (32, 16))])
def test_every_scene_runs_500_frames_at_1000_to_1(name, grid):
    scene = _shipped(name, grid, ratio=1000.0)
    sim = _sim(scene)
    start = sim.water_volume()
    for _ in range(500):
        stats = sim.step()
        assert 1 <= stats.substeps <= scene.time.max_substeps
    for key, value in sim.fields().items():
        assert np.isfinite(value).all(), key
    assert stats.frame == 500 and stats.solver == "mgpcg"
    assert abs(sim.water_volume() / start - 1.0) < 0.02


# ---------------------------------------------------------------------- failure
class _SteepSolver(Solver):
    """A pressure rising by `scale` per column: the projected u is huge (or NaN), v stays as it was."""

    def __init__(self, scale: float) -> None:
        super().__init__("mgpcg")
        self.scale = scale

    def solve(self, system, b, x0=None):
        nx, ny = system.shape
        x = (self.scale * torch.arange(nx, dtype=torch.float64)).repeat_interleave(ny)
        return SolveResult(x, 1, 0.0, True, 0.0, "steep")


@pytest.mark.parametrize("scale, message", [
    (1e30, r"absurd velocity \(\|u\| or \|v\| above 100000 m/s\) from the steep solve"),  # u ~ 1e30: finite
    (1e300, r"non-finite pressure from the steep solve"),  # p = x h / dt overflows float32
    (float("nan"), r"non-finite pressure from the steep solve"),  # NaN already in the float64 solution
])
def test_a_bad_projection_stops_the_step_and_never_reaches_the_state(scale, message):
    sim = _sim(_dambreak())
    for _ in range(3):
        sim.step()
    before = sim.fields()
    sim.set_solver(_SteepSolver(scale))
    with pytest.raises(SimulationError, match=rf"^frame 4 \(t = 0\.0500 s\): {message}; the step was stopped$"):
        sim.step()
    after = sim.fields()  # what the viewer would draw: the last sound state
    for key in before:
        np.testing.assert_array_equal(before[key], after[key])
    sim.set_solver(Solver("mgpcg"))
    assert sim.step().frame == 4


def test_restore_refuses_a_non_finite_or_misshapen_state_and_keeps_its_own():
    sim = _sim(_dambreak())
    sim.step()
    before = sim.state()
    bad = sim.state()
    bad["v"][3, 4] = 1e300  # finite in float64, not in the float32 state
    with pytest.raises(ValueError, match=r"^v: expected finite values, got 1 non-finite"):
        sim.restore(bad)
    with pytest.raises(ValueError, match=r"^u: expected an array of shape \(33, 16\)"):
        sim.restore({**before, "u": np.zeros((32, 16))})
    after = sim.state()
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


# ---------------------------------------------------------------------- the public API
def test_fields_and_stats():
    sim = _sim(_dambreak())
    stats = sim.step()
    assert isinstance(stats, FrameStats)
    assert {f.name for f in dataclass_fields(FrameStats)} >= {
        "frame", "time", "dt", "substeps", "ms_advect", "ms_assemble", "ms_inference", "ms_pcg", "ms_project",
        "ms_total", "iterations", "residual", "converged", "solver", "fell_back", "note", "volume", "volume_shift"}
    assert stats.frame == sim.frame == 1 and stats.time == pytest.approx(1 / 60) == sim.time
    assert stats.iterations > 0 and stats.converged and not stats.fell_back and stats.solver == "mgpcg"
    assert stats.ms_total >= stats.ms_advect + stats.ms_assemble + stats.ms_pcg + stats.ms_project
    assert stats.ms_sim == stats.ms_advect + stats.ms_assemble + stats.ms_project
    f = sim.fields()
    assert set(f) == {"phi", "rho", "pressure", "speed", "vorticity", "u", "v", "solid"}
    assert not f["solid"].any()  # the dam break has no solids
    for value in f.values():
        assert value.shape == (32, 16) and value.dtype == np.float32
    assert f["rho"].min() >= 1.0 and f["rho"].max() <= 1000.0
    assert f["rho"][0, 0] == pytest.approx(1000.0) and f["rho"][-1, -1] == pytest.approx(1.0)
    assert f["pressure"][0, 0] > f["pressure"][0, -1]  # hydrostatic: higher at the bottom
    np.testing.assert_allclose(f["speed"], np.hypot(f["u"], f["v"]), rtol=1e-5, atol=1e-6)


def test_substeps_follow_the_cfl_number():
    # 8 m/s on a 1/32 grid moves 4.3 cells in a 1/60 s frame: two substeps at CFL 3.
    base = _scene([{"type": "box", "min": [0, 0], "max": [2, 0.5], "velocity": [8, 0]}], nx=64, ny=32, top="open")
    fast = _sim(base)
    stats = fast.step()
    assert stats.substeps > 1 and stats.cfl <= base.time.cfl + 1e-6
    capped = _sim(replace(base, time=replace(base.time, max_substeps=1)))
    stats = capped.step()
    assert stats.substeps == 1 and stats.cfl > base.time.cfl  # reported, not hidden
    fast.set_max_substeps(1)
    stats = fast.step()
    assert stats.substeps == 1 and fast.scene.time.max_substeps == 1
    with pytest.raises(ValueError, match="max_substeps: expected an integer from 1 to 64"):
        fast.set_max_substeps(0)


def test_resize_and_set_ratio_mid_run():
    sim = _sim(_dambreak())
    for _ in range(20):
        sim.step()
    volume = sim.water_volume()
    for nx, ny in ((48, 24), (16, 8), (64, 32)):  # larger, within capacity, beyond capacity
        sim.resize(nx, ny)
        assert (sim.nx, sim.ny) == (nx, ny) and sim.fields()["phi"].shape == (nx, ny)
        assert sim.water_volume() == pytest.approx(volume, rel=0.05)
        for _ in range(9):
            sim.step()
        stats, system, _ = _step_keeping_system(sim)
        assert stats.converged and system.shape == (nx, ny)
    sim.set_ratio(10.0)
    for _ in range(10):
        stats = sim.step()
    assert stats.converged and sim.fields()["rho"].max() == pytest.approx(10.0)
    for value in sim.fields().values():
        assert np.isfinite(value).all()
    assert sim.frame == 60
    with pytest.raises(ValueError, match="ratio"):
        sim.set_ratio(0.5)
    with pytest.raises(ValueError, match="nx"):
        sim.resize(4, 16)


def test_reset_add_water_and_push():
    sim = _sim(_dambreak(top="open"))
    start = sim.water_volume()
    for _ in range(5):
        sim.step()
    sim.add_water(1.5, 0.7, 0.1)
    added = sim.water_volume() - start
    assert added == pytest.approx(np.pi * 0.01 / 2.0, rel=0.1)  # a disc of radius 0.1 in a 2 x 1 domain
    for _ in range(5):
        sim.step()
    assert sim.water_volume() == pytest.approx(start + added, rel=0.01)
    sim.push(1.0, 0.5, 3.0, 0.0, 0.2)
    assert sim.fields()["u"][16, 8] > 1.0
    with pytest.raises(ValueError):
        sim.push(1.0, float("nan"), 1.0, 0.0, 0.2)
    sim.reset()
    assert (sim.frame, sim.time) == (0, 0.0) and sim.water_volume() == pytest.approx(start)
    assert np.abs(sim.fields()["speed"]).max() == 0.0


# ---------------------------------------------------------------------- extreme but valid, and absurd input
@pytest.mark.parametrize("du", [1e300, 1e30, float("inf"), 101.0])
def test_push_refuses_an_absurd_velocity_and_changes_nothing(du):
    sim = _sim(_dambreak())
    sim.step()
    before = sim.state()
    with pytest.raises(ValueError, match=r"^du: expected a number from -100 to 100 m/s|^du: expected a finite"):
        sim.push(1.0, 0.5, du, 0.0, 0.2)
    for name, values in sim.state().items():
        np.testing.assert_array_equal(values, before[name])
    assert sim.step().frame == 2


def test_an_absurd_state_stops_the_step_naming_the_field_and_frame():
    sim = _sim(_dambreak())
    for _ in range(1200):  # about 95 m/s a push next to the centre: above 1e5 m/s in the end
        sim.push(1.0, 0.5, 100.0, 0.0, 0.2)
    with pytest.raises(SimulationError, match=r"^frame 1 \(t = 0\.0000 s\): absurd velocity \(\|u\| or \|v\| above "
                                              r"100000 m/s\) in the state before the substep"):
        sim.step()
    assert np.isfinite(sim.fields()["speed"]).all()
    fast = sim.state()
    fast["u"][5, 5] = 2e5
    with pytest.raises(ValueError, match=r"^u: expected speeds from 0 to 100000 m/s, got 200000"):
        sim.restore(fast)


def test_a_cfl_beyond_what_the_advection_tolerates_is_reported():
    extreme = _scene([{"type": "box", "min": [0, 0], "max": [2, 0.5], "velocity": [100, 0]}], top="open",
                     gravity=100, time={"frame_dt": 0.1, "cfl": 10, "max_substeps": 1})
    stats = _sim(extreme).step()
    assert stats.substeps == 1 and stats.cfl > 100 and stats.over_cfl
    assert not _sim(_dambreak()).step().over_cfl


def test_the_memory_model_counts_the_fields_the_grid_allocates():
    from sim import memory
    assert memory.FIELD_BYTES == grid.bytes_per_capacity_cell()
    state = grid.acquire(_Owner(), 20, 9)
    assert (state.capx, state.capy) == (memory.capacity(20), memory.capacity(9)) == (32, 16)


def test_resize_refuses_a_grid_that_does_not_fit_and_goes_on(monkeypatch):
    from sim import memory
    sim = _sim(_dambreak())
    sim.step()
    room = memory.estimate(64, 32, "mgpcg", process=False).total
    monkeypatch.setattr(memory, "available", lambda: (room, "a test's limit"))
    sim.resize(64, 32)  # just fits
    with pytest.raises(memory.MemoryLimitError, match=r"^grid 128x64 with solver mgpcg needs about .* GB .*, but "
                                                      r".* GB is available \(a test's limit\)"):
        sim.resize(128, 64)
    assert (sim.nx, sim.ny) == (64, 32) and sim.step().converged


def test_the_state_pressure_is_the_next_solve_first_guess():
    """A restored state's pressure warm-starts the next solve (as the last projection's does every substep):
    the same state with its pressure zeroed takes more PCG iterations."""
    sim = _sim(_dambreak())
    for _ in range(10):
        sim.step()
    state = sim.state()
    warm, cold = _sim(_dambreak()), _sim(_dambreak())
    warm.restore(state)
    cold.restore({**state, "p": np.zeros_like(state["p"])})
    assert warm.step().iterations < cold.step().iterations
