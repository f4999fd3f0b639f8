"""The Poisson-system contract and the classical solvers, checked against scipy."""
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from precond import PoissonSystem, Solver, solve
from precond.ic0 import IC0
from precond.jacobi import Jacobi
from precond.multigrid import Multigrid
from precond.pcg import pcg
from precond.synthetic import dambreak_phi, random_phi, two_phase_system

CLASSICAL = ["none", "jacobi", "ic0", "mgpcg"]


def _system(nx=24, ny=16, ratio=1000.0, open_top=True, seed=None):
    phi = dambreak_phi(nx, ny) if seed is None else random_phi(nx, ny, np.random.default_rng(seed))
    return two_phase_system(phi, ratio, open_top)


@pytest.mark.parametrize("open_top", [True, False])
@pytest.mark.parametrize("ratio", [1.0, 1000.0])
def test_matrix_symmetric_and_positive(open_top, ratio):
    a = _system(12, 9, ratio, open_top).to_csr().toarray()
    assert np.allclose(a, a.T)
    w = np.linalg.eigvalsh(a)
    if open_top:
        assert w.min() > 0
    else:  # closed box: PSD with exactly the constants as null space
        assert abs(w[0]) < 1e-10 * w[-1] and w[1] > 1e-8 * w[-1]
        assert np.abs(a @ np.ones(a.shape[0])).max() < 1e-12


def test_csr_export_matches_stencil_apply():
    s = _system(17, 11, 100.0, seed=3)
    v = torch.randn(2, s.n, dtype=torch.float64)
    a = s.to_csr()
    assert np.allclose(s.matvec(v).numpy(), (a @ v.numpy().T).T)


def test_west_and_south_are_the_couplings_across_those_faces():
    s = _system(9, 7, 100.0, seed=2)
    a = s.to_csr().toarray()
    k = np.arange(s.n).reshape(9, 7)
    assert np.array_equal(s.west.numpy()[1:], -a[k[1:], k[:-1]]) and not s.west[0].any()
    assert np.array_equal(s.south.numpy()[:, 1:], -a[k[:, 1:], k[:, :-1]]) and not s.south[:, 0].any()
    assert np.allclose(s.dirichlet().numpy().reshape(-1), a.sum(1), rtol=0, atol=1e-14)


def test_from_csr_round_trip_and_rejects_non_stencil():
    s = _system(10, 7, 10.0, seed=1)
    a = s.to_csr()
    back = PoissonSystem.from_csr(a, (10, 7))
    assert (back.to_csr() != a).nnz == 0
    bad = a.tolil()
    bad[0, 20] = bad[20, 0] = -1.0
    with pytest.raises(ValueError, match="not on the 5-point stencil"):
        PoissonSystem.from_csr(bad.tocsr(), (10, 7))
    with pytest.raises(ValueError, match="grid 7x7 needs 49x49"):
        PoissonSystem.from_csr(a, (7, 7))
    asym = a.tolil()
    asym[0, 1] = -5.0
    with pytest.raises(ValueError, match="not symmetric"):
        PoissonSystem.from_csr(asym.tocsr(), (10, 7))


@pytest.mark.parametrize("method", CLASSICAL)
@pytest.mark.parametrize("grid", [(24, 16), (33, 17)])
def test_solvers_match_scipy_direct(method, grid):
    s = _system(*grid, ratio=1000.0, seed=7)
    a = s.to_csr()
    b = np.random.default_rng(0).standard_normal(s.n)
    res = solve(a, b, grid=grid, method=method, tol=1e-8, maxiter=5000)
    exact = spla.spsolve(a.tocsc(), b)
    assert res.converged and not res.fell_back and res.method == method
    assert np.linalg.norm(res.x - exact) / np.linalg.norm(exact) < 1e-5
    assert np.linalg.norm(b - a @ res.x) / np.linalg.norm(b) <= 1e-8 * 1.01


@pytest.mark.parametrize("method", CLASSICAL)
def test_singular_closed_box_gives_mean_free_answer(method):
    s = _system(20, 20, 1000.0, open_top=False)
    a = s.to_csr()
    b = np.random.default_rng(2).standard_normal(s.n)
    b -= b.mean()
    res = solve(a, b, grid=(20, 20), method=method, tol=1e-8, maxiter=5000)
    assert res.converged and np.isfinite(res.x).all()
    assert abs(res.x.mean()) < 1e-10 * np.abs(res.x).max()
    # compare with the direct solve pinned at one cell, then made mean-free
    pinned = a.tolil()
    pinned[0, :] = 0
    pinned[0, 0] = 1
    rhs = b.copy()
    rhs[0] = 0
    exact = spla.spsolve(pinned.tocsc(), rhs)
    exact -= exact.mean()
    assert np.linalg.norm(res.x - exact) / np.linalg.norm(exact) < 1e-5


