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
from precond.hmatrix import HMatrix, coarse_selection
from precond.htp import HTP
from precond.loss import LossConfig, make_probes, probe_loss
from precond.model import HTPConfig, HTPModel
from precond.neural_spai import NeuralSPAI, SPAIConfig, SPAINet
from precond.partition import partition
from precond.pcg import pcg
from precond.synthetic import dambreak_phi, random_phi, two_phase_system
from precond.train import TrainConfig, NetworkPreconditioner, train

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
    assert torch.equal(p.from_leaf(leaf), v)
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
def _dense_reference(hm: HMatrix) -> torch.Tensor:
    """M = G G^T + eps I built block by block with Python loops (cell order)."""
    p = hm.part
    nl, size, depth = p.n_leaves, p.leaf_size, p.depth
    q = hm.basis
    g = torch.zeros(p.n_padded, p.n_padded, dtype=q.dtype)
    cols = []
    leaf = hm.leaf()
    for i in range(nl):
        g[i * size:(i + 1) * size, i * size:(i + 1) * size] = leaf[i]
    for d in range(depth):
        per = nl >> d
        for c in range(1 << d):
            w = torch.zeros(p.n_padded, hm.coarse.shape[-1], dtype=q.dtype)
            vc = torch.cat([q[i] @ hm.coarse[d, i] for i in range(c * per, (c + 1) * per)])
            w[c * per * size:(c + 1) * per * size] = vc @ hm.coarse_factor[d][c]
            cols.append(w)
    full = torch.cat([g, *cols], 1)
    m = full @ full.T + hm.eps * torch.eye(p.n_padded, dtype=q.dtype)
    pos = p.cell_position()
    return m[pos][:, pos]


@pytest.mark.parametrize("grid,ratio", [((32, 16), 1000.0), ((33, 17), 1000.0), ((8, 8), 1000.0), ((48, 40), 1.0)])
def test_batched_apply_matches_dense(grid, ratio):
    """(48, 40) at ratio 1: most leaves share one distinct leaf, so chunks of equal leaves fill up."""
    s = _system(*grid, ratio=ratio, seed=3)
    with torch.no_grad():
        hm = _random_model()(s)
        dense = hm.to_dense()
        assert torch.allclose(dense, _dense_reference(hm), rtol=1e-10, atol=1e-12 * float(dense.abs().max()))
        v = torch.randn(5, s.n, dtype=torch.float64)
        assert torch.allclose(hm.apply(v), v @ dense.T, rtol=1e-10, atol=1e-12 * float(dense.abs().max()))
        assert torch.allclose(hm.apply(v[0]), dense @ v[0], rtol=1e-10, atol=1e-12 * float(dense.abs().max()))


