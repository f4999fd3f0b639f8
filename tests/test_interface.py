"""Interface capturing: the scene's `interface` option, the particle level set's markers (both sides of the
interface, none in solids, reseeded after a reset or resize), rest and air kept at 1,000:1."""
import math

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from precond import METHODS, Solver
from sim import memory, pls
from sim.scene import SceneError, load_scene, parse_scene
from sim.simulation import Simulation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sim(shapes, nx=32, ny=32, top="wall", interface="particle_level_set", **extra):
    scene = parse_scene({"grid": {"nx": nx, "ny": ny}, "ratio": 1000, "boundary": {"top": top}, "shapes": shapes,
                         "interface": interface, **extra}, "test", methods=METHODS)
    return Simulation(scene, Solver("mgpcg"))


def _pool(depth):
    return [{"type": "box", "min": [0, 0], "max": [4, depth]}]


def _phi_at(sim, x):
    """phi (cells) at marker positions x (cells), bilinear as the kernels sample it."""
    return map_coordinates(sim.state()["phi"] * sim.ny, [x[:, 0] - 0.5, x[:, 1] - 0.5], order=1, mode="nearest")


def test_a_bad_interface_value_is_one_line(tmp_path):
    path = tmp_path / "scene.yaml"
    path.write_text("shapes: []\ninterface: particles\n")
    with pytest.raises(SceneError) as info:
        load_scene(path, methods=METHODS)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: interface: ")
    assert "level_set" in message and "particle_level_set" in message and "'particles'" in message


def test_the_level_set_alone_has_no_markers():
    assert parse_scene({"shapes": []}, "x", methods=METHODS).interface == "level_set"
    x, r = _sim(_pool(0.4), interface="level_set").markers()
    assert len(x) == len(r) == 0


def test_markers_sit_on_both_sides_of_the_interface_within_the_band_and_not_in_solids():
    sim = _sim(_pool(0.5) + [{"type": "box", "min": [0.3, 0.3], "max": [0.6, 0.7], "phase": "solid"}])
    x, r = sim.markers()
    phi = _phi_at(sim, x)
    assert (r > 0).any() and (r < 0).any()
    assert np.all(np.sign(r) == np.where(phi >= 0, 1, -1))  # each on the side it was seeded on
    assert np.all((np.abs(r) >= pls.MIN_RADIUS - 1e-6) & (np.abs(r) <= pls.MAX_RADIUS + 1e-6))
    assert np.abs(phi).max() < pls.BAND + 1.0
    i, j = x[:, 0].astype(int), x[:, 1].astype(int)
    assert not sim.fields()["solid"][i, j].any()


def test_markers_leave_the_solids_a_body_moves_into_and_come_back_after_reset_and_resize():
    paddle = {"type": "box", "min": [0.2, 0.2], "max": [0.3, 0.6], "phase": "solid",
              "motion": {"amplitude": [0.15, 0.0], "period": 0.5}}
    sim = _sim(_pool(0.5) + [paddle], top="open")
    start = len(sim.markers()[0])
    for _ in range(2 * pls.RESEED_FRAMES):
        assert sim.step().converged
    x, r = sim.markers()  # a reseeding frame: the markers a body ran over are gone
    assert not sim.fields()["solid"][x[:, 0].astype(int), x[:, 1].astype(int)].any()
    assert np.isfinite(sim.state()["phi"]).all()
    sim.reset()
    assert len(sim.markers()[0]) == start
    sim.resize(48, 48)
    x, _ = sim.markers()
    assert len(x) > start and x[:, 0].max() < 48 and x[:, 1].max() < 48
    assert sim.step().converged


def test_added_water_is_not_taken_back_by_the_air_markers_it_covers():
    sim = _sim(_pool(0.3), volume_correction=False, gravity=0.0)
    before = sim.water_volume()
    sim.add_water(0.5, 0.36, 0.1)  # over the surface, where the air markers are
    added = sim.water_volume()
    x, r = sim.markers()
    assert not ((r > 0) & (np.hypot(x[:, 0] / 32 - 0.5, x[:, 1] / 32 - 0.36) < 0.09)).any()
    sim.step()
    assert sim.water_volume() - before == pytest.approx(added - before, rel=0.02)


@pytest.mark.parametrize("top", ["wall", "open"])
@pytest.mark.parametrize("transport", ["semi_lagrangian", "apic"])
def test_hydrostatic_rest_at_1000_to_1_with_the_particle_level_set(top, transport):
    sim = _sim(_pool(0.37), top=top, transport=transport)
    worst = 0.0
    for _ in range(60):
        sim.step()
        state = sim.state()
        worst = max(worst, float(np.abs(state["u"]).max()), float(np.abs(state["v"]).max()))
    assert worst < 1e-5  # the bound of the level set's own test (tests/test_sim.py)
    assert abs(sim.water_volume() - 0.37) < 1e-4


def _bubble_change(interface):
    """Largest |water area change| / bubble area of a bubble of radius 4.8 cells rising at 1,000:1 for 15 frames,
    volume correction off."""
    radius = 0.1
    sim = _sim(_pool(0.8) + [{"type": "circle", "center": [1 / 3, 0.25], "radius": radius, "phase": "air"}],
               ny=48, interface=interface, volume_correction=False)
    start, worst = sim.water_volume(), 0.0
    for _ in range(15):
        sim.step()
        worst = max(worst, abs(sim.water_volume() - start) * sim.scene.width / (math.pi * radius ** 2))
    return worst


def test_a_small_rising_bubble_keeps_its_air_with_the_particle_level_set():
    with_markers, alone = _bubble_change("particle_level_set"), _bubble_change("level_set")
    assert with_markers < 0.015 and alone > 1.5 * with_markers, (with_markers, alone)  # measured 0.011, 0.023


def test_the_memory_model_counts_the_marker_fields():
    assert memory.MARKER_BYTES == pls.bytes_per_capacity_cell()
    with_markers = memory.estimate(128, 64, "mgpcg", markers=True).parts["simulation"]
    assert with_markers - memory.estimate(128, 64, "mgpcg").parts["simulation"] == memory.MARKER_BYTES * 129 * 65
