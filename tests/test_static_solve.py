"""The static solve: PCG in chunks without host synchronisation, compiled with fullgraph=True,
and HTP's set-up reuse across systems."""
import warnings

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from precond import Solver
from precond.htp import HTP
from precond.htp.preconditioner import NetworkReuse
from precond.pcg import pcg
from precond.solver import make_preconditioner
from precond.synthetic import dambreak_phi, random_phi, two_phase_system

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _system(nx=32, ny=24, ratio=1000.0, seed=None, width=0.4):
    phi = dambreak_phi(nx, ny, width=width) if seed is None else random_phi(nx, ny, np.random.default_rng(seed))
    return two_phase_system(phi, ratio, open_top=True)


def _rhs(system, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(system.n, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("method", ["jacobi", "ic0", "mgpcg", "htp"])
@pytest.mark.parametrize("chunk", [3, 8])
def test_chunks_give_the_iterations_and_answer_of_single_steps(method, chunk):
    s = _system(seed=1)
    b = _rhs(s)
    pc = make_preconditioner(method)
    pc.setup(s)
    one = pcg(s, b, pc, chunk=1)
    many = pcg(s, b, pc, chunk=chunk)
    assert one.converged and many.converged
    assert many.iterations == one.iterations
    assert many.history == pytest.approx(one.history, rel=1e-9)
    assert torch.allclose(many.x, one.x, rtol=1e-10, atol=1e-12 * float(one.x.abs().max()))


def test_a_chunk_stops_exactly_at_maxiter():
    s = _system()
    b = _rhs(s)
    pc = make_preconditioner("jacobi")
    pc.setup(s)
    one = pcg(s, b, pc, maxiter=5, chunk=1)
    many = pcg(s, b, pc, maxiter=5, chunk=4)
    assert many.iterations == one.iterations == 5 and not many.converged
    assert torch.allclose(many.x, one.x, rtol=1e-12, atol=0)


def test_bad_chunk_is_a_clear_error():
    s = _system()
    pc = make_preconditioner("jacobi")
    pc.setup(s)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="chunk must be an integer >= 1"):
            pcg(s, _rhs(s), pc, chunk=bad)
    with pytest.raises(ValueError, match="chunk must be None or an integer >= 1"):
        Solver("jacobi", chunk=0)
    with pytest.raises(TypeError, match="compiled must be True or False"):
        Solver("jacobi", compiled="yes")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["jacobi", "htp"])
@pytest.mark.parametrize("grids", [((32, 24), (48, 40))])
def test_compiled_chunk_has_no_graph_break_and_matches_eager(method, grids):
    """fullgraph=True: a graph break fails the compile, and the Solver would then warn and run eager;
    no warning and `compiled` True prove the whole chunk (matvec, preconditioner, updates) is one graph.
    Two grid shapes in one process: each gets its own program, and both are right."""
    solver = Solver(method, fallback=None, compiled=True, chunk=2)
    for seed, (nx, ny) in enumerate(grids):
        s = two_phase_system(random_phi(nx, ny, np.random.default_rng(seed)), 1000.0, open_top=True)
        b = _rhs(s)
        eager = Solver(method, fallback=None, chunk=2).solve(s, b)
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*runs eager")
            compiled = solver.solve(s, b)
        assert compiled.compiled and not eager.compiled
        assert compiled.converged and abs(compiled.iterations - eager.iterations) <= 1
        exact = spla.spsolve(s.to_csr().tocsc(), b.numpy())
        assert np.linalg.norm(compiled.x.numpy() - exact) <= 1e-4 * np.linalg.norm(exact)
        assert compiled.residual <= 2e-6


class _HalfJacobi:
    """A preconditioner no other test compiles (its own name, so its own compiled-or-eager state)."""

    name = "half-jacobi-without-compiler"

    def setup(self, system):
        self.inv = 0.5 / system.diag.reshape(-1)

    def apply(self, r):
        return self.inv * r


