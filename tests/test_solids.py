"""Solids in the simulator: the Poisson system they make, walls that keep water out, rest around an
obstacle, bodies that move as kinematic boundaries, and the shipped obstacle scenes."""
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla
import torch

from app.state import LEFT_TOOLS, ViewerState
from precond import METHODS, Solver
from sim.scene import Box, Circle, Motion, Polygon, load_scene, parse_scene
from sim.simulation import Simulation

SCENES = Path(__file__).resolve().parent.parent / "scenes"
OBSTACLE_SCENES = ("obstacle", "wavetank", "steps", "funnel")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

POOL = [{"type": "box", "min": [0, 0], "max": [2, 0.45]}]
BLOCKS = [{"type": "box", "min": [0.3, 0.0], "max": [0.55, 0.2], "phase": "solid"},       # submerged
          {"type": "box", "min": [1.2, 0.1], "max": [1.45, 0.7], "phase": "solid"},       # through the surface
          {"type": "polygon", "points": [[1.6, 0.0], [2.0, 0.0], [2.0, 0.3]], "phase": "solid"}]  # a beach


def _scene(shapes, nx=64, ny=32, ratio=1000.0, top="wall", **extra):
    return parse_scene({"grid": {"nx": nx, "ny": ny}, "ratio": ratio, "boundary": {"top": top},
                        "shapes": shapes, **extra}, "test", methods=METHODS)


def _step_keeping_system(sim):
    kept = []
    stats = sim.step(on_system=lambda system, b: kept.append((system, b)))
    return stats, *kept[-1]


def _solid(sim):
    return sim.fields()["solid"] > 0


def _solid_faces(solid):
    """x-faces and y-faces (interior) with a solid cell on either side."""
    return solid[:-1] | solid[1:], solid[:, :-1] | solid[:, 1:]


# ---------------------------------------------------------------------- geometry and the Poisson system
def test_solid_shapes_apply_in_order_and_fluid_shapes_carve_them():
    scene = _scene([{"type": "box", "min": [0, 0], "max": [1, 0.5], "phase": "solid"},
                    {"type": "box", "min": [0.25, 0.25], "max": [0.75, 0.75], "phase": "air"},   # a notch
                    {"type": "circle", "center": [1.5, 0.5], "radius": 0.2, "phase": "solid"}], nx=32, ny=16)
    solid = _solid(Simulation(scene, Solver("mgpcg")))
    h = 1 / 16
    x, y = (np.arange(32) + 0.5) * h, (np.arange(16) + 0.5) * h
    X, Y = np.meshgrid(x, y, indexing="ij")
    expected = (((X < 1) & (Y < 0.5)) & ~((abs(X - 0.5) < 0.25) & (abs(Y - 0.5) < 0.25))) | (np.hypot(X - 1.5, Y - 0.5) < 0.2)
    np.testing.assert_array_equal(solid, expected)


@pytest.mark.parametrize("top", ["wall", "open"])
def test_solid_cells_are_identity_rows_and_their_faces_carry_no_coupling(top):
    sim = Simulation(_scene(POOL + BLOCKS, top=top), Solver("mgpcg"))
    _, system, b = _step_keeping_system(sim)
    solid = _solid(sim)
    assert solid.any() and not solid.all()
    diag, cx, cy = (a.numpy() for a in (system.diag, system.cx, system.cy))
    assert (diag[solid] == 1.0).all() and (b.numpy().reshape(solid.shape)[solid] == 0.0).all()
    fx, fy = _solid_faces(solid)
    assert (cx[:-1][fx] == 0.0).all() and (cy[:, :-1][fy] == 0.0).all()
    assert (cx[:-1][~fx] > 0).all() and (cy[:, :-1][~fy] > 0).all()  # fluid faces keep theirs
    a = system.to_csr()
    assert abs(a - a.T).max() == 0.0
    assert np.linalg.eigvalsh(a.toarray()).min() > -1e-12  # SPD (semi-definite for a closed top)


