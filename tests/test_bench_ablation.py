"""HTP ablations: float16 checkpoints load as float32 models; the benchmark's ablation table."""
import csv
import math

import pytest
import torch

from precond import bench
from precond.dumps import save_system
from precond.htp import HTP, HTPConfig, HTPModel
from precond.synthetic import dambreak_phi, two_phase_system

TINY = HTPConfig(d_model=32, n_layers=1, n_heads=2, head_hidden=32)


def _model(cfg=TINY, seed=0):
    """Float32 weights with every head switched on (random, not zero, last layers)."""
    torch.manual_seed(seed)
    model = HTPModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_half_checkpoint_loads_as_float32_with_the_same_outputs(tmp_path):
    model = _model()
    HTP.from_model(model).save(tmp_path / "full.pt")
    HTP.from_model(model, {"note": "kept"}).save(tmp_path / "half.pt", half=True)
    stored = torch.load(tmp_path / "half.pt", weights_only=True)["model"]
    assert all(v.dtype == torch.float16 for v in stored.values())
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size
    htp = HTP(tmp_path / "half.pt")
    loaded, record = htp.model, htp.record
    assert record == {"note": "kept"}
    for name, p in loaded.state_dict().items():   # float32 params holding exactly the float16-rounded weights
        assert p.dtype == torch.float32 and torch.equal(p, model.state_dict()[name].half().float()), name
    s = two_phase_system(dambreak_phi(32, 32), 100.0, True)
    r = torch.randn(s.n, dtype=torch.float64)
    with torch.no_grad():
        want, got = HTP.from_model(model).operator(s).apply(r), htp.operator(s).apply(r)
    assert got.dtype == want.dtype and torch.linalg.norm(got - want) < 1e-2 * torch.linalg.norm(want)


@pytest.mark.slow
def test_bench_writes_the_ablation_table(tmp_path, capsys):
    # the cached dump bench would otherwise ask the simulator for (a synthetic dam break, same format)
    cache = tmp_path / "cache" / "dambreak_32x32_r100"
    cache.mkdir(parents=True)
    s = two_phase_system(dambreak_phi(32, 32), 100.0, True)
    save_system(cache / "frame_0040.npz", s, torch.zeros(s.n, dtype=torch.float64))
    ablations = tmp_path / "ablations"
    HTP.from_model(_model(), {"config": {"loss": {"kind": "cosine"}}}).save(ablations / "cosine.pt", half=True)
    HTP.from_model(_model(HTPConfig(**{**vars(TINY), "highways": False}), seed=1),
                   {"config": {"loss": {"kind": "sai"}}}).save(ablations / "sai-no-highways.pt")
    out = tmp_path / "out"
    bench.main(["--sizes", "1024", "--ratios", "100", "--methods", "jacobi", "htp", "--ablations", str(ablations),
                "--no-pyamg", "--repeats", "1", "--cache", str(tmp_path / "cache"), "--out", str(out),
                "--markdown", str(out / "tables.md"), "--compiled", "--sequence", "0"])
    rows = {r["variant"]: r for r in csv.DictReader(open(out / "ablations.csv"))}
    assert set(rows) == {"analytic (untrained)", "shipped", "cosine", "sai-no-highways"}
    assert [(rows[v]["loss"], rows[v]["highways"]) for v in ("analytic (untrained)", "cosine", "sai-no-highways")] \
        == [("none", "on"), ("cosine", "on"), ("sai", "off")]
    for r in rows.values():
        assert int(r["1024/100"]) > 0 and math.isfinite(float(r["mean"])) and r["converged"] == "True"
    printed = capsys.readouterr().out
    assert "HTP ablations" in printed and "sai-no-highways" in printed and "ablations.csv" in printed
    # the shipped row is the same solve as the main table's htp row
    htp = next(r for r in csv.DictReader(open(out / "bench.csv")) if r["method"] == "htp")
    assert rows["shipped"]["1024/100"] == htp["iterations"]
    # the markdown tables: machine and date once at the top, the same figures as the csv files
    md = (out / "tables.md").read_text()
    assert md.startswith("Machine: ") and f"torch {torch.__version__}" in md and md.count("Machine: ") == 1
    jacobi = next(r for r in csv.DictReader(open(out / "bench.csv")) if r["method"] == "jacobi")
    assert "| N | jacobi | htp |" in md and f"| 1,024 (32x32) | {jacobi['iterations']} | {htp['iterations']} |" in md
    assert f"| 1,024 (32x32) | {float(htp['solve_ms']) / float(jacobi['solve_ms']):.2f} (jacobi) |" in md   # htp / fastest
    assert "htp compiled" not in md and "HTP's set-up reuse" not in md     # --compiled with no method, --sequence 0
    assert "| variant | loss | highways | 1,024 | mean |" in md
    assert f"| sai-no-highways | sai | off | {rows['sai-no-highways']['1024/100']} |" in md
    # --no-ablations: no table; compiled jacobi and the set-up reuse table on three "consecutive" systems
    sequence = tmp_path / "cache" / "dambreak_32x32_r100_sequence"
    sequence.mkdir()
    for frame, width in zip((40, 41, 42), (0.40, 0.42, 0.44)):
        s = two_phase_system(dambreak_phi(32, 32, width=width), 100.0, True)
        save_system(sequence / f"frame_{frame:04d}.npz", s, torch.ones(s.n, dtype=torch.float64))
    bench.main(["--sizes", "1024", "--ratios", "100", "--methods", "jacobi", "htp", "--ablations", str(ablations),
                "--no-ablations", "--no-pyamg", "--repeats", "1", "--cache", str(tmp_path / "cache"),
                "--out", str(tmp_path / "out2"), "--compiled", "jacobi", "--sequence", "3", "--sequence-at", "1024", "100",
                "--markdown", str(tmp_path / "out2" / "tables.md")])
    assert not (tmp_path / "out2" / "ablations.csv").exists()
    rows = {r["method"]: r for r in csv.DictReader(open(tmp_path / "out2" / "bench.csv"))}
    assert rows["jacobi compiled"]["mode"] in ("compiled", "eager") and rows["jacobi"]["mode"] == "eager"
    assert rows["jacobi compiled"]["iterations"] == rows["jacobi"]["iterations"]
    md = (tmp_path / "out2" / "tables.md").read_text()
    assert "| N | jacobi | htp | jacobi compiled |" in md
    assert "| htp, network every system | 3 | 3 |" in md and "| htp, network output kept | 3 | 1 |" in md
