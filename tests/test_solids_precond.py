"""Solid obstacles (DESIGN.md, the Poisson system contract): identity rows inside the grid, faces
touching them at 0. Every solver against scipy's direct solve on obstacle systems at ratios 1 and
1,000, open and closed, with sealed floating pockets; SPD preconditioners; mgpcg's coarse levels
kept clean of the solids' identity rows."""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import scipy.sparse.linalg as spla
import torch

from precond import METHODS, Solver
from precond.htp import HTP, HTPConfig, HTPModel
from precond.ic0 import IC0
from precond.jacobi import Jacobi
from precond.multigrid import Multigrid
from precond.synthetic import OBSTACLES, box_scene, dambreak_phi, two_phase_system

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRID = (40, 26)   # not a power of two: HTP pads it


def _ring(solid: np.ndarray, centre: tuple[float, float], inner: float) -> np.ndarray:
    """`solid` plus a ring of width 1.5 cells around a disc of radius `inner`: a sealed pocket."""
    x, y = np.meshgrid(np.arange(solid.shape[0]) + 0.5, np.arange(solid.shape[1]) + 0.5, indexing="ij")
    d = np.hypot(x - centre[0], y - centre[1])
    return solid | ((d >= inner) & (d < inner + 1.5))


def _case(kind: str, ratio: float, open_top: bool, grid=GRID):
    """(system, right-hand side zero on solid cells, consistent) of an obstacle scene; "pocket" is the box scene
    with a sealed pocket straddling leaf boundaries (a floating component under an open top)."""
    if kind == "pocket":
        phi, solid = box_scene(*grid)
        solid = _ring(solid, (16.0, 8.0), 4.0)
    else:
        phi, solid = OBSTACLES[kind].make(*grid, np.random.default_rng(5))
    s = two_phase_system(phi, ratio, open_top, solid)
    b = np.random.default_rng(0).standard_normal(s.n) * ~s.decoupled.numpy().reshape(-1)
    return s, s.project(torch.as_tensor(b)).numpy()


def _exact(a: sp.csr_matrix, b: np.ndarray) -> np.ndarray:
    """spsolve's answer on A's range: b loses its mean over every component without a Dirichlet
    weight (found here from the CSR graph), and x is mean-free on each, as PCG returns it."""
    graph = a.copy()
    graph.setdiag(0)
    graph.eliminate_zeros()
    count, label = csgraph.connected_components(graph, directed=False)
    weight = np.abs(np.asarray(a.sum(1)).ravel()) > 1e-12 * a.diagonal().max()
    grounded = np.zeros(count, dtype=bool)
    np.logical_or.at(grounded, label, weight)
    e = sp.csr_matrix((np.ones(a.shape[0]), (np.arange(a.shape[0]), label)), shape=(a.shape[0], count))[:, ~grounded]
    sizes = np.asarray(e.sum(0)).ravel()
    pb = b - e @ ((e.T @ b) / sizes)
    return spla.spsolve((a + e @ sp.diags(1 / sizes) @ e.T).tocsc(), pb)


def test_solid_cells_are_identity_rows_and_decoupled():
    """Faces touching a solid are 0, solid rows are the identity, and so is a fluid cell walled in on
    all four sides; `decoupled` marks exactly those rows (and stays as made: computed once)."""
    nx, ny = 12, 9
    solid = np.zeros((nx, ny), dtype=bool)
    solid[3:6, 2:5] = True
    solid[4, 3] = False                                   # a fluid cell walled in on all four sides
    s = two_phase_system(dambreak_phi(nx, ny), 1000.0, True, solid)
    a = s.to_csr().toarray()
    walled = np.zeros_like(solid)
    walled[4, 3] = True
    cells = np.flatnonzero((solid | walled).ravel())
    assert np.array_equal(a[cells][:, cells], np.eye(len(cells)))
    assert not np.delete(a[cells], cells, axis=1).any()
    assert np.array_equal(s.decoupled.numpy(), solid | walled)
    assert s.decoupled is s.decoupled
    assert not two_phase_system(dambreak_phi(nx, ny), 1000.0, True).decoupled.any()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind,ratio,open_top", [
    ("box", 1.0, True), ("box", 1000.0, False), ("steps", 1000.0, True), ("funnel", 1.0, False),
    ("funnel", 1000.0, True), ("porous", 1000.0, True), ("porous", 1.0, False), ("pocket", 1000.0, True),
    ("pocket", 1.0, False)])
def test_every_solver_matches_spsolve_on_obstacles(method, kind, ratio, open_top):
    s, b = _case(kind, ratio, open_top)
    if kind in ("porous", "pocket"):
        assert s.singular                                 # sealed pockets float even under an open top
    res = Solver(method, tol=1e-8, maxiter=5000, fallback=None).solve(s, torch.as_tensor(b))
    exact = _exact(s.to_csr(), b)
    assert res.converged and res.method == method
    assert np.linalg.norm(res.x.numpy() - exact) / np.linalg.norm(exact) < 1e-5
    assert not res.x.view(GRID)[torch.as_tensor(s.decoupled)].any()   # b = 0 on solids: so is p


def _dense(precond, s):
    precond.setup(s)
    return torch.stack([precond.apply(e) for e in torch.eye(s.n, dtype=torch.float64)], 1).double()


