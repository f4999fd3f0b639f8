"""The command line: bad input is one clear line and exit code 2; a headless run reports every frame."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import main  # noqa: E402

DAMBREAK = str(ROOT / "scenes" / "dambreak.yaml")


@pytest.fixture
def nothing_is_built(monkeypatch):
    """Fail the test if main gets as far as reading the scene (it must stop before)."""
    import sim.scene

    def refuse(*args, **kwargs):
        raise AssertionError("main read the scene before refusing")
    monkeypatch.setattr(sim.scene, "load_scene", refuse)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    ([DAMBREAK, "--grid", "5x5"], ["--grid", "8 to 2048", "5x5"]),
    ([DAMBREAK, "--grid", "big"], ["--grid", "NXxNY", "big"]),
    ([DAMBREAK, "--ratio", "0.5"], ["--ratio", "1 to 1000", "0.5"]),
    ([DAMBREAK, "--ratio", "lots"], ["--ratio", "a number", "lots"]),
    ([DAMBREAK, "--solver", "magic"], ["--solver", "magic", "mgpcg"]),
    ([DAMBREAK, "--frames", "0"], ["--frames", "1 to 1000000", "0"]),
    ([DAMBREAK, "--frames", "10000000"], ["--frames", "1 to 1000000", "10000000"]),
    ([DAMBREAK, "--frames", "9" * 5000], ["--frames", "an integer", "..."]),
    ([DAMBREAK, "--grid", "9" * 5000 + "x8"], ["--grid", "NXxNY", "..."]),
    ([DAMBREAK, "--tol", "nan"], ["--tol", "1e-14 to 0.1", "nan"]),
    ([DAMBREAK, "--ratio", "inf"], ["--ratio", "1 to 1000", "inf"]),
    ([DAMBREAK, "--record-fps", "0"], ["--record-fps", "1 to 240", "0"]),
    ([DAMBREAK, "--dump-every", "-1"], ["--dump-every", "1 to 1000000"]),
    ([DAMBREAK, "--tol", "2"], ["--tol", "0.1", "2"]),
    ([DAMBREAK, "--render", "rainbow"], ["--render", "rainbow", "vorticity"]),
    ([DAMBREAK, "--fast"], ["unrecognized", "--fast"]),
    ([], ["scene", "required"]),
])
def test_bad_flags_are_one_line_and_exit_2(argv, words, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main.main(argv)
    assert exit_info.value.code == 2
    line = _error_line(capsys)
    for word in words:
        assert word in line, line


def test_bad_scene_names_file_field_and_expectation(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: broken\ngrid: {nx: 128, ny: 64}\nratio: 5000\n")
    assert main.main([str(bad), "--headless"]) == 2
    line = _error_line(capsys)
    assert "bad.yaml" in line and "ratio" in line and "1000" in line, line
    assert main.main([str(tmp_path / "missing.yaml"), "--headless"]) == 2
    assert "missing.yaml" in _error_line(capsys)


@pytest.mark.parametrize("flag, target, words", [
    ("--stats-json", "{tmp}/no/such/dir/out.jsonl", ["writable file path", "No such file or directory"]),
    ("--stats-json", "{tmp}", ["writable file path", "a directory"]),
    ("--stats-json", "/proc/version", ["writable file path", "Invalid argument"]),
    ("--stats-json", "/dev/full", ["a device, FIFO or socket"]),
    ("--stats-json", "/proc/stats.jsonl", ["writable file path"]),  # a read-only place, even for root
    ("--record", "{tmp}/no/such/dir/out.mp4", ["ending in .mp4 or .gif", "No such file"]),
    ("--record", "{tmp}/out.xyz", ["ending in .mp4 or .gif"]),
    ("--record", "{tmp}/out.avi", ["ending in .mp4 or .gif"]),
    ("--record", "{tmp}/out", ["ending in .mp4 or .gif"]),
    ("--record", "/proc/out.mp4", ["ending in .mp4 or .gif"]),
    ("--screenshot", "{tmp}/out.jpg", ["ending in .png"]),
    ("--screenshot", "/proc/out.png", ["ending in .png"]),
    ("--dump-systems", "{tmp}/file", ["writable directory", "a file"]),
    ("--dump-systems", "/dev/null", ["writable directory", "a device"]),
    ("--dump-systems", "/proc/dumps", ["writable directory"]),
    ("--dump-fields", "{tmp}/file", ["writable directory", "a file"]),
    ("--dump-fields", "/dev/null", ["writable directory", "a device"]),
    ("--dump-fields", "/proc/fields", ["writable directory"]),
])
def test_unusable_output_is_refused_before_the_run(flag, target, words, tmp_path, capsys, nothing_is_built):
    (tmp_path / "file").write_text("keep me")
    target = target.format(tmp=tmp_path)
    assert main.main([DAMBREAK, "--headless", flag, target]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {flag}: expected") and repr(target) in line, line
    for word in words:
        assert word in line, line
    assert (tmp_path / "file").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the checks leave nothing behind


def test_scene_problems_come_before_the_memory_check_and_taichi(tmp_path, capsys, monkeypatch):
    import sim.memory
    monkeypatch.setattr(sim.memory, "available", lambda: (10 ** 9, "a test's limit"))
    assert main.main([DAMBREAK, "--headless", "--grid", "512x512"]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: grid 512x512 with solver mgpcg needs about ") and "GB" in line, line
    assert "but 1.00 GB is available (a test's limit)" in line, line


def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present; the error path is for machines without one")
    assert main.main([DAMBREAK, "--headless", "--device", "cuda"]) == 2
    assert "--device cpu" in _error_line(capsys)


@pytest.mark.slow
def test_headless_run_reports_each_frame_and_a_summary(tmp_path):
    stats = tmp_path / "stats.jsonl"
    run = subprocess.run([sys.executable, str(ROOT / "main.py"), DAMBREAK, "--headless", "--frames", "4",
                          "--grid", "32x16", "--ratio", "1000", "--stats-json", str(stats)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    frames = [json.loads(line) for line in stats.read_text().splitlines()]
    assert [f["frame"] for f in frames] == [1, 2, 3, 4]
    for f in frames:
        assert f["converged"] and f["residual"] <= 1e-6 and f["solver"] == "mgpcg" and not f["fell_back"]
        parts = f["ms_advect"] + f["ms_assemble"] + f["ms_inference"] + f["ms_pcg"] + f["ms_project"]
        assert 0 < parts <= f["ms_total"] * 1.01
    out = run.stdout
    assert "4 frames of dam break at 32x16 (N=512), ratio 1000, solver mgpcg" in out
    for word in ("median", "advect", "assemble", "project", "inference", "pcg", "iterations", "fps"):
        assert word in out
    assert out.count("frame ") >= 4  # a progress line per frame


@pytest.mark.slow
def test_bench_writes_table_and_plot(tmp_path):
    run = subprocess.run([sys.executable, "-m", "precond.bench", "--sizes", "1024", "--ratios", "1000",
                          "--methods", "jacobi", "mgpcg", "--compiled", "--repeats", "1", "--frame", "3",
                          "--plot-at", "1024", "1000", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(open(tmp_path / "bench.csv")))
    assert {r["method"] for r in rows} == {"jacobi", "mgpcg", "pyamg-sa"}
    assert all(r["converged"] == "True" and int(r["iterations"]) > 0 for r in rows)
    its = {r["method"]: int(r["iterations"]) for r in rows}
    assert its["mgpcg"] < its["jacobi"]
    assert (tmp_path / "convergence.png").stat().st_size > 10_000


def test_bench_interleaves_the_solvers_and_takes_medians():
    """Timings are side by side: each round runs every solver once, so a slow spell hits all alike."""
    from precond.bench import interleaved
    order: list[str] = []

    def fake(name: str, times: list[float]):
        it = iter(times)
        return lambda: order.append(name) or dict(iterations=3, setup_ms=1.0, solve_ms=next(it))

    out = interleaved({"a": fake("a", [5.0, 1.0, 3.0]), "b": fake("b", [2.0, 9.0, 4.0])}, 3)
    assert order == ["a", "b", "a", "b", "a", "b"]
    assert out["a"]["solve_ms"] == 3.0 and out["b"]["solve_ms"] == 4.0 and out["a"]["iterations"] == 3


def test_a_write_that_fails_mid_run_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    from app.preflight import OutputError
    from app.report import RunReport
    real = RunReport.on_frame

    def full_disk(self, stats):
        if stats.frame == 2:
            raise OutputError("--stats-json: cannot write 'x' (No space left on device)")
        real(self, stats)
    monkeypatch.setattr(RunReport, "on_frame", full_disk)
    assert main.main([DAMBREAK, "--headless", "--frames", "3", "--grid", "32x16", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == "error: --stats-json: cannot write 'x' (No space left on device)"
    assert "1 frames of dam break" in captured.out  # the summary of what ran


def test_window_without_display_says_so_before_building_anything(monkeypatch, capsys, nothing_is_built):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main.main([DAMBREAK]) == 2
    line = _error_line(capsys)
    assert "--headless" in line and "xvfb-run" in line


@pytest.mark.parametrize("flag", ["--dump-systems", "--dump-fields"])
def test_a_dump_without_headless_is_refused_before_the_run(flag, tmp_path, capsys, nothing_is_built):
    assert main.main([DAMBREAK, flag, str(tmp_path / "out")]) == 2
    line = _error_line(capsys)
    assert line == f"error: {flag}: expected a headless run (add --headless), got a window run", line
    assert not (tmp_path / "out").exists()


def test_dump_fields_writes_the_chosen_frames_with_their_fields_and_time(tmp_path, capsys):
    out, stats = tmp_path / "fields", tmp_path / "stats.jsonl"
    assert main.main([DAMBREAK, "--headless", "--frames", "5", "--grid", "32x16", "--quiet", "--dump-fields",
                      str(out), "--dump-every", "2", "--stats-json", str(stats)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["fields0000000.npz", "fields0000002.npz", "fields0000004.npz"]
    frames = {f["frame"]: f for f in map(json.loads, stats.read_text().splitlines())}
    for name in names:
        with np.load(out / name) as z:
            assert set(z.files) == {"phi", "u", "v", "pressure", "rho", "solid", "time", "frame", "h", "ratio", "gravity"}
            for key in ("phi", "u", "v", "pressure", "rho"):
                assert z[key].shape == (32, 16) and np.isfinite(z[key]).all(), key
            frame, ratio = int(z["frame"]), float(z["ratio"])
            assert ratio == 1000.0 and float(z["h"]) == 1 / 16 and float(z["gravity"]) == -9.81
            water = (z["rho"] - 1.0) / (ratio - 1.0)  # rho = w ratio + (1 - w): the cells' water fractions
            if frame == 0:
                assert float(z["time"]) == 0.0 and np.abs(z["u"]).max() == 0.0
                assert water.mean() == pytest.approx(0.2 * 0.6 * 32 / 16 / 2, rel=0.05)  # the 0.4 x 0.6 column
            else:
                assert float(z["time"]) == pytest.approx(frames[frame]["time"], rel=1e-12)
                assert water.mean() == pytest.approx(frames[frame]["volume"], abs=1e-5)
                assert np.abs(z["v"]).max() > 0.0  # the column is falling


def test_dumped_fields_are_the_simulations_own(tmp_path):
    from app.headless import run_headless
    from app.report import RunReport
    from precond import METHODS
    from sim.scene import load_scene
    from sim.simulation import Simulation
    scene = load_scene(DAMBREAK, methods=METHODS).with_overrides(methods=METHODS, grid=(32, 16))
    sim = Simulation.from_scene(scene)
    report = RunReport(sim, fields_dir=str(tmp_path), quiet=True)
    run_headless(sim, 3, on_frame=report.on_frame)
    fields = sim.fields()
    with np.load(tmp_path / "fields0000003.npz") as z:
        for key in ("phi", "u", "v", "pressure", "rho"):
            np.testing.assert_array_equal(z[key], fields[key], err_msg=key)
        assert float(z["time"]) == sim.time and int(z["frame"]) == 3