def test_leaf_chunks_hold_only_equal_leaves():
    from precond.hmatrix import CHUNK, leaf_chunks
    g = torch.Generator().manual_seed(4)
    index = torch.cat([torch.zeros(40, dtype=torch.long), torch.arange(1, 6), torch.full((17,), 6)])
    index = index[torch.randperm(index.numel(), generator=g)]
    slot, block = leaf_chunks(index)
    assert slot.unique().numel() == index.numel()                      # one row per leaf
    assert torch.equal(block[slot // CHUNK], index)                   # every chunk holds one distinct leaf
    assert block.numel() == 3 + 5 + 2                                 # ceil(40/16) + 5 singletons + ceil(17/16)


def test_coarse_levels_are_weighted_galerkin_inverses():
    """With the cluster head at zero (untrained), W_c W_c^T is w times the Galerkin inverse on span(V_c);
    the cluster head's T_c moves F_c = sqrt(w) R_c T_c and nothing else."""
    s = _system(32, 32, seed=1)
    torch.manual_seed(0)
    with torch.no_grad():
        hm = HTPModel(TINY).double()(s)
        moved = _random_model()(s)
    p = hm.part
    a = torch.as_tensor(s.to_csr().toarray())
    d, c = 1, 1                                   # second cluster of depth 1
    per = p.n_leaves >> d
    v_leaf = torch.zeros(p.n_padded, hm.coarse.shape[-1], dtype=torch.float64)
    v_leaf[c * per * p.leaf_size:(c + 1) * per * p.leaf_size] = torch.cat(
        [hm.basis[i] @ hm.coarse[d, i] for i in range(c * per, (c + 1) * per)])
    v = p.from_leaf(v_leaf.T).T                   # (n, r) in cell order, supported on the cluster
    inside = v.abs().sum(1) > 0
    a_cc = a[inside][:, inside]
    gram = v[inside].T @ a_cc @ v[inside]
    rrt = hm.coarse_factor[d][c] @ hm.coarse_factor[d][c].T
    eye = torch.eye(gram.shape[0], dtype=torch.float64)
    jittered = gram + torch.diag(1e-3 * gram.diagonal() + 1e-8 * gram.diagonal().mean())
    assert torch.allclose(rrt @ jittered, TINY.level_weight * eye, atol=1e-8)
    assert not torch.allclose(moved.coarse_factor[d][c], hm.coarse_factor[d][c])
    assert torch.equal(moved.coarse, hm.coarse)


@pytest.mark.parametrize("grid", [(64, 64), (200, 100), (33, 17)])
def test_coarse_functions_are_continuous_and_vanish_on_cluster_boundaries(grid):
    """Across every leaf side inside a cluster both leaves give the shared side pieces the same
    values; where the side is the cluster's boundary inside the grid, the values are 0. (Clusters
    of fewer than rank / 2 leaves use each leaf's own responses in place of area hats.)"""
    p = partition(*grid, 64)
    seg = TINY.segments
    sel = coarse_selection(p, TINY.k, TINY.rank)                 # (depth, nl, k, r)
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
    from precond.hmatrix import distinct_rows
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
            m = _random_model(seed=seed)(s).to_dense()
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
    with torch.no_grad():
        hm = HTPModel(TINY)(sample.system)
    assert hm.dtype == torch.float32 and all(bool(torch.isfinite(f).all()) for f in hm.coarse_factor)


def test_untrained_network_is_the_analytic_preconditioner():
    """Zero last layers: block-Jacobi leaves plus Galerkin levels, already far ahead of Jacobi and IC(0)."""
    s = _system(64, 64, seed=2)
    torch.manual_seed(0)
    model = HTPModel(HTPConfig())
    b = torch.randn(s.n, dtype=torch.float64)
    analytic = pcg(s, b, NetworkPreconditioner(model, s))
    assert analytic.converged
    assert analytic.iterations * 4 < Solver("jacobi", fallback=None).solve(s, b).iterations
    assert analytic.iterations < Solver("ic0", fallback=None).solve(s, b).iterations


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
        with torch.no_grad():
            return sum(float(probe_loss(model(x.system), x.system, z)) for x, z in zip(samples, probes))

    torch.manual_seed(0)
    before = loss(HTPModel(TINY))
    model, _ = train(TrainConfig(steps=15, batch=2, lr=3e-3, warmup=1, data=str(tmp_path), loss=lcfg, model=TINY),
                     quiet=True, val=[])
    assert loss(model) < 0.97 * before


def test_pcg_loss_is_the_solver_residual():
    """The unrolled PCG loss is log(||r_k|| / ||b||) of precond.pcg with the same M."""
    s = _system(24, 16, ratio=100.0, seed=6)
    model = _random_model()
    b = torch.randn(1, s.n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        loss = float(probe_loss(model(s), s, b, "pcg", cg_steps=5))
        res = pcg(s, b[0], NetworkPreconditioner(model, s), tol=1e-14, maxiter=5)
    assert abs(loss - np.log(res.history[5])) < 1e-8


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


def test_shipped_checkpoint_loads_with_weights_only():
    ckpt = torch.load(REPO / "assets" / "htp.pt", weights_only=True)
    assert ckpt["layout"] and HTPConfig.from_dict(ckpt["config"])
    assert (REPO / "assets" / "htp.pt").stat().st_size < 8e6


# ---------------------------------------------------------------------------- fallback
@pytest.mark.parametrize("content", [None, b"not a checkpoint", "other-layout"])
def test_bad_checkpoint_is_unavailable_and_solver_falls_back(tmp_path, monkeypatch, content):
    path = tmp_path / "htp.pt"
    if content == "other-layout":
        torch.save({"layout": "something-else", "config": {}, "model": {}}, path)
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
