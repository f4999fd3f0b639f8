"""HTP: partition, H-matrix operator, SPD by construction, training (also DDP), shipped checkpoint, fallback."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse.linalg as spla
import torch

from precond import PoissonSystem, PreconditionerUnavailable, Solver
from precond.dataset import load_dir, synthetic_sample
from precond.dataset import main as dataset_main
from precond.dumps import REPO
from precond.htp import HTP, LAYOUT, HTPConfig, HTPModel
from precond.htp.analytic import Analytic, harmonic_sources, leaf_matrices, leaf_stencil
from precond.htp.coarse import coarse_space
from precond.htp.partition import partition
from precond.loss import LossConfig, make_probes, probe_loss
from precond.neural_spai import NeuralSPAI, SPAIConfig, SPAINet
from precond.pcg import pcg
from precond.synthetic import dambreak_phi, random_phi, two_phase_system
from precond.train import TrainConfig, train

TINY = HTPConfig(d_model=32, n_layers=1, n_heads=2, head_hidden=32)


def _system(nx, ny, ratio=1000.0, seed=None, open_top=True):
    phi = dambreak_phi(nx, ny) if seed is None else random_phi(nx, ny, np.random.default_rng(seed))
    return two_phase_system(phi, ratio, open_top)


def _random_model(cfg=TINY, seed=0):
    """Untrained weights with every head switched on (random, not zero, last layers)."""
    torch.manual_seed(seed)
    model = HTPModel(cfg).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _operator(model, system):
    """The H-matrix M the preconditioner of `model` builds for `system`."""
    with torch.no_grad():
        return HTP.from_model(model).operator(system)


# ---------------------------------------------------------------------------- partition
@pytest.mark.parametrize("grid", [(96, 96), (200, 100), (33, 17), (32, 32)])
def test_partition_covers_every_cell_once(grid):
    p = partition(*grid)
    idx = p.cell_index()
    real = idx[idx >= 0]
    assert real.numel() == p.n and torch.equal(real.sort().values, torch.arange(p.n))
    v = torch.randn(3, p.n, dtype=torch.float64)
    leaf = p.to_leaf(v)
    assert torch.equal(leaf[:, idx >= 0], v[:, real]) and float(leaf[:, idx < 0].abs().sum()) == 0.0
    # every depth's clusters are contiguous, equal slices whose tiles form one rectangle
    coords = p.leaf_coords()
    for d in range(p.depth + 1):
        for c in coords.view(1 << d, -1, 2):
            span = (c.max(0).values - c.min(0).values + 1).prod()
            assert span == c.shape[0]
    assert partition(*grid) is p  # cached


def test_bisection_splits_the_longer_side():
    p = partition(128, 64)
    assert p.axes == (0, 0, 1, 0, 1, 0, 1) and p.padded_shape == (128, 64) and p.n_leaves == 128


# ---------------------------------------------------------------------------- H-matrix operator
def _leaf_cells(p, i):
    """Cell indices (cell order) of leaf i's real cells, and their positions inside the leaf."""
    idx = p.cell_index()[i * p.leaf_size:(i + 1) * p.leaf_size]
    return idx[idx >= 0], torch.nonzero(idx >= 0).squeeze(1)


def _cluster_functions(p, space, basis, d, c):
    """V_c = [Q_i C_i]_{i in c} of cluster c at depth d as an (n, r) matrix in cell order."""
    per = p.n_leaves >> d
    v = torch.zeros(p.n, space.rank, dtype=torch.float64)
    for i in range(c * per, (c + 1) * per):
        cells, inside = _leaf_cells(p, i)
        v[cells] = (basis[i] @ space.prolongation[d, i].to(basis.dtype))[inside]
    return v


