"""precond.solve and Solver.solve on input a user can give: one clear error each, or the truth.

Table-driven per kind: non-finite, complex, not SPD (for every method), argument ranges, and
inconsistent right-hand sides on a singular (closed box) matrix, against scipy's direct solver."""
import re

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from precond import METHODS, PoissonSystem, Solver, solve
from precond.synthetic import dambreak_phi, random_phi, two_phase_system

GRID = (12, 9)


def _system(open_top=True, ratio=100.0, seed=None, grid=GRID):
    phi = dambreak_phi(*grid) if seed is None else random_phi(*grid, np.random.default_rng(seed))
    return two_phase_system(phi, ratio, open_top)


def _rhs(n, seed=0):
    return np.random.default_rng(seed).standard_normal(n)


def _with_entry(a, row, col, value):
    out = a.tolil()
    out[row, col] = value
    return out.tocsr()


# ---------------------------------------------------------------------------- non-finite
NX, NY = GRID
K = 3 * NY + 4  # a cell inside the grid: its east neighbour is K + NY, its north K + 1

NON_FINITE = {
    "nan on the diagonal": lambda a: _with_entry(a, K, K, np.nan),
    "inf on the diagonal": lambda a: _with_entry(a, K, K, np.inf),
    "nan in the upper triangle": lambda a: _with_entry(a, K, K + NY, np.nan),
    "nan in the lower triangle only": lambda a: _with_entry(a, K + NY, K, np.nan),
    "-inf in the lower triangle only": lambda a: _with_entry(a, K + 1, K, -np.inf),
}


@pytest.mark.parametrize("case", NON_FINITE)
def test_non_finite_matrix_entry_is_a_value_error(case):
    a = NON_FINITE[case](_system().to_csr())
    with pytest.raises(ValueError, match=r"A is not finite: entry \(\d+, \d+\) is -?(nan|inf)"):
        solve(a, _rhs(a.shape[0]), GRID)


@pytest.mark.parametrize("field", ["diag", "cx", "cy"])
def test_non_finite_stencil_array_is_a_value_error(field):
    s = _system()
    arrays = {"diag": s.diag.clone(), "cx": s.cx.clone(), "cy": s.cy.clone()}
    arrays[field][3, 4] = float("nan")
    with pytest.raises(ValueError, match=rf"{field} at cell \(3, 4\) .* is nan; expected finite"):
        PoissonSystem(**arrays)