@pytest.mark.parametrize("method", METHODS)
def test_every_solver_matches_scipy_on_a_system_with_solids(method):
    sim = Simulation(_scene(POOL + BLOCKS, nx=48, ny=24, top="open"), Solver("mgpcg"))
    for _ in range(3):
        _, system, b = _step_keeping_system(sim)
    result = Solver(method, tol=1e-10, maxiter=20_000, fallback=None).solve(system, b)
    assert result.converged
    exact = spla.spsolve(system.to_csr().tocsc(), b.numpy())
    np.testing.assert_allclose(result.x.numpy(), exact, rtol=0, atol=1e-7 * np.abs(exact).max())


def test_a_fluid_cell_closed_on_every_side_is_an_identity_row():
    walls = [{"type": "box", "min": [0.5, 0.0], "max": [0.75, 1.0], "phase": "solid"},
             {"type": "box", "min": [0.5625, 0.5], "max": [0.625, 0.5625], "phase": "air"}]  # one cell inside
    sim = Simulation(_scene(POOL + walls, nx=32, ny=16), Solver("mgpcg"))
    _, system, b = _step_keeping_system(sim)
    solid = _solid(sim)
    pocket = np.argwhere(~solid[8:12])  # the cell carved out of the wall, with solid on all four sides
    assert len(pocket) == 1
    i, j = pocket[0] + (8, 0)
    assert system.diag[i, j] == 1.0 and system.cx[i, j] == 0 and system.cx[i - 1, j] == 0
    assert b.reshape(32, 16)[i, j] == 0.0


# ---------------------------------------------------------------------- the flow around solids
@pytest.mark.parametrize("top", ["wall", "open"])
def test_hydrostatic_rest_around_obstacles_at_1000_to_1(top):
    sim = Simulation(_scene(POOL + BLOCKS, top=top), Solver("mgpcg"))
    start = sim.water_volume()
    worst = 0.0
    for _ in range(150):
        sim.step()
        f = sim.fields()
        worst = max(worst, float(np.abs(f["u"]).max()), float(np.abs(f["v"]).max()))
    # the open tank's bound (tests/test_sim.py): with the solids' faces closed the balance stays exact
    assert worst < 1e-5
    assert abs(sim.water_volume() / start - 1.0) < 1e-4


def test_no_water_enters_a_solid_and_the_fluid_next_to_it_is_divergence_free():
    scene = _scene([{"type": "box", "min": [0, 0], "max": [0.6, 0.8]}] + BLOCKS, nx=64, ny=32)
    sim = Simulation(scene, Solver("mgpcg", tol=1e-8))
    solid = _solid(sim)
    fx, fy = _solid_faces(solid)
    near = ~solid & (np.pad(solid, 1)[:-2, 1:-1] | np.pad(solid, 1)[2:, 1:-1]
                     | np.pad(solid, 1)[1:-1, :-2] | np.pad(solid, 1)[1:-1, 2:])
    for frame in range(40):
        stats, system, b = _step_keeping_system(sim)
        state = sim.state()
        u, v = state["u"], state["v"]
        assert (u[1:-1][fx] == 0.0).all() and (v[:, 1:-1][fy] == 0.0).all(), f"frame {frame}"
        div = (u[1:] - u[:-1] + v[:, 1:] - v[:, :-1]) / scene.time.frame_dt  # per unit time, any scale
        # the divergence of the fluid cells touching a solid is the solver's residual there, no more
        assert np.abs(div[near]).max() <= 1e-5 * np.abs(b.numpy()).max() / scene.time.frame_dt + 1e-4
    assert stats.converged
    assert (sim.fields()["phi"][near] < 0).any()  # the water did reach the obstacles


def test_resize_keeps_the_solids_where_they_are():
    sim = Simulation(_scene(POOL + BLOCKS, nx=64, ny=32), Solver("mgpcg"))
    before = _solid(sim).mean()
    sim.resize(96, 48)
    assert _solid(sim).mean() == pytest.approx(before, abs=0.01)
    sim.step()