@pytest.mark.parametrize("make", [Jacobi, IC0, Multigrid, lambda: HTP.from_model(_random_htp())])
def test_preconditioners_stay_spd_and_leave_solid_cells_decoupled(make):
    """Sealed pockets, an all-solid corner (empty coarse cells for mgpcg), 1,000:1: M is SPD and, like
    A, couples no solid cell to any other cell (mgpcg's coarse levels and HTP's harmonic basis and
    coarse functions vanish there)."""
    nx, ny = 20, 12
    phi, solid = box_scene(nx, ny)
    solid = _ring(solid, (5.0, 6.0), 2.0)
    solid[14:, 8:] = True
    s = two_phase_system(phi, 1000.0, True, solid)
    m = _dense(make(), s)
    assert torch.allclose(m, m.T, atol=1e-6 * float(m.abs().max()))
    assert float(torch.linalg.eigvalsh((m + m.T) / 2).min()) > 0
    cells = torch.as_tensor(solid.reshape(-1))
    assert not m[cells][:, ~cells].any()
    assert torch.equal(m[cells][:, cells], torch.diag(m[cells][:, cells].diagonal()))


def _random_htp(seed=0):
    """A small network with every head switched on (random, not zero, last layers)."""
    torch.manual_seed(seed)
    model = HTPModel(HTPConfig(d_model=32, n_layers=1, n_heads=2, head_hidden=32)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("kind", list(OBSTACLES))
def test_mgpcg_keeps_its_iterations_with_obstacles(kind):
    """At 1,000:1 identity rows inside water are 1,000 times the water's own diagonal: coarsened with
    the water, they took mgpcg from 10 iterations (dam break) to 16-69 on these systems."""
    grid = (128, 64)
    g = torch.Generator().manual_seed(0)
    plain = two_phase_system(dambreak_phi(*grid), 1000.0, True)
    s, b = _case(kind, 1000.0, True, grid)
    ref = Solver("mgpcg", fallback=None).solve(plain, torch.randn(plain.n, dtype=torch.float64, generator=g))
    res = Solver("mgpcg", fallback=None).solve(s, torch.as_tensor(b))
    assert res.converged and res.iterations <= 2 * ref.iterations, (res.iterations, ref.iterations)


def test_shipped_htp_is_far_ahead_of_jacobi_and_ic0_on_obstacles():
    for kind in OBSTACLES:
        s, b = _case(kind, 1000.0, True, (64, 48))
        b = torch.as_tensor(b)
        htp = Solver("htp", fallback=None).solve(s, b)
        assert htp.converged and not htp.fell_back
        assert htp.iterations * 4 < Solver("jacobi", fallback=None).solve(s, b).iterations, kind
        assert htp.iterations * 2 < Solver("ic0", fallback=None).solve(s, b).iterations, kind


@pytest.mark.slow
def test_compiled_htp_solves_obstacle_systems_like_eager():
    """One compiled chunk program per grid shape serves systems with different solids and numbers of
    sealed pockets (a dynamic dimension), with no graph break (no warning, `compiled` True)."""
    solver = Solver("htp", fallback=None, compiled=True, chunk=2, precond=HTP(reuse=None))
    for kind in ("pocket", "porous"):
        s, b = _case(kind, 1000.0, True)
        b = torch.as_tensor(b)
        eager = Solver("htp", fallback=None, chunk=2, precond=HTP(reuse=None)).solve(s, b)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*runs eager")
            res = solver.solve(s, b)
        assert res.compiled and res.converged and abs(res.iterations - eager.iterations) <= 1
        assert np.linalg.norm(res.x.numpy() - _exact(s.to_csr(), b.numpy())) <= 1e-4 * np.linalg.norm(eager.x.numpy())


def test_bench_runs_the_synthetic_obstacle_family(tmp_path):
    """`--synthetic obstacles`: a row per kind and N in every table, each the solve of that kind's system."""
    import csv

    from precond import bench
    out = tmp_path / "out"
    bench.main(["--synthetic", "obstacles", "--sizes", "1024", "--ratios", "1000", "--methods", "jacobi", "mgpcg",
                "--compiled", "--no-pyamg", "--no-ablations", "--repeats", "1", "--sequence", "0", "--out", str(out),
                "--markdown", str(out / "tables.md")])
    rows = {(r["scene"], r["method"]): r for r in csv.DictReader(open(out / "bench.csv"))}
    assert set(rows) == {(kind, m) for kind in OBSTACLES for m in ("jacobi", "mgpcg")}
    s = OBSTACLES["porous"].system(32, 32, 1000.0)
    res = Solver("mgpcg", fallback=None).solve(s, bench.random_rhs(s))
    assert int(rows[("porous", "mgpcg")]["iterations"]) == res.iterations
    md = (out / "tables.md").read_text()
    assert "synthetic systems box, steps, funnel, porous" in md and "| system, N | jacobi | mgpcg |" in md
    for kind in OBSTACLES:
        its = [rows[(kind, m)]["iterations"] for m in ("jacobi", "mgpcg")]
        assert f"| {kind}, 1,024 (32x32) | {its[0]} | {its[1]} |" in md