@pytest.mark.parametrize("vector", ["b", "x0"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_vector_is_a_value_error(vector, value):
    s = _system()
    v = {"b": torch.randn(s.n, dtype=torch.float64), "x0": torch.zeros(s.n, dtype=torch.float64)}
    v[vector][7] = value
    with pytest.raises(ValueError, match=rf"{vector} is not finite: entry 7 is {value}"):
        Solver("mgpcg").solve(s, v["b"], v["x0"])
    if vector == "b":
        with pytest.raises(ValueError, match="b is not finite"):
            solve(s.to_csr(), v["b"].numpy(), GRID)


# ---------------------------------------------------------------------------- complex
def test_complex_input_is_a_type_error():
    s = _system()
    a, b = s.to_csr(), _rhs(s.n)
    cases = [
        (lambda: solve(a.astype(np.complex128), b, GRID), "A must be real"),
        (lambda: solve(a, b + 1e-3j, GRID), "b must be a real vector"),
        (lambda: Solver().solve(s, torch.as_tensor(b + 0j)), "b must be real"),
        (lambda: PoissonSystem(s.diag.to(torch.complex128), s.cx.to(torch.complex128), s.cy.to(torch.complex128)),
         "diag must be a real floating-point tensor"),
    ]
    for call, message in cases:
        with pytest.raises(TypeError, match=message):
            call()


# ---------------------------------------------------------------------------- not SPD, every method
def _not_spd_cases():
    a = _system().to_csr()
    n = a.shape[0]
    flipped = a.tolil()
    flipped[K, K + NY] = flipped[K + NY, K] = 1.0       # a positive off-diagonal: a negative coupling
    return {
        "indefinite (diagonal halved)": (a - sp.diags(a.diagonal() / 2), GRID, "weak diagonal dominance"),
        "zero row": (_zero_row(a, K), GRID, "diag > 0"),
        "negative diagonal": (_with_entry(a, K, K, -1.0), GRID, "diag > 0"),
        "positive off-diagonal": (flipped.tocsr(), GRID, "couplings cx >= 0"),
        "zero matrix": (sp.csr_matrix((n, n)), GRID, "diag > 0"),
        "1x1 Neumann": (sp.csr_matrix([[0.0]]), (1, 1), "diag > 0"),
    }


def _zero_row(a, k):
    out = a.tolil()
    out[k, :] = 0
    out[:, k] = 0
    return out.tocsr()


NOT_SPD = _not_spd_cases()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", NOT_SPD)
def test_not_spd_matrix_is_a_value_error_for_every_method(case, method):
    a, grid, expected = NOT_SPD[case]
    with pytest.raises(ValueError, match=rf"A is not a symmetric positive \(semi-\)definite 5-point matrix: .*{expected}"):
        solve(a, np.ones(a.shape[0]), grid, method=method)


# ---------------------------------------------------------------------------- argument ranges
ARGUMENTS = [
    (dict(A=[[2.0]], grid=(1, 1)), TypeError, "A must be a scipy sparse matrix or a 2-D numpy array, got list"),
    (dict(grid=(13.5, 17)), TypeError, r"grid must be two integers \(nx, ny\), got \(13.5, 17\)"),
    (dict(grid=12), TypeError, r"grid must be a pair of integers"),
    (dict(grid=(-12, -9)), ValueError, "grid must be at least 1x1, got -12x-9"),
    (dict(grid=(0, 9)), ValueError, "grid must be at least 1x1, got 0x9"),
    (dict(grid=(10, 9)), ValueError, "matrix is 108x108 but grid 10x9 needs 90x90"),
    (dict(device="tpu"), ValueError, r"device must be 'cpu' or 'cuda\[:k\]', got 'tpu'"),
    (dict(device="banana"), ValueError, r"device must be 'cpu' or 'cuda\[:k\]', got 'banana'"),
    (dict(maxiter=-1), ValueError, "maxiter must be None or an integer >= 1, got -1"),
    (dict(maxiter=0), ValueError, "maxiter must be None or an integer >= 1, got 0"),
    (dict(maxiter=2.5), TypeError, "maxiter must be None or an integer >= 1, got 2.5"),
    (dict(tol=float("inf")), ValueError, r"tol: tolerance must be > 0 and < 1 .*, got inf"),
    (dict(tol=2), ValueError, r"tol: tolerance must be > 0 and < 1 .*, got 2"),
    (dict(tol=1.0), ValueError, r"tol: tolerance must be > 0 and < 1"),
    (dict(tol=float("nan")), ValueError, r"tol: tolerance must be > 0 and < 1 .*, got nan"),
    (dict(tol=-1e-6), ValueError, r"tol: tolerance must be > 0 and < 1"),
    (dict(tol="1e-6"), TypeError, "tol must be a number in"),
    (dict(method="cg2"), ValueError, "unknown solver 'cg2'; expected one of: none, jacobi"),
    (dict(b=np.ones(3)), ValueError, "b has 3 entries but the grid 12x9 has 108 cells"),
    (dict(b=np.array(["a"] * 108)), TypeError, "b must be a real vector"),
]


@pytest.mark.parametrize("kwargs, error, message", ARGUMENTS, ids=[str(a[0])[:40] for a in ARGUMENTS])
def test_bad_argument_names_itself_and_its_range(kwargs, error, message):
    s = _system()
    call = dict(A=s.to_csr(), b=_rhs(s.n), grid=GRID) | kwargs
    with pytest.raises(error, match=message):
        solve(**call)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_value_error():
    s = _system()
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available here; expected 'cpu'"):
        solve(s.to_csr(), _rhs(s.n), GRID, device="cuda")


SOLVER_ARGUMENTS = [
    (dict(fallback="cg3"), ValueError, "unknown solver 'cg3' for fallback"),
    (dict(maxiter=-1), ValueError, "maxiter must be None or an integer >= 1"),
    (dict(tol=2.0), ValueError, "tol: tolerance must be > 0 and < 1"),
]


@pytest.mark.parametrize("kwargs, error, message", SOLVER_ARGUMENTS)
def test_bad_solver_argument_names_itself(kwargs, error, message):
    with pytest.raises(error, match=message):
        Solver("jacobi", **kwargs)


def test_bad_vectors_to_solver_name_themselves():
    s = _system()
    b = torch.randn(s.n, dtype=torch.float64)
    with pytest.raises(ValueError, match="x0 has 5 entries but the 12x9 grid has 108 cells"):
        Solver().solve(s, b, torch.zeros(5, dtype=torch.float64))
    with pytest.raises(TypeError, match="b must be a torch tensor, got ndarray"):
        Solver().solve(s, b.numpy())


# ---------------------------------------------------------------------------- the residual told is the true one
def _true_residual(a, x, b):
    return np.linalg.norm(b - a @ x) / np.linalg.norm(b)


@pytest.mark.parametrize("method", METHODS)
def test_reported_residual_is_recomputed_against_the_given_b(method):
    s = _system(seed=4)
    a, b = s.to_csr(), _rhs(s.n, 1)
    res = solve(a, b, GRID, method=method, tol=1e-8)
    assert res.residual == pytest.approx(_true_residual(a, res.x, b), rel=1e-6, abs=1e-15)
    assert res.rhs_projected == 0.0
    assert np.linalg.norm(res.x - spla.spsolve(a.tocsc(), b)) <= 1e-6 * np.linalg.norm(res.x)


def _mean_free_direct(a, b):
    """scipy's direct solve of the projected closed-box system, pinned at cell 0, then made mean-free."""
    pinned = a.tolil()
    pinned[0, :] = 0
    pinned[0, 0] = 1
    rhs = b - b.mean()
    rhs[0] = 0
    x = spla.spsolve(pinned.tocsc(), rhs)
    return x - x.mean()


INCONSISTENT = {                       # b, the relative size of its null-space (constant) part
    "constant b": (lambda n: np.full(n, 3.0), 1.0),
    "b with a mean": (lambda n: _rhs(n, 2) + 0.5, None),
    "b off by 1e-3": (lambda n: _rhs(n, 3) + 1e-3, None),
}


@pytest.mark.parametrize("case", INCONSISTENT)
def test_inconsistent_rhs_is_refused_or_projected_with_the_truth(case):
    make, size = INCONSISTENT[case]
    s = _system(open_top=False)
    a = s.to_csr()
    b = make(s.n)
    removed = abs(b.mean()) * np.sqrt(s.n) / np.linalg.norm(b)
    if size is not None:
        assert removed == pytest.approx(size)
    with pytest.raises(ValueError, match=rf"b is inconsistent with the singular A .* {re.escape(f'{removed:.2e}')} of \|\|b\|\|, "
                                         r"above tol=1e-06.*project=True"):
        solve(a, b, (12, 9))
    res = solve(a, b, (12, 9), project=True, tol=1e-8)
    assert res.converged and res.rhs_projected == pytest.approx(removed, rel=1e-9)
    assert res.residual == pytest.approx(_true_residual(a, res.x, b), rel=1e-9)
    assert res.residual >= res.rhs_projected and "inconsistent right-hand side" in res.note
    exact = _mean_free_direct(a, b)
    assert np.linalg.norm(res.x - exact) <= 1e-6 * max(np.linalg.norm(exact), 1e-300) or not exact.any()
    sim_style = Solver("mgpcg").solve(s, torch.as_tensor(b))   # the simulator's entry point projects, never refuses
    assert sim_style.rhs_projected == pytest.approx(removed, rel=1e-9) and not sim_style.fell_back


def test_consistent_rhs_up_to_rounding_is_solved_silently():
    s = _system(open_top=False)
    b = _rhs(s.n, 5)
    b -= b.mean()
    b += 1e-9 * np.linalg.norm(b) / np.sqrt(s.n)             # float32-style rounding of the divergence
    res = solve(s.to_csr(), b, (12, 9), tol=1e-6)
    assert res.converged and res.note == "" and 0 < res.rhs_projected < 1e-8
