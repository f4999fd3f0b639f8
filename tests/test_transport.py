"""Velocity transport: APIC's particles (seeding, a steady count, reseeding after a reset or resize), rest and
divergence with APIC, and its lower dissipation than the semi-Lagrangian transport on a sloshing tank."""
import numpy as np
import pytest

from precond import METHODS, Solver
from sim import apic, measure
from sim.scene import parse_scene
from sim.simulation import Simulation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sim(shapes, nx=32, ny=16, ratio=1000.0, top="wall", transport="apic", **extra):
    scene = parse_scene({"grid": {"nx": nx, "ny": ny}, "ratio": ratio, "boundary": {"top": top},
                         "shapes": shapes, "transport": transport, **extra}, "test", methods=METHODS)
    return Simulation(scene, Solver("mgpcg"))


def _pool(depth):
    return [{"type": "box", "min": [0, 0], "max": [4, depth]}]


def _band_cells(sim):
    return int(np.count_nonzero(sim.state()["phi"] < apic.SEED_BAND / sim.ny))


def _per_cell(sim):
    x = sim._particles.positions()
    counts = np.zeros((sim.nx, sim.ny), dtype=int)
    np.add.at(counts, (np.minimum(x[:, 0].astype(int), sim.nx - 1), np.minimum(x[:, 1].astype(int), sim.ny - 1)), 1)
    return counts


def test_semi_lagrangian_runs_without_particles():
    assert _sim(_pool(0.4), transport="semi_lagrangian").particle_count() == 0


def test_particles_fill_the_water_and_the_air_cells_touching_it():
    sim = _sim(_pool(0.4))
    counts = _per_cell(sim)
    band = sim.state()["phi"] < apic.SEED_BAND / sim.ny
    assert (counts[band] == apic.TARGET_PER_CELL).all()
    assert (counts[~band] == 0).all()
    assert sim.particle_count() == apic.TARGET_PER_CELL * _band_cells(sim)


def test_the_particle_count_stays_steady_in_a_breaking_flow():
    sim = _sim([{"type": "box", "min": [0, 0], "max": [0.8, 0.6]}], nx=64, ny=32)
    counts = []
    for _ in range(120):
        sim.step()
        counts.append(sim.particle_count())
        per_cell = _per_cell(sim)
        assert per_cell.max() <= apic.MAX_PER_CELL
        band = sim.state()["phi"] < apic.SEED_BAND / sim.ny
        assert per_cell[band].min() >= apic.MIN_PER_CELL  # thin cells were topped up
    late = np.array(counts[60:])
    assert late.max() / late.min() < 1.1  # steady: no growth, no loss
    assert 4.0 <= late.mean() / _band_cells(sim) <= apic.MAX_PER_CELL


def test_reset_and_resize_seed_the_particles_afresh():
    sim = _sim(_pool(0.4))
    start = sim.particle_count()
    for _ in range(5):
        sim.step()
    sim.reset()
    assert sim.particle_count() == start
    sim.resize(64, 32)
    assert sim.particle_count() == apic.TARGET_PER_CELL * _band_cells(sim)
    assert sim.step().converged


@pytest.mark.parametrize("top", ["wall", "open"])
def test_hydrostatic_rest_at_1000_to_1_with_apic(top):
    sim = _sim(_pool(0.37), nx=32, ny=32, top=top)
    worst = 0.0
    for _ in range(200):
        sim.step()
        state = sim.state()
        worst = max(worst, float(np.abs(state["u"]).max()), float(np.abs(state["v"]).max()))
    # The bound of the semi-Lagrangian test (tests/test_sim.py): P2G of a field at rest is exactly at rest.
    assert worst < 1e-5
    assert abs(sim.water_volume() - 0.37) < 1e-4


def test_divergence_after_an_apic_step_is_the_solver_residual():
    sim = _sim([{"type": "box", "min": [0, 0], "max": [0.8, 0.6]}], nx=32, ny=16)
    for _ in range(10):
        stats = sim.step()
    state = sim.state()
    div = np.diff(state["u"], axis=0) + np.diff(state["v"], axis=1)
    assert np.abs(div).max() < 1e-3 * np.abs(state["v"]).max()  # divergence in velocity units per cell
    assert stats.converged


def _sloshing_loss(transport: str) -> float:
    """The energy lost over one sloshing period of the shipped scene's shape at 64 x 32, 100:1."""
    sim = _sim([{"type": "halfplane", "point": [1.0, 0.35], "normal": [0.15, 1.0], "velocity": [0.4, 0.0]}],
               nx=64, ny=32, ratio=100.0, top="open", transport=transport)
    h = 1.0 / sim.ny
    sim.step()
    start = measure.available_energy(sim.state(), h, sim.ratio, sim.scene.gravity)
    for _ in range(136):  # one period of the fundamental mode: 2.26 s
        sim.step()
    return 1.0 - measure.available_energy(sim.state(), h, sim.ratio, sim.scene.gravity) / start


@pytest.mark.slow
def test_apic_loses_less_sloshing_energy_than_semi_lagrangian():
    apic_loss, sl_loss = _sloshing_loss("apic"), _sloshing_loss("semi_lagrangian")
    assert 0.0 < apic_loss < 0.6 * sl_loss, (apic_loss, sl_loss)


def test_the_memory_model_counts_the_particle_fields():
    from sim import memory
    assert memory.PARTICLE_BYTES == apic.bytes_per_capacity_cell()
    with_particles = memory.estimate(128, 64, "mgpcg", particles=True).parts["simulation"]
    assert with_particles - memory.estimate(128, 64, "mgpcg").parts["simulation"] == memory.PARTICLE_BYTES * 129 * 65
