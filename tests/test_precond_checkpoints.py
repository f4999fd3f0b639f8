"""Unusable checkpoints: each is a CheckpointError with one short line (the file, the reason),
and a Solver falls back to mgpcg with exactly one warning, however many solves follow."""
import warnings

import numpy as np
import pytest
import torch

from precond import Solver
from precond.checkpoint import CheckpointError
from precond.htp import HTP, LAYOUT, HTPConfig, HTPModel
from precond.neural_spai import NeuralSPAI
from precond.synthetic import dambreak_phi, two_phase_system

TINY = HTPConfig(d_model=32, n_layers=1, n_heads=2, head_hidden=32)


def _valid(path):
    HTP.from_model(HTPModel(TINY)).save(path)
    return torch.load(path, weights_only=True)


def _with(**changes):
    def write(path):
        ckpt = _valid(path)
        for key, value in changes.items():
            ckpt[key] = value(ckpt[key]) if callable(value) else value
        torch.save(ckpt, path)
    return write


def _bytes(content):
    return lambda path: path.write_bytes(content)


def _nan_weight(model):
    name = next(iter(model))
    return {**model, name: torch.full_like(model[name], float("nan"))}


class Code:
    """Not a tensor: weights_only refuses to unpickle it."""


CHECKPOINTS = {   # how the file is made, what the one-line reason says
    "missing": (lambda path: None, "not found"),
    "empty file": (_bytes(b""), "is unreadable"),
    "garbage": (_bytes(b"not a checkpoint at all"), "is unreadable"),
    "truncated": (lambda path: (_valid(path), path.write_bytes(path.read_bytes()[:200])), "is unreadable"),
    "pickled code": (lambda path: torch.save({"layout": LAYOUT, "config": {}, "model": Code()}, path), "is unreadable"),
    "a bare tensor": (lambda path: torch.save(torch.zeros(3), path), "is not a checkpoint"),
    "other layout": (_with(layout="htp-hmatrix-v1"), "was trained for layout 'htp-hmatrix-v1'"),
    "window 0": (_with(config=lambda c: {**c, "window": 0}), "invalid config: HTPConfig.window must be a power of two"),
    "n_heads 0": (_with(config=lambda c: {**c, "n_heads": 0}), "invalid config: HTPConfig.n_heads must be an integer"),
    "leaf_size 48": (_with(config=lambda c: {**c, "leaf_size": 48}), "invalid config: HTPConfig.leaf_size"),
    "unknown config key": (_with(config=lambda c: {**c, "dropout": 0.1}), "invalid config: unknown HTP config keys"),
    "config not a dict": (_with(config=[1, 2]), "is not a checkpoint"),
    "weights of another size": (_with(config=lambda c: {**c, "d_model": 64}), "weights that do not fit its config"),
    "missing weights": (_with(model={}), "weights that do not fit its config"),
    "nan weights": (_with(model=_nan_weight), "weights that are not finite"),
}


def _system():
    return two_phase_system(dambreak_phi(24, 16), 100.0, True)


def _one_line(text):
    return "\n" not in text and len(text) < 240


@pytest.mark.parametrize("case", CHECKPOINTS)
def test_unusable_htp_checkpoint_is_one_line_and_falls_back_once(tmp_path, monkeypatch, case):
    make, reason = CHECKPOINTS[case]
    path = tmp_path / "htp.pt"
    make(path)
    with pytest.raises(CheckpointError, match=reason) as err:
        HTP(path)
    assert str(path) in str(err.value) and _one_line(str(err.value)), str(err.value)
    monkeypatch.setenv("HTP_CHECKPOINT", str(path))
    s = _system()
    solver = Solver("htp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [solver.solve(s, torch.randn(s.n, dtype=torch.float64)) for _ in range(3)]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "'htp' unavailable" in messages[0] and reason in messages[0], messages
    assert _one_line(messages[0]), messages[0]
    for res in results:
        assert res.converged and res.fell_back and res.method == "mgpcg"
        assert res.note.startswith("htp -> mgpcg: checkpoint") and reason in res.note and _one_line(res.note)


@pytest.mark.parametrize("content", [b"", b"corrupt"])
def test_corrupt_neural_spai_checkpoint_falls_back_from_setup(tmp_path, monkeypatch, content):
    """neural_spai reads a grid's checkpoint in set-up, inside Solver.solve: it must fall back there too."""
    (tmp_path / "24x16.pt").write_bytes(content)
    monkeypatch.setenv("NEURAL_SPAI_DIR", str(tmp_path))
    NeuralSPAI()                                   # the folder lists a checkpoint: built fine
    s = _system()
    solver = Solver("neural_spai")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [solver.solve(s, torch.randn(s.n, dtype=torch.float64)) for _ in range(2)]
    assert len(caught) == 1 and "24x16.pt is unreadable" in str(caught[0].message)
    assert all(r.fell_back and r.converged and _one_line(r.note) for r in results)
    with pytest.raises(CheckpointError, match="24x16.pt is unreadable"):
        Solver("neural_spai", fallback=None).solve(s, torch.ones(s.n, dtype=torch.float64))


def test_valid_tiny_checkpoint_still_loads(tmp_path):
    _valid(tmp_path / "htp.pt")
    htp = HTP(tmp_path / "htp.pt")
    s = _system()
    res = Solver("htp", fallback=None, precond=htp).solve(s, torch.as_tensor(np.ones(s.n)))
    assert res.converged and not res.fell_back