# ---------------------------------------------------------------------- bodies
def test_a_dragged_disc_moves_the_water_and_its_faces_carry_its_velocity():
    sim = Simulation(_scene(POOL, nx=64, ny=32, top="open"), Solver("mgpcg"))
    start = sim.water_volume()
    k = sim.add_body(Circle((0.5, 0.3), 0.08, "solid", motion=Motion()))
    assert sim.body_at(0.5, 0.3) == k and sim.body_at(1.5, 0.3) is None
    for frame in range(30):
        x = 0.5 + 0.02 * (frame + 1)  # 1.2 m/s to the right
        sim.move_body(k, x, 0.3)
        sim.step()
        assert sim.body_centres()[k] == pytest.approx((x, 0.3), abs=1e-9)
    solid = _solid(sim)
    fx, _ = _solid_faces(solid)
    u = sim.state()["u"][1:-1]
    assert np.allclose(u[fx & ~(solid[:-1] & solid[1:])], 0.02 * 60, rtol=1e-5)  # the disc's velocity
    assert np.abs(sim.state()["u"]).max() > 0.5  # the water is pushed along
    assert abs(sim.water_volume() / start - 1.0) < 0.01


def test_a_body_is_moved_no_faster_than_the_body_speed_limit():
    sim = Simulation(_scene(POOL, nx=32, ny=16), Solver("mgpcg"))
    k = sim.add_body(Box((0.4, 0.6), (0.6, 0.8), "solid", motion=Motion()))
    sim.move_body(k, 100.0, 0.7)
    sim.step()
    assert sim.body_centres()[k][0] == pytest.approx(0.5 + 20.0 / 60, rel=1e-6)  # limits.BODY_SPEED: 20 m/s


def test_a_scripted_paddle_follows_its_motion():
    paddle = {"type": "box", "min": [0.2, 0.0], "max": [0.26, 0.6], "phase": "solid",
              "motion": {"amplitude": [0.05, 0.0], "period": 0.5}}
    sim = Simulation(_scene(POOL + [paddle], nx=64, ny=32, top="open"), Solver("mgpcg"))
    start = sim.water_volume()
    for _ in range(45):
        sim.step()
    x = 0.23 + 0.05 * np.sin(2 * np.pi * sim.time / 0.5)
    assert sim.body_centres()[0] == pytest.approx((x, 0.3), abs=1e-6)
    assert np.abs(sim.state()["u"]).max() > 0.1  # it makes waves
    assert abs(sim.water_volume() / start - 1.0) < 0.01
    sim.reset()
    assert sim.body_centres()[0] == pytest.approx((0.23, 0.3))


def test_apic_keeps_its_particles_out_of_the_solids():
    sim = Simulation(_scene([{"type": "box", "min": [0, 0], "max": [0.6, 0.8]}] + BLOCKS, transport="apic"),
                     Solver("mgpcg"))
    for _ in range(30):
        sim.step()
    solid = _solid(sim)
    cells = np.floor(sim._particles.positions()).astype(int)
    assert len(cells) and not solid[cells[:, 0], cells[:, 1]].any()


def test_the_drag_tool_grabs_a_body_or_drops_a_disc_and_moves_it():
    scene = load_scene(SCENES / "wavetank.yaml", methods=METHODS).with_overrides(methods=METHODS, grid=(80, 32))
    sim = Simulation.from_scene(scene)
    state = ViewerState.from_simulation(sim)
    state.left_tool = LEFT_TOOLS[1]
    paddle = sim.body_centres()[0]
    state.drag(sim, paddle[0] + 0.01, 0.5)       # on the paddle: grabbed where the cursor holds it
    state.drag(sim, paddle[0] + 0.11, 0.5)
    sim.step()
    assert sim.body_centres()[0][0] == pytest.approx(paddle[0] + 0.1 + 0.05 * np.sin(2 * np.pi * sim.time), abs=1e-6)
    state.let_go()
    state.drag(sim, 1.0, 0.7)                     # nothing there: a disc drops in and follows
    assert len(sim.body_centres()) == 2 and sim.body_centres()[1] == pytest.approx((1.0, 0.7))
    state.drag(sim, 1.1, 0.7)
    sim.step()
    assert sim.body_centres()[1] == pytest.approx((1.1, 0.7), abs=1e-6)
    state.running = False                         # paused: the body goes straight to the cursor
    state.drag(sim, 1.3, 0.6)
    assert sim.body_centres()[1] == pytest.approx((1.3, 0.6), abs=1e-9)
    x, y = (np.arange(80) + 0.5) / 32, (np.arange(32) + 0.5) / 32
    disc = np.hypot(x[:, None] - 1.3, y[None, :] - 0.6) <= 0.06
    np.testing.assert_array_equal(_solid(sim)[disc], True)   # its cells are marked at once
    state.reset_requested = True
    state.apply(sim)
    assert state.grabbed is None and len(sim.body_centres()) == 1