@pytest.mark.slow
def test_without_a_working_compiler_the_solve_runs_eager_with_one_warning():
    import torch._inductor.config as inductor_config
    s = _system()
    b = _rhs(s)
    solver = Solver("jacobi", fallback=None, compiled=True, chunk=2, precond=_HalfJacobi())
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}), \
            pytest.warns(UserWarning, match="runs eager, not compiled") as caught:
        first = solver.solve(s, b)
        second = solver.solve(s, b)
    assert len([w for w in caught if "runs eager" in str(w.message)]) == 1
    assert not first.compiled and not second.compiled
    reference = Solver("jacobi", fallback=None, chunk=2, precond=_HalfJacobi()).solve(s, b)
    assert first.converged and first.iterations == reference.iterations
    assert torch.allclose(first.x, reference.x)


def _shifted_pair():
    """Two consecutive-substep-like systems: the water column one cell wider in the second."""
    return _system(64, 32, width=0.40), _system(64, 32, width=0.42)


def test_htp_reuses_its_network_output_on_the_same_grid_and_still_converges():
    s0, s1 = _shifted_pair()
    b = _rhs(s1)
    htp = HTP()
    solver = Solver("htp", fallback=None, precond=htp)
    first = solver.solve(s0, _rhs(s0))
    second = solver.solve(s1, b)
    assert not first.setup_reused and second.setup_reused
    fresh = Solver("htp", fallback=None, precond=HTP(reuse=None)).solve(s1, b)
    assert second.converged and second.residual <= 2e-6
    assert second.iterations <= fresh.iterations + 2
    exact = spla.spsolve(s1.to_csr().tocsc(), b.numpy())
    assert np.linalg.norm(second.x.numpy() - exact) <= 1e-4 * np.linalg.norm(exact)


def test_htp_reruns_its_network_for_a_new_grid_after_max_age_and_when_iterations_grow():
    htp = HTP(reuse=NetworkReuse(max_age=2))
    s, other = _system(32, 32), _system(64, 32)
    ran = []
    for system in (s, s, s, s, other):
        htp.setup(system)
        ran.append(not htp.setup_reused)
    assert ran == [True, False, False, True, True]     # age 2 reached at the 4th; a new grid at the 5th
    htp.observe(10)          # first solve after the network ran
    htp.setup(other)
    assert htp.setup_reused
    htp.observe(10 * 2)      # above 1.25 x 10 + 2: the next set-up reruns the network
    htp.setup(other)
    assert not htp.setup_reused


def test_htp_without_reuse_runs_its_network_every_time():
    htp = HTP(reuse=None)
    s = _system()
    for _ in range(3):
        htp.setup(s)
        assert not htp.setup_reused
    with pytest.raises(TypeError, match="reuse must be None or a NetworkReuse"):
        HTP(reuse=3)
    with pytest.raises(ValueError, match="NetworkReuse.max_age must be an integer >= 1"):
        NetworkReuse(max_age=0)