def _reference(system, cfg, k=None, x=None, jitter=1e-6, galerkin_jitter=1e-3):
    """M from its definition (hmatrix.py), dense and leaf by leaf, cluster by cluster, in cell order:
    D_i = s_i (B_i B_i^T + eps A_ii^-1), B_i = L_i^-T + g_i Q_i K_i Q_i^T, s_i = smoothing / (lambda_max(B_i^T
    A_ii B_i) + eps); per depth E_d = sum_c V_c S_c V_c^T with S_c = R_c T_c T_c^T R_c^T, R_c R_c^T the inverse
    of the jittered Gram matrix V_c^T A V_c, T_c = I + X_c scaled to spectral norm <= 1, and for the leaves
    E_L = sum_i Q_i G_i^-1 Q_i^T with G_i the jittered Q_i^T A Q_i; the coarse part X <- X + E_d (I - A X)
    over the leaves, the depths deep -> root -> deep and the leaves again; M = 2D - DAD + (I - DA) X (I - AD).
    k (nl, nb, nb), x (clusters, r, r): the network's outputs (None: zero, the untrained network)."""
    p = partition(system.nx, system.ny, cfg.leaf_size)
    space = coarse_space(p, cfg.segments, cfg.rank)
    a = torch.as_tensor(system.to_csr().toarray())
    stencil = leaf_stencil(system, p)
    blocks = leaf_matrices(stencil, p, jitter)
    basis = torch.linalg.solve(blocks, harmonic_sources(stencil, p, cfg.segments))     # (nl, L, nb)
    diag, real = stencil[0], stencil[5]
    n = p.n
    d_full = torch.zeros(n, n, dtype=torch.float64)
    for i in range(p.n_leaves):
        cells, inside = _leaf_cells(p, i)
        chol = torch.linalg.cholesky(blocks[i])
        b = torch.linalg.inv(chol).T
        if k is not None:
            mean_d = float((diag[i] * real[i]).sum() / real[i].sum().clamp_min(1))
            b = b + (mean_d if mean_d > 0 else 1.0) ** -0.5 * basis[i] @ k[i] @ basis[i].T
        lam = float(torch.linalg.eigvalsh(b.T @ blocks[i] @ b).max())
        di = cfg.smoothing / (lam + cfg.eps) * (b @ b.T + cfg.eps * torch.linalg.inv(blocks[i]))
        d_full[cells[:, None], cells] = di[inside][:, inside]
    eye = torch.eye(n, dtype=torch.float64)

    def inverse_factor(v):       # R with R R^T the inverse of the jittered Gram matrix of the functions v
        gram = v.T @ a @ v
        tr = float(gram.diagonal().mean())
        gram = gram + torch.diag(galerkin_jitter * gram.diagonal() + 1e-8 * tr + (1.0 if tr <= 1e-300 else 0.0))
        return torch.linalg.inv(torch.linalg.cholesky(gram)).T

    leaf_step = torch.zeros(n, n, dtype=torch.float64)
    for i in range(p.n_leaves):
        cells, inside = _leaf_cells(p, i)
        q = torch.zeros(n, basis.shape[-1], dtype=torch.float64)
        q[cells] = basis[i][inside]
        r = inverse_factor(q)
        leaf_step += q @ r @ r.T @ q.T
    steps, first = [], 0
    for d in range(p.depth):
        e = torch.zeros(n, n, dtype=torch.float64)
        for c in range(1 << d):
            vc = _cluster_functions(p, space, basis, d, c)
            r = inverse_factor(vc)
            t = torch.eye(cfg.rank, dtype=torch.float64) + (0 if x is None else x[first + c])
            t = t / max(1.0, float(torch.linalg.matrix_norm(t, ord=2)))
            e += vc @ r @ t @ t.T @ r.T @ vc.T
        steps.append(e)
        first += 1 << d
    coarse = torch.zeros(n, n, dtype=torch.float64)
    sequence = [leaf_step, *(steps[d] for d in [*range(p.depth - 1, 0, -1), *range(p.depth)]), leaf_step]
    for step in sequence if p.depth else []:
        coarse = coarse + step @ (eye - a @ coarse)
    f = eye - d_full @ a
    return 2 * d_full - d_full @ a @ d_full + f @ coarse @ f.T


def _dense_reference(system, model):
    """_reference for the outputs of `model` on `system`."""
    p = partition(system.nx, system.ny, model.cfg.leaf_size)
    an = Analytic.build(system, coarse_space(p, model.cfg.segments, model.cfg.rank), torch.float64)
    with torch.no_grad():
        k, x = model(p, an.stencil)
    return _reference(system, model.cfg, k, x)


@pytest.mark.parametrize("grid,ratio", [((32, 16), 1000.0), ((33, 17), 1000.0), ((8, 8), 1000.0), ((48, 40), 1.0)])
def test_batched_apply_matches_dense(grid, ratio):
    """(48, 40) at ratio 1: most leaves share one distinct leaf, so chunks of equal leaves fill up."""
    s = _system(*grid, ratio=ratio, seed=3)
    model = _random_model()
    hm = _operator(model, s)
    with torch.no_grad():
        dense = hm.to_dense()
        assert torch.allclose(dense, _dense_reference(s, model), rtol=1e-10, atol=1e-12 * float(dense.abs().max()))
        v = torch.randn(5, s.n, dtype=torch.float64)
        assert torch.allclose(hm.apply(v), v @ dense.T, rtol=1e-10, atol=1e-12 * float(dense.abs().max()))
        assert torch.allclose(hm.apply(v[0]), dense @ v[0], rtol=1e-10, atol=1e-12 * float(dense.abs().max()))