def test_singular_inconsistent_rhs_is_projected_not_exploding():
    s = _system(16, 16, 100.0, open_top=False)
    b = np.ones(s.n) + np.random.default_rng(0).standard_normal(s.n)
    res = solve(s.to_csr(), b, grid=(16, 16), method="mgpcg", project=True)
    assert res.converged and np.isfinite(res.x).all() and np.abs(res.x).max() < 1e6
    true = np.linalg.norm(b - s.to_csr() @ res.x) / np.linalg.norm(b)
    assert res.rhs_projected == pytest.approx(abs(b.mean()) * np.sqrt(s.n) / np.linalg.norm(b), rel=1e-9)
    assert res.residual == pytest.approx(true, rel=1e-9) and res.residual >= res.rhs_projected
    assert "inconsistent right-hand side" in res.note


def test_floating_component_next_to_grounded_one():
    """A wall splits the box: the open half is regular, the closed half floats."""
    s = _system(16, 12, 10.0, open_top=False)
    cx = s.cx.clone()
    cx[7] = 0.0  # cut every face between columns 7 and 8
    diag = s.diag.clone()
    diag[7] -= s.cx[7]
    diag[8] -= s.cx[7]
    diag[8:, -1] += 1.0  # right half gets an open top
    split = PoissonSystem(diag, cx, s.cy)
    b = torch.randn(split.n, dtype=torch.float64)
    res = Solver("mgpcg", tol=1e-8).solve(split, b)
    assert res.converged
    x = res.x.view(16, 12)
    assert abs(float(x[:8].mean())) < 1e-10
    proj_b = split.project(b)
    assert torch.allclose(split.matvec(res.x), proj_b, atol=1e-6 * float(proj_b.norm()))


def test_mgpcg_iterations_nearly_independent_of_n():
    its = []
    for n in (32, 64, 128):
        s = two_phase_system(dambreak_phi(2 * n, n), 1000.0, True)
        b = torch.randn(s.n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        its.append(Solver("mgpcg").solve(s, b).iterations)
    assert max(its) <= 16 and max(its) - min(its) <= 4, its


@pytest.mark.parametrize("triangular", ["superlu", "wavefront"])
def test_ic0_is_exact_incomplete_cholesky(triangular):
    s = _system(7, 5, 100.0)
    a = s.to_csr().toarray()
    n = a.shape[0]
    f = a.copy()  # textbook IC(0), one cell at a time
    for k in range(n):
        f[k, k] = np.sqrt(f[k, k])
        for i in range(k + 1, n):
            if a[i, k] != 0:
                f[i, k] /= f[k, k]
        for j in range(k + 1, n):
            for i in range(j, n):
                if a[i, j] != 0:
                    f[i, j] -= f[i, k] * f[j, k]
    lower = np.tril(f)
    ic = IC0(triangular)
    ic.setup(s)
    r = np.random.default_rng(1).standard_normal(n)
    assert np.allclose(ic.apply(torch.tensor(r)).numpy(), np.linalg.solve(lower @ lower.T, r), atol=1e-12)


@pytest.mark.parametrize("make", [Jacobi, IC0, Multigrid])
def test_preconditioners_are_symmetric_positive_definite(make):
    s = _system(12, 10, 1000.0, seed=5)
    p = make()
    p.setup(s)
    m = torch.stack([p.apply(e) for e in torch.eye(s.n, dtype=torch.float64)], 1).numpy()
    assert np.allclose(m, m.T, atol=1e-10 * np.abs(m).max())
    assert np.linalg.eigvalsh((m + m.T) / 2).min() > 0


def test_non_convergence_is_reported_and_falls_back():
    s = _system(64, 32, 1000.0)
    b = torch.randn(s.n, dtype=torch.float64)
    raw = pcg(s, b, _setup(Jacobi(), s), maxiter=5)
    assert not raw.converged and raw.iterations == 5 and "no convergence" in raw.note
    res = Solver("jacobi", maxiter=5).solve(s, b)
    assert res.converged and res.fell_back and res.method == "mgpcg" and "jacobi -> mgpcg" in res.note
    assert res.primary_iterations == 5


def _setup(p, s):
    p.setup(s)
    return p


def test_bad_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="unknown solver 'cg2'"):
        Solver("cg2")
    with pytest.raises(ValueError, match="tolerance must be > 0"):
        Solver("mgpcg", tol=0)
    s = _system(8, 8)
    with pytest.raises(ValueError, match="b has 3 entries"):
        solve(s.to_csr(), np.ones(3), grid=(8, 8))


def test_zero_rhs_returns_zero():
    s = _system(8, 8)
    res = Solver("mgpcg").solve(s, torch.zeros(s.n, dtype=torch.float64))
    assert res.converged and res.iterations == 0 and float(res.x.abs().max()) == 0.0