def test_scene_and_command_line_choose_compiled_solves(tmp_path):
    import precond
    from sim.scene import SceneError, load_scene
    path = tmp_path / "s.yaml"
    path.write_text("solver: {method: htp, compiled: true}\n")
    scene = load_scene(path, methods=precond.METHODS)
    assert scene.solver.compiled and scene.solver.method == "htp"
    assert not scene.with_overrides(methods=precond.METHODS, compiled=False).solver.compiled
    path.write_text("solver: {compiled: 'yes'}\n")
    with pytest.raises(SceneError, match="solver.compiled: expected true or false"):
        load_scene(path, methods=precond.METHODS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: the compiled chunk replays as a CUDA graph there")
@pytest.mark.parametrize("method", ["jacobi", "htp"])
def test_cuda_graph_chunk_matches_eager_on_the_gpu(method):
    s = _system(seed=3).to(device="cuda")
    b = _rhs(s).to("cuda")
    eager = Solver(method, fallback=None).solve(s, b)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*runs eager")
        solver = Solver(method, fallback=None, compiled=True)
        graphed = [solver.solve(s, b) for _ in range(3)]      # capture, then replays
    for res in graphed:
        assert res.compiled and res.converged and abs(res.iterations - eager.iterations) <= 1
        assert torch.allclose(res.x, eager.x, rtol=1e-4, atol=1e-6 * float(eager.x.abs().max()))


def test_solver_says_when_its_next_solve_compiles():
    s = _system(24, 24)
    solver = Solver("jacobi", fallback=None, compiled=True, chunk=3)
    assert "compiling the jacobi solve for 24x24" in solver.compile_pending(24, 24)
    solver.solve(s, _rhs(s))
    assert solver.compile_pending(24, 24) == ""                    # compiled now
    assert solver.compile_pending(40, 24) != ""                    # another grid shape compiles again
    assert Solver("jacobi").compile_pending(24, 24) == ""          # eager: nothing to compile


class _ThreadSpy(_HalfJacobi):
    """Records torch's intra-op thread count at each set-up (inside Solver.solve)."""

    name = "thread-spy"

    def __init__(self):
        self.seen = []

    def setup(self, system):
        self.seen.append(torch.get_num_threads())
        super().setup(system)


def test_solver_threads_are_set_for_the_solve_and_restored():
    s = _system()
    before = torch.get_num_threads()
    spy = _ThreadSpy()
    Solver("jacobi", fallback=None, precond=spy, threads=1).solve(s, _rhs(s))
    assert spy.seen == [1] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be None, 'auto' or an integer >= 1"):
        Solver("jacobi", threads=0)


@pytest.mark.parametrize("load, expected", [(0.2, 2), (1.9, 1)])
def test_auto_threads_take_one_thread_only_while_other_processes_are_busy(monkeypatch, load, expected):
    """With torch on 2 threads: a quiet machine keeps them, a busy one (load less own use > 0.5) gets 1."""
    import precond.solver as solver_module
    monkeypatch.setattr(solver_module.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(solver_module._LOAD, "own", 0.0)
    monkeypatch.setattr(solver_module._LOAD, "wall", float("inf"))      # keep own = 0 for this test
    s = _system()
    spy = _ThreadSpy()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        Solver("jacobi", fallback=None, precond=spy).solve(s, _rhs(s))
        assert spy.seen == [expected] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_compiled_chunk_serves_systems_with_different_numbers_of_floating_components():
    """Closed regions (no Dirichlet face) are null-space components; their count varies between systems
    of one grid and the compiled program must stay right (and not recompile per count)."""
    def walled(nx, ny, cuts):
        cx, cy = np.ones((nx, ny)), np.ones((nx, ny))
        cx[-1], cy[:, -1] = 0.0, 0.0
        for i in cuts:                       # a wall between columns i and i+1 splits off a region
            cx[i] = 0.0
        diag = np.zeros((nx, ny))
        diag[:-1] += cx[:-1]
        diag[1:] += cx[:-1]
        diag[:, :-1] += cy[:, :-1]
        diag[:, 1:] += cy[:, :-1]
        diag[:, -1] += 1.0                   # open top only over the first region
        diag[cuts[0] + 1:, -1] -= 1.0
        t = lambda a: torch.as_tensor(a, dtype=torch.float64)
        from precond import PoissonSystem
        return PoissonSystem(t(diag), t(cx), t(cy))
    solver = Solver("jacobi", fallback=None, compiled=True, chunk=2)
    for cuts in ([7], [7, 15], [5, 11, 17]):
        s = walled(24, 16, cuts)
        b = s.project(_rhs(s))
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*runs eager")
            res = solver.solve(s, b)
        eager = Solver("jacobi", fallback=None, chunk=2).solve(s, b)
        assert res.compiled and res.converged and abs(res.iterations - eager.iterations) <= 1
        assert torch.allclose(res.x, eager.x, rtol=1e-6, atol=1e-8 * float(eager.x.abs().max()))