def test_leaf_chunks_hold_only_equal_leaves():
    from precond.htp.hmatrix import CHUNK, leaf_chunks
    g = torch.Generator().manual_seed(4)
    index = torch.cat([torch.zeros(40, dtype=torch.long), torch.arange(1, 6), torch.full((17,), 6)])
    index = index[torch.randperm(index.numel(), generator=g)]
    slot, block = leaf_chunks(index)
    assert slot.unique().numel() == index.numel()                      # one row per leaf
    assert torch.equal(block[slot // CHUNK], index)                   # every chunk holds one distinct leaf
    assert block.numel() == 3 + 5 + 2                                 # ceil(40/16) + 5 singletons + ceil(17/16)


def test_coarse_steps_are_galerkin_inverses():
    """With the cluster head at zero (untrained), a cluster's step S_c is the (jittered) Galerkin inverse
    on span(V_c); the cluster head's T_c moves S_c and nothing else."""
    s = _system(32, 32, seed=1)
    torch.manual_seed(0)
    hm = _operator(HTPModel(TINY).double(), s)
    moved = _operator(_random_model(), s)
    p = hm.part
    a = torch.as_tensor(s.to_csr().toarray())
    d, c = 1, 1                                   # second cluster of depth 1
    v = _cluster_functions(p, hm.space, hm.basis, d, c)   # (n, r) in cell order, supported on the cluster
    inside = v.abs().sum(1) > 0
    a_cc = a[inside][:, inside]
    gram = v[inside].T @ a_cc @ v[inside]
    eye = torch.eye(gram.shape[0], dtype=torch.float64)
    jittered = gram + torch.diag(1e-3 * gram.diagonal() + 1e-8 * gram.diagonal().mean())
    assert torch.allclose(hm.coarse_inverse[d][c] @ jittered, eye, atol=1e-8)
    assert not torch.allclose(moved.coarse_inverse[d][c], hm.coarse_inverse[d][c])
    assert torch.equal(moved.space.prolongation, hm.space.prolongation)


@pytest.mark.parametrize("grid", [(64, 64), (200, 100), (33, 17)])
def test_coarse_functions_are_continuous_and_vanish_on_cluster_boundaries(grid):
    """Across every leaf side inside a cluster both leaves give the shared side pieces the same
    values; where the side is the cluster's boundary inside the grid, the values are 0. (Clusters
    of fewer than rank / 2 leaves use each leaf's own responses in place of area hats.)"""
    p = partition(*grid, 64)
    seg = TINY.segments
    sel = coarse_space(p, TINY.segments, TINY.rank).prolongation   # (depth, nl, nb, r)
    coords = p.leaf_coords()
    where = {tuple(c): i for i, c in enumerate(coords.tolist())}
    pieces = lambda side: slice(side * seg, (side + 1) * seg)   # W, E, S, N
    checked = 0
    for i, (x, y) in enumerate(coords.tolist()):
        for (dx, dy), mine, theirs in (((1, 0), 1, 0), ((0, 1), 3, 2)):
            j = where.get((x + dx, y + dy))
            if j is None:
                continue
            for d in range(p.depth):
                hats = slice(0 if p.n_leaves >> d >= TINY.rank // 2 else TINY.rank // 2, None)
                same = (i >> (p.depth - d)) == (j >> (p.depth - d))
                here, there = sel[d, i, pieces(mine), hats], sel[d, j, pieces(theirs), hats]
                if same:
                    assert torch.allclose(here, there, atol=1e-6)
                    checked += 1
                else:
                    assert here.abs().max() < 1e-6 and there.abs().max() < 1e-6
    assert checked > 0
    assert torch.all(sel.abs().sum((1, 2)) > 0)                  # every coarse function is used


def test_distinct_rows_matches_unique():
    """Leaves with equal stencil data share one factorisation: the fast search finds exactly the
    groups torch.unique(dim=0) finds, and every row is its distinct row."""
    from precond.htp.analytic import distinct_rows
    g = torch.Generator().manual_seed(1)
    base = torch.randn(7, 40, generator=g, dtype=torch.float64)
    rows = base[torch.randint(0, 7, (200,), generator=g)]
    rows[5, 3] *= 1 + 2 ** -52                       # one ulp off: a distinct row of its own
    distinct, index = distinct_rows(rows)
    assert torch.equal(distinct[index], rows)
    assert distinct.shape[0] == torch.unique(rows, dim=0).shape[0] == 8


@pytest.mark.parametrize("grid,ratio,open_top", [((32, 32), 1000.0, True), ((33, 17), 1.0, False), ((24, 40), 100.0, True)])
def test_m_is_spd_for_random_weights(grid, ratio, open_top):
    s = _system(*grid, ratio=ratio, seed=7, open_top=open_top)
    for seed in range(2):
        with torch.no_grad():
            m = _operator(_random_model(seed=seed), s).to_dense()
        assert torch.allclose(m, m.T, atol=1e-12 * float(m.abs().max()))
        assert float(torch.linalg.eigvalsh(m).min()) > 0


def test_m_is_spd_for_large_corrections():
    """Heads far from zero: the leaf bound and the coarse steps' norm bound are what keep M SPD (both act here)."""
    s = _system(32, 24, ratio=1000.0, seed=5, open_top=False)
    model = _random_model(seed=3)
    with torch.no_grad():
        for head in (model.leaf_head, model.cluster_head[-1]):
            head.weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
            head.bias.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(2))
        hm = _operator(model, s)
        m = hm.to_dense()
    untrained = TINY.smoothing / (1 + TINY.eps)
    assert float(hm.leaf_scale.min()) < 0.5 * untrained
    assert max(float(torch.linalg.matrix_norm(t, ord=2).max()) for t in hm.cluster_corr) > 2
    assert torch.allclose(m, m.T, atol=1e-12 * float(m.abs().max()))
    assert float(torch.linalg.eigvalsh(m).min()) > 0


def test_float32_network_on_a_closed_box_with_a_near_null_coarse_function():
    """Regression: training sample 960 of seed 0, a closed 256x256 box at ratio 1.2. The root's area
    hats sum to the constant, a null vector of A; a coarse Gram matrix assembled in float32 was
    indefinite beyond its jitter and the Cholesky factorisation failed mid-training."""
    rng = np.random.default_rng()
    rng.bit_generator.state = {"bit_generator": "PCG64", "state": {
        "state": 45746805857798286090935441243336969111, "inc": 87136372517582989555478159403783844777},
        "has_uint32": 0, "uinteger": 3645550213}
    sample = synthetic_sample(rng)
    assert sample.system.shape == (256, 256) and sample.source == "random-closed"
    torch.manual_seed(0)
    hm = _operator(HTPModel(TINY), sample.system)
    assert hm.dtype == torch.float32 and all(bool(torch.isfinite(f).all()) for f in hm.coarse_inverse)


@pytest.mark.parametrize("grid,ratio,open_top", [((64, 64), 1000.0, True), ((33, 17), 100.0, False)])
def test_untrained_network_is_the_analytic_preconditioner(grid, ratio, open_top):
    """Zero last layers: M is the sweep of damped block-Jacobi leaves and Galerkin coarse steps, from A alone."""
    s = _system(*grid, ratio=ratio, seed=2, open_top=open_top)
    torch.manual_seed(0)
    cfg = HTPConfig()
    v = torch.randn(3, s.n, dtype=torch.float64)
    want = v @ _reference(s, cfg)
    untrained = _operator(HTPModel(cfg).double(), s)                  # float64: compare to float64 round-off
    assert torch.linalg.norm(untrained.apply(v) - want) < 1e-9 * torch.linalg.norm(want)
    shipped_dtype = _operator(HTPModel(cfg), s)                       # float32, as HTP runs
    assert torch.linalg.norm(shipped_dtype.apply(v).double() - want) < 1e-5 * torch.linalg.norm(want)


def test_analytic_preconditioner_is_far_ahead_of_jacobi_and_ic0():
    s = _system(64, 64, seed=2)
    torch.manual_seed(0)
    analytic = HTP.from_model(HTPModel(HTPConfig()))
    b = torch.randn(s.n, dtype=torch.float64)
    res = Solver("htp", fallback=None, precond=analytic).solve(s, b)
    assert res.converged
    assert res.iterations * 4 < Solver("jacobi", fallback=None).solve(s, b).iterations
    assert res.iterations < Solver("ic0", fallback=None).solve(s, b).iterations


# ---------------------------------------------------------------------------- data and training
def test_dataset_command_and_npz_reading(tmp_path):
    dataset_main(["--out", str(tmp_path), "--count", "3", "--grids", "32x32", "48x16", "--seed", "5"])
    # a dump in the simulator's format, written by hand
    s = _system(24, 16, seed=4)
    np.savez(tmp_path / "frame_0001.npz", diag=s.diag.numpy(), cx=s.cx.numpy(), cy=s.cy.numpy(),
             b=np.ones(s.n))
    samples = load_dir(tmp_path)
    assert len(samples) == 4
    hand = [x for x in samples if x.system.shape == (24, 16)][0]
    assert torch.equal(hand.system.diag, s.diag) and hand.b.shape == (s.n,)
    assert all(x.system.shape in {(32, 32), (48, 16), (24, 16)} for x in samples)


def test_a_few_training_steps_lower_the_loss(tmp_path):
    dataset_main(["--out", str(tmp_path), "--count", "2", "--grids", "32x32", "--seed", "1"])
    samples = load_dir(tmp_path)
    lcfg = LossConfig(probes=16)
    probes = [make_probes(x.system, lcfg, torch.Generator().manual_seed(9)) for x in samples]

    def loss(model):
        return sum(float(probe_loss(_operator(model, x.system), x.system, z)) for x, z in zip(samples, probes))

    torch.manual_seed(0)
    before = loss(HTPModel(TINY))
    model, _ = train(TrainConfig(steps=15, batch=2, lr=1e-3, warmup=1, data=str(tmp_path), loss=lcfg, model=TINY),
                     quiet=True, val=[])
    assert loss(model) < 0.97 * before


def test_training_step_after_a_solve_on_the_same_grid():
    """A solve's set-up (inference mode) is the first to build this grid's cached tables; training
    on the grid afterwards still differentiates through them."""
    s = _system(40, 56, ratio=10.0, seed=8)                        # a shape no other test uses
    model = _random_model().float()
    HTP.from_model(model).setup(s)
    z = make_probes(s, LossConfig(probes=4), torch.Generator().manual_seed(0))
    probe_loss(HTP.from_model(model).operator(s), s, z).backward()
    assert model.leaf_head.weight.grad is not None and bool(torch.isfinite(model.leaf_head.weight.grad).all())


def test_pcg_loss_is_the_solver_residual():
    """The unrolled PCG loss is log(||r_k|| / ||b||) of precond.pcg with the same M."""
    s = _system(24, 16, ratio=100.0, seed=6)
    model = _random_model()
    b = torch.randn(1, s.n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    loss = float(probe_loss(_operator(model, s), s, b, "pcg", cg_steps=5))
    htp = HTP.from_model(model)
    htp.setup(s)
    res = pcg(s, b[0], htp, tol=1e-14, maxiter=5)
    assert abs(loss - np.log(res.history[5])) < 1e-8


@pytest.mark.slow
def test_ddp_two_processes(tmp_path):
    data = tmp_path / "data"
    dataset_main(["--out", str(data), "--count", "2", "--grids", "32x32"])
    out = tmp_path / "ddp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "precond.train", "--steps", "3", "--batch", "1", "--eval-every", "0", "--data", str(data),
           "--d-model", "32", "--layers", "1", "--heads", "2", "--probes", "8", "--threads", "1",
           "--out", str(out), "--record", str(tmp_path / "ddp.json")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # torchrun's workers too
        raise
    assert proc.returncode == 0, err[-3000:]
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["record"]["world_size"] == 2 and ckpt["record"]["steps"] == 3


# ---------------------------------------------------------------------------- shipped checkpoint
def _exact(s: PoissonSystem, b: np.ndarray) -> np.ndarray:
    a = s.to_csr()
    if not s.singular:
        return spla.spsolve(a.tocsc(), b)
    pinned = a.tolil()
    pinned[0, :] = 0
    pinned[0, 0] = 1
    rhs = np.array(b)
    rhs -= rhs.mean()
    rhs[0] = 0
    x = spla.spsolve(pinned.tocsc(), rhs)
    return x - x.mean()


@pytest.mark.parametrize("name,system", [
    ("dam break 64x32, 1000:1", lambda: two_phase_system(dambreak_phi(64, 32), 1000.0, True)),
    ("bubbles 48x48, 100:1", lambda: _system(48, 48, ratio=100.0, seed=11)),
    ("random interface 40x72, 10:1", lambda: _system(40, 72, ratio=10.0, seed=12)),
    ("closed box 32x32, 1000:1", lambda: _system(32, 32, ratio=1000.0, seed=13, open_top=False)),
])
def test_shipped_checkpoint_solves_and_matches_spsolve(name, system):
    s = system()
    b = np.random.default_rng(0).standard_normal(s.n)
    res = Solver("htp", tol=1e-6, fallback=None).solve(s, torch.as_tensor(b))
    assert res.converged and not res.fell_back and res.method == "htp", name
    x = res.x.numpy()
    exact = _exact(s, s.project(torch.as_tensor(b)).numpy())
    assert np.linalg.norm(x - exact) / np.linalg.norm(exact) < 1e-3, name
    jac = Solver("jacobi", tol=1e-6, fallback=None).solve(s, torch.as_tensor(b))
    assert res.iterations * 2 < jac.iterations, name


def test_shipped_checkpoint_loads_with_weights_only(monkeypatch):
    """The file holds only tensors and plain containers, its weights fit the network exactly, HTP()
    reads it with weights_only=True, and the weights make a working preconditioner, no worse than the
    untrained network (the record's best validation step)."""
    path = REPO / "assets" / "htp.pt"
    assert path.stat().st_size < 8e6
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["layout"] == LAYOUT
    model = HTPModel(HTPConfig.from_dict(ckpt["config"]))
    model.load_state_dict(ckpt["model"])                             # strict: every name and shape
    calls = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw.get("weights_only")) or load(*a, **kw))
    shipped = HTP(path)
    assert calls == [True]
    for name, p in shipped.model.state_dict().items():
        assert torch.equal(p, model.state_dict()[name]), name
    s = _system(48, 48, ratio=100.0, seed=11)
    b = torch.randn(s.n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res = Solver("htp", fallback=None, precond=shipped).solve(s, b)
    torch.manual_seed(0)
    untrained = Solver("htp", fallback=None, precond=HTP.from_model(HTPModel(shipped.model.cfg))).solve(s, b)
    assert res.converged and res.iterations <= untrained.iterations


# ---------------------------------------------------------------------------- fallback
@pytest.mark.parametrize("content", [None, b"not a checkpoint", "other-layout", "other-weights"])
def test_bad_checkpoint_is_unavailable_and_solver_falls_back(tmp_path, monkeypatch, content):
    path = tmp_path / "htp.pt"
    if content == "other-layout":
        torch.save({"layout": "something-else", "config": {}, "model": {}}, path)
    elif content == "other-weights":
        torch.save({"layout": LAYOUT, "config": {}, "model": {"embed.weight": torch.zeros(3)}}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(PreconditionerUnavailable, match="htp.pt"):
        HTP(path)
    monkeypatch.setenv("HTP_CHECKPOINT", str(path))
    s = _system(24, 16)
    b = torch.randn(s.n, dtype=torch.float64)
    with pytest.warns(UserWarning, match="'htp' unavailable"):
        res = Solver("htp").solve(s, b)
    assert res.converged and res.fell_back and res.method == "mgpcg" and "htp -> mgpcg" in res.note


# ---------------------------------------------------------------------------- neural SPAI baseline
def test_neural_spai_is_spd_and_falls_back_without_checkpoints(tmp_path, monkeypatch):
    s = _system(16, 12, seed=3)
    torch.manual_seed(0)
    net = SPAINet(SPAIConfig()).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
        factor = net(s)
        m = factor.apply(torch.eye(s.n, dtype=torch.float64)).T
    assert torch.allclose(m, m.T, atol=1e-12 * float(m.abs().max())) and float(torch.linalg.eigvalsh(m).min()) > 0
    with pytest.raises(PreconditionerUnavailable, match="no neural_spai checkpoints"):
        NeuralSPAI(tmp_path)
    monkeypatch.setenv("NEURAL_SPAI_DIR", str(tmp_path))
    with pytest.warns(UserWarning, match="'neural_spai' unavailable"):
        assert Solver("neural_spai").solve(s, torch.randn(s.n, dtype=torch.float64)).fell_back


def test_shipped_neural_spai_converges():
    s = _system(32, 32, ratio=100.0, seed=5)
    b = torch.randn(s.n, dtype=torch.float64)
    res = Solver("neural_spai", fallback=None).solve(s, b)
    assert res.converged and res.method == "neural_spai"