# ---------------------------------------------------------------------- the shipped scenes
@pytest.mark.slow
@pytest.mark.parametrize("name", OBSTACLE_SCENES)
def test_obstacle_scenes_run_at_1000_to_1_keeping_volume_without_fallback(name):
    scene = load_scene(SCENES / f"{name}.yaml", methods=METHODS)
    grid = (scene.grid.nx // 2, scene.grid.ny // 2)
    sim = Simulation.from_scene(scene.with_overrides(methods=METHODS, grid=grid, ratio=1000.0))
    start = sim.water_volume()
    solid = _solid(sim)
    for _ in range(300):
        stats = sim.step()
        assert not stats.fell_back and stats.converged
    for key, value in sim.fields().items():
        assert np.isfinite(value).all(), key
    assert abs(sim.water_volume() / start - 1.0) < 0.01
    if name != "wavetank":  # the paddle moves
        np.testing.assert_array_equal(_solid(sim), solid)


@pytest.mark.parametrize("pockets", [1, 6])  # 3 floating regions in all (dense means), 8 (label scatter)
def test_the_null_space_of_fluid_pockets_walled_in_by_solids_is_each_pocket_constant(pockets):
    """Closed top, a wall splitting the tank in two and walled-in air pockets: each region floats with its
    own constant null vector; `project` takes each region's mean out and leaves the solid cells be."""
    walls = [{"type": "box", "min": [0.9, 0.0], "max": [1.1, 1.0], "phase": "solid"}]
    for k in range(pockets):
        x = 1.2 + 0.12 * k
        walls += [{"type": "box", "min": [x, 0.6], "max": [x + 0.1, 0.9], "phase": "solid"},
                  {"type": "box", "min": [x + 0.025, 0.7], "max": [x + 0.075, 0.8], "phase": "air"}]
    sim = Simulation(_scene(POOL + walls, nx=80, ny=40), Solver("mgpcg"))
    _, system, b = _step_keeping_system(sim)
    solid = _solid(sim)
    graph = system.to_csr()
    graph.setdiag(0)
    graph.eliminate_zeros()
    _, labels = csgraph.connected_components(graph, directed=False)
    labels = labels.reshape(solid.shape)
    regions = {int(k) for k in np.unique(labels[~solid])}
    assert len(regions) == 2 + pockets
    v = torch.randn(system.n, dtype=torch.float64)
    p = system.project(v).numpy().reshape(solid.shape)
    for k in regions:
        assert abs(p[(labels == k) & ~solid].mean()) < 1e-12
    np.testing.assert_array_equal(p[solid], v.numpy().reshape(solid.shape)[solid])
    np.testing.assert_allclose(system.matvec(torch.as_tensor(np.where(labels == min(regions), 1.0, 0.0).ravel())), 0,
                               atol=1e-12)


def test_bodies_refuse_what_they_cannot_be():
    sim = Simulation(_scene(POOL, nx=32, ny=16), Solver("mgpcg"))
    with pytest.raises(TypeError, match="a body is a sim.scene.Box or Circle, got Polygon"):
        sim.add_body(Polygon(((0.0, 0.0), (1.0, 0.0), (0.0, 1.0)), "solid"))
    for k in range(8):
        sim.add_body(Box((0.25 * k, 0.6), (0.25 * k + 0.15, 0.8), "solid", motion=Motion()))
    with pytest.raises(ValueError, match="bodies: expected at most 8, got one more"):
        sim.add_body(Circle((1.0, 0.8), 0.05, "solid", motion=Motion()))
    with pytest.raises(ValueError, match="body index: expected 0 to 7, got 8"):
        sim.move_body(8, 0.5, 0.5)
    with pytest.raises(ValueError, match="x: expected a finite number, got nan"):
        sim.move_body(0, float("nan"), 0.5)
    sim.step()  # eight bodies in the air: the run goes on
    assert _solid(sim).sum() >= 8 * 2 * 3  # each box covers at least 2 x 3 cell centres
