"""The viewer side: the GUI state driving a Simulation, off-screen rendering, recording, and the real window under Xvfb."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
import pytest

import precond
from app.colormaps import LUT_PATH, lut_image
from app.recorder import Recorder, RecordingError, fit, save_png
from app.render import RENDER_MODES, Renderer, create_offscreen_context, picture_size
from app.report import RunReport
from app.state import N_CHOICES, ViewerState, grid_for, view_to_domain
from precond.dumps import load_system
from sim.scene import load_scene
from sim.simulation import Simulation

ROOT = Path(__file__).resolve().parent.parent
DAMBREAK = ROOT / "scenes" / "dambreak.yaml"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------ helpers
def two_clusters(picture: np.ndarray) -> tuple[float, float, float]:
    """2-means on the pixel colours: (share of the smaller cluster, distance between the centres, colour std)."""
    px = picture.reshape(-1, 3).astype(np.float64)[::7]
    lum = px.mean(axis=1)
    centres = np.stack([px[lum <= np.percentile(lum, 10)].mean(0), px[lum >= np.percentile(lum, 90)].mean(0)])
    for _ in range(20):
        label = np.linalg.norm(px[:, None] - centres[None], axis=2).argmin(axis=1)
        centres = np.stack([px[label == k].mean(0) if (label == k).any() else centres[k] for k in range(2)])
    share = min((label == 0).mean(), (label == 1).mean())
    return float(share), float(np.linalg.norm(centres[0] - centres[1])), float(px.std(axis=0).mean())


def assert_water_and_air(picture: np.ndarray) -> None:
    share, distance, std = two_clusters(picture)
    assert std > 10.0, f"picture is nearly one colour (std {std:.1f})"
    assert share > 0.03 and distance > 60.0, f"no water/air clusters: smaller share {share:.3f}, distance {distance:.0f}"


def video_info(path: Path) -> tuple[int, tuple[int, int]]:
    reader = iio2.get_reader(str(path), format="FFMPEG")
    try:
        return reader.count_frames(), tuple(reader.get_meta_data()["size"])
    finally:
        reader.close()


@pytest.fixture(scope="module")
def sim() -> Simulation:
    return Simulation.from_scene(load_scene(DAMBREAK, methods=precond.METHODS))


@pytest.fixture(scope="module")
def gl():
    try:
        ctx = create_offscreen_context()
    except RuntimeError as err:
        pytest.skip(f"no off-screen OpenGL (install libegl1 and Mesa: libegl-mesa0 libgl1-mesa-dri): {err}")
    yield ctx
    ctx.release()


def finite_fields(sim: Simulation) -> None:
    fields = sim.fields()
    assert set(fields) >= {"phi", "rho", "pressure", "speed", "vorticity", "u", "v"}
    for name, values in fields.items():
        assert values.shape == (sim.nx, sim.ny), name
        assert np.isfinite(values).all(), name


# ------------------------------------------------------------------ pure pieces
def test_grid_choices_keep_aspect_and_range():
    assert N_CHOICES[0] == 1024 and N_CHOICES[-1] == 262_144
    for n in N_CHOICES:
        nx, ny = grid_for(n, 2.0)
        assert abs(nx / ny - 2.0) < 0.05 and abs(nx * ny / n - 1.0) < 0.05
    assert grid_for(8192, 2.0) == (128, 64)
    assert grid_for(262_144, 1.0) == (512, 512)


def test_view_to_domain_maps_corners():
    assert view_to_domain((10, 20), (10, 20), (200, 100), 2.0) == (0.0, 1.0)  # top-left pixel: x 0, y 1
    x, y = view_to_domain((210, 120), (10, 20), (200, 100), 2.0)
    assert (x, y) == (2.0, 0.0)


def test_colormap_asset_matches_generator():
    assert np.array_equal(iio.imread(LUT_PATH)[..., :3], lut_image())


def test_picture_size_even_with_aspect():
    for nx, ny in ((128, 64), (45, 23), (64, 64), (100, 37)):
        w, h = picture_size(nx, ny, 301)
        assert w % 2 == 0 and h % 2 == 0 and abs(w / h - nx / ny) < 0.02


def test_fit_letterboxes_other_sizes():
    pic = np.full((30, 30, 3), 200, np.uint8)
    out = fit(pic, (80, 40))
    assert out.shape == (40, 80, 3) and out[:, 20:60].min() == 200 and out[:, :10].max() == 0


# ------------------------------------------------------------------ the state drives a Simulation without a window
def test_state_pause_step_reset(sim):
    state = ViewerState.from_simulation(sim)
    state.running = False
    frame = sim.frame
    assert state.advance(sim) is None and sim.frame == frame
    state.step_requested = True
    stats = state.advance(sim)
    assert stats is not None and sim.frame == frame + 1 and not state.step_requested
    assert state.advance(sim) is None and sim.frame == frame + 1
    state.reset_requested = True
    sim = state.apply(sim)
    assert sim.frame == 0 and not state.reset_requested
    assert state.history.tick == 1 and len(state.history.traces[state.solver]) == 1


@pytest.mark.slow
def test_state_says_a_compile_is_coming_before_the_step_that_compiles(sim):
    state = ViewerState.from_simulation(sim)
    sim.set_solver(precond.Solver("jacobi", compiled=True, chunk=3))
    frame = sim.frame
    assert state.advance(sim) is None and sim.frame == frame           # this frame only draws the notice
    assert state.compiling.startswith(f"compiling the jacobi solve for {sim.nx}x{sim.ny}")
    stats = state.advance(sim)                                          # this one compiles and steps
    assert stats is not None and sim.frame == frame + 1 and state.compiling == ""
    assert state.advance(sim) is not None and state.compiling == ""    # compiled: no notice again
    sim.set_solver(precond.Solver(sim.scene.solver.method))


def test_state_changes_mid_run_keep_simulation_valid(sim):
    state = ViewerState.from_simulation(sim)
    for _ in range(2):
        state.advance(sim)
    volume = sim.water_volume()

    state.set_cells(2048)  # N change keeps the scene's 2:1 aspect
    sim = state.apply(sim)
    assert (sim.nx, sim.ny) == state.grid == (64, 32)
    assert state.advance(sim) is not None
    finite_fields(sim)
    assert abs(sim.water_volume() - volume) < 0.1 * volume

    state.ratio = 10.0
    sim = state.apply(sim)
    assert sim.ratio == 10.0
    assert state.advance(sim).iterations > 0
    finite_fields(sim)

    state.solver, state.tol = "jacobi", 1e-5
    sim = state.apply(sim)
    assert sim.solver.method == "jacobi" and sim.solver.tol == 1e-5
    stats = state.advance(sim)
    assert stats is not None and ("jacobi" in stats.solver or stats.fell_back)
    assert set(state.history.traces) == {"mgpcg", "jacobi"}
    assert len(state.history.traces["jacobi"].array("ms_total")) == 1

    state.max_substeps = 2
    sim = state.apply(sim)
    assert sim.scene.time.max_substeps == 2 and state.advance(sim).substeps <= 2

    before = sim.water_volume()
    state.pour(sim, 1.0, 0.8)
    assert sim.water_volume() > before
    state.stir(sim, 1.0, 0.2, 0.01, 0.0)
    state.pour(sim, 5.0, 0.5)  # outside the domain: ignored
    assert state.advance(sim) is not None
    finite_fields(sim)

    state.set_cells(8192)
    state.ratio, state.solver, state.tol, state.max_substeps = 1000.0, "mgpcg", 1e-6, 8
    sim = state.apply(sim)
    assert (sim.nx, sim.ny) == (128, 64)


def test_state_switches_scene_and_reports_bad_ones(sim, tmp_path):
    square = tmp_path / "square.yaml"
    square.write_text("name: square\ngrid: {nx: 32, ny: 32}\nratio: 100\n"
                      "shapes:\n  - {type: circle, center: [0.5, 0.6], radius: 0.2}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {nx: 3}\n")
    state = ViewerState.from_simulation(sim)
    state.solver = "jacobi"
    state.scene_path = str(bad)
    same = state.apply(sim)
    assert same is sim and "grid.nx" in state.error and state.scene_path == sim.scene.source

    state.scene_path = str(square)
    new = state.apply(sim)
    assert new is not sim and (new.nx, new.ny) == state.grid == (32, 32) and state.aspect == 1.0
    assert new.ratio == state.ratio == 100.0 and new.solver.method == "jacobi" and not state.error
    assert state.advance(new) is not None
    finite_fields(new)


# ------------------------------------------------------------------ off-screen rendering, recording, screenshots
def test_every_render_mode_draws_a_picture(sim, gl):
    renderer = Renderer(gl)
    fields = sim.fields()
    target = None
    for mode in RENDER_MODES:
        scale = renderer.upload(fields, mode)
        picture, target = renderer.picture((256, 128), target)
        assert picture.shape == (128, 256, 3) and scale.hi > scale.lo
        assert picture.reshape(-1, 3).std(axis=0).mean() > 5.0, mode
    renderer.upload(fields, "phase")
    picture, _ = renderer.picture((256, 128), target)
    assert_water_and_air(picture)


def test_solids_are_drawn_in_their_colour_in_every_render_mode(gl):
    scene = load_scene(ROOT / "scenes" / "obstacle.yaml", methods=precond.METHODS)
    obstacle = Simulation.from_scene(scene.with_overrides(methods=precond.METHODS, grid=(64, 32)))
    obstacle.step()
    renderer = Renderer(gl)
    fields = obstacle.fields()
    target = None
    for mode in RENDER_MODES:
        renderer.upload(fields, mode)
        picture, target = renderer.picture((256, 128), target)
        block = picture[128 - 12, int(1.08 / 2 * 256)].astype(int)  # inside the block: x 1.0 to 1.16, y 0 to 0.2
        assert np.abs(block - (107, 92, 77)).max() < 20, mode
        pillar = picture[128 - int(0.42 * 128), int(1.5 / 2 * 256)].astype(int)
        assert np.abs(pillar - (107, 92, 77)).max() < 20, mode


def test_headless_records_and_screenshots(sim, gl, tmp_path):
    from app.headless import run_headless
    seen = []
    stats = run_headless(sim, 6, record=str(tmp_path / "run.mp4"), screenshot=str(tmp_path / "shot.png"),
                         on_frame=seen.append)
    assert len(stats) == 6 and seen == stats
    assert video_info(tmp_path / "run.mp4") == (6, picture_size(sim.nx, sim.ny))
    shot = iio.imread(tmp_path / "shot.png")
    assert shot.shape == (*picture_size(sim.nx, sim.ny)[::-1], 3)
    assert_water_and_air(shot)


def test_unwritable_targets_end_the_headless_run_with_one_clear_error(sim, gl, tmp_path):
    from app.headless import run_headless
    from app.preflight import OutputError
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(RecordingError, match=r"cannot write recording .*dir/x\.mp4.*No such file or directory"):
        Recorder(missing / "x.mp4", (64, 32))
    with pytest.raises(RecordingError, match=r"expected a name ending in \.mp4 or \.gif"):
        Recorder(tmp_path / "x.avi", (64, 32))
    with pytest.raises(RecordingError, match="Is a directory"):
        save_png(tmp_path, np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(OutputError, match=r"^cannot write recording .*No such file or directory$"):
        run_headless(sim, 2, record=str(missing / "x.mp4"))
    frame = sim.frame
    with pytest.raises(OutputError, match=r"^cannot write screenshot .*x\.png"):
        run_headless(sim, 2, screenshot=str(missing / "x.png"))
    assert sim.frame == frame + 2  # the screenshot comes after the last frame


def test_record_fps_sets_the_file_rate_at_simulation_speed(sim, gl, tmp_path):
    from app.headless import run_headless
    run_headless(sim, 24, record=str(tmp_path / "half.mp4"), record_fps=30.0, height=64)
    reader = iio2.get_reader(str(tmp_path / "half.mp4"), format="FFMPEG")
    try:
        fps, frames = reader.get_meta_data()["fps"], reader.count_frames()
    finally:
        reader.close()
    assert fps == 30.0 and 11 <= frames <= 15  # 24 frames of 1/60 s: 0.4 s, 12 frames at 30 fps (ffmpeg rounds)


def test_a_stop_request_ends_the_headless_run_between_frames(sim):
    from app.headless import run_headless
    asked = []
    done = run_headless(sim, 100, stop=lambda: len(asked) >= 3, on_frame=asked.append)
    assert len(done) == 3


def test_headless_report_dumps_the_systems_the_frames_solved(sim, tmp_path):
    from app.headless import run_headless
    solved = []
    report = RunReport(sim, dump_dir=str(tmp_path), dump_every=2, quiet=True)
    run_headless(sim, 4, on_frame=report.on_frame,
                 on_system=lambda system, b: (solved.append((sim.frame, system, b)), report.on_system(system, b)))
    report.close()
    first = solved[0][0]
    assert [frame for frame, _, _ in solved] == [first, first + 1, first + 2, first + 3]
    dumped = {int(path.stem[5:]): path for path in tmp_path.glob("frame*.npz")}
    assert sorted(dumped) == [frame for frame, _, _ in solved if frame % 2 == 0]
    for frame, system, b in solved:
        if frame % 2:
            continue
        again, rhs, meta = load_system(dumped[frame])
        for name in ("diag", "cx", "cy"):
            assert np.array_equal(getattr(again, name).numpy(), getattr(system, name).numpy())
        assert np.array_equal(rhs.numpy(), b.numpy())
        assert meta == dict(frame=frame, nx=sim.nx, ny=sim.ny, ratio=sim.ratio, scene=sim.scene.name)
    assert [s.frame for s in report.frames] == [frame for frame, _, _ in solved]


def test_report_says_each_warning_once_and_starts_the_volume_at_frame_0(sim, tmp_path):
    from dataclasses import replace as copy
    from io import StringIO
    out = StringIO()
    report = RunReport(sim, quiet=False, out=out)
    start = sim.water_volume()
    base = sim.step()
    note = "htp -> mgpcg: checkpoint assets/htp.pt is missing"
    for k in range(3):
        report.on_frame(copy(base, frame=k + 1, fell_back=True, note=note, over_cfl=True, cfl=190000.0,
                             volume=start * 1.4))
    lines = out.getvalue().splitlines()
    assert note in lines[0] and "max_substeps" in lines[0] and "CFL 1.9e+05 > 10" in lines[0]
    assert all(note not in line and "FELL BACK" in line and "CFL 1.9e+05 > 10" in line for line in lines[1:])
    summary = report.summary()
    assert summary.count(note) == 1 and "CFL above 10" in summary and "in 3 frames, up to 1.9e+05" in summary
    assert f"water volume {start:.4f} (start) -> {start * 1.4:.4f}" in summary


class _FullDisk:
    """A stats file that takes `room` more bytes, then fails like a full disk."""

    def __init__(self, path, room):
        self.file, self.room = open(path, "wb", buffering=0), room

    def write(self, data):
        if self.room <= 0:
            raise OSError(28, "No space left on device")
        n = min(len(data), self.room)
        self.room -= n
        return self.file.write(bytes(data[:n]))

    def truncate(self, size):
        return self.file.truncate(size)

    def close(self):
        self.file.close()


def test_a_full_disk_keeps_the_stats_file_whole_lines(sim, tmp_path):
    import json
    from app.preflight import OutputError
    path = tmp_path / "stats.jsonl"
    report = RunReport(sim, stats_json=str(path), quiet=True)
    stats = sim.step()
    line = len(json.dumps(__import__("dataclasses").asdict(stats))) + 1
    report.json_file = _FullDisk(path, 2 * line + line // 2)
    report.on_frame(stats)
    report.on_frame(stats)
    with pytest.raises(OutputError, match=r"^--stats-json: cannot write .*No space left on device.*2 frames before"):
        report.on_frame(stats)
    report.close()
    assert [json.loads(text)["frame"] for text in path.read_text().splitlines()] == [stats.frame] * 2


def test_a_full_disk_leaves_no_partial_dump(sim, tmp_path, monkeypatch):
    import app.report
    from app.preflight import OutputError
    report = RunReport(sim, dump_dir=str(tmp_path), quiet=True)
    kept = []
    sim.step(on_system=lambda system, b: (kept.append((system, b)), report.on_system(system, b)))
    real = app.report.save_system

    def full(path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(app.report, "save_system", full)
    with pytest.raises(OutputError, match=r"^--dump-systems: cannot write .*\(No space left on device\); the dumps"):
        sim.step(on_system=report.on_system)
    monkeypatch.setattr(app.report, "save_system", real)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"frame{sim.frame - 1:07d}.npz"]
    load_system(tmp_path / names[0])


def test_the_n_slider_refuses_a_grid_that_does_not_fit_and_the_run_goes_on(sim, monkeypatch):
    import sim.memory as memory
    state = ViewerState.from_simulation(sim)
    grid = (sim.nx, sim.ny)
    need = memory.estimate(*grid, sim.solver.method, process=False).total
    monkeypatch.setattr(memory, "available", lambda: (need + 10 ** 6, "a test's limit"))
    state.set_cells(262_144)
    same = state.apply(sim)
    assert same is sim and (sim.nx, sim.ny) == state.grid == grid
    assert f"grid 724x362 with solver {sim.solver.method} needs about" in state.error and "a test's limit" in state.error
    assert state.advance(sim) is not None
    finite_fields(sim)


def test_run_window_without_display_suggests_headless(sim, monkeypatch, capsys):
    from app.viewer import run_window
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert run_window(sim, frames=1) == 2
    err = capsys.readouterr().err
    assert "--headless" in err and "xvfb-run" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ the real program, in subprocesses
def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def xvfb():
    """A private Xvfb on a free display number (-displayfd picks it); yields DISPLAY."""
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb): the window tests need a display")
    proc = subprocess.Popen([exe, "-displayfd", "1", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = proc.stdout.readline().decode().strip()
    if not line.isdigit():
        proc.kill()
        pytest.skip(f"Xvfb did not start (it printed {line!r})")
    yield f":{line}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.slow
def test_window_screenshot_and_recording(xvfb, tmp_path):
    shot, video = tmp_path / "out.png", tmp_path / "out.mp4"
    run = subprocess.run([sys.executable, str(ROOT / "main.py"), str(DAMBREAK), "--frames", "20", "--screenshot",
                          str(shot), "--record", str(video)], cwd=tmp_path, env=_env(DISPLAY=xvfb),
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    picture = iio.imread(shot)
    assert picture.shape == (540, 1080, 3)
    assert_water_and_air(picture)
    assert video_info(video) == (20, (1080, 540))


# The window with its view's left button held at domain point (0.5, 0.5) and the drag tool on: imgui's
# mouse readings are replaced (Xvfb has no pointer to move), everything after them is the viewer's own.
_DRAG_SCRIPT = """
import sys
import app.viewer as viewer
from app.state import LEFT_TOOLS, ViewerState
import precond
from sim.scene import load_scene
from sim.simulation import Simulation
viewer.imgui.is_mouse_down = lambda button: button == viewer.imgui.MouseButton_.left
viewer.imgui.is_item_hovered = lambda *args: True
viewer.view_to_domain = lambda *args: (0.5, 0.5)
make = ViewerState.from_simulation.__func__
def with_drag_tool(cls, sim, mode="phase"):
    state = make(cls, sim, mode)
    state.left_tool = LEFT_TOOLS[1]
    return state
ViewerState.from_simulation = classmethod(with_drag_tool)
sim = Simulation.from_scene(load_scene(sys.argv[1], methods=precond.METHODS))
code = viewer.run_window(sim, frames=10, screenshot=sys.argv[2])
print("bodies", sim.body_centres())
sys.exit(code)
"""


@pytest.mark.slow
def test_the_window_drag_tool_drops_a_solid_disc_under_the_cursor(xvfb, tmp_path):
    shot = tmp_path / "drag.png"
    run = subprocess.run([sys.executable, "-c", _DRAG_SCRIPT, str(DAMBREAK), str(shot)], cwd=tmp_path,
                         env=_env(DISPLAY=xvfb), capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "bodies [(0.5, 0.5)]" in run.stdout
    picture = iio.imread(shot).astype(int)
    h, w, _ = picture.shape
    y, x = int(h * 0.5), int(w * 0.5 / 2.0)  # domain (0.5, 0.5) of the 2-wide dam break
    assert np.abs(picture[y, x] - (107, 92, 77)).max() < 20  # the solids' brown (field.frag's SOLID)


def _interrupted_recording(cmd: list[str], env: dict[str, str], video: Path, ready, cwd: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not ready(proc) and proc.poll() is None:
        assert time.monotonic() < deadline, "the run never got going"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=60)
    return proc


@pytest.mark.slow
def test_sigint_finishes_the_recording_headless(tmp_path):
    video = tmp_path / "int.mp4"
    cmd = [sys.executable, str(ROOT / "main.py"), str(DAMBREAK), "--headless", "--frames", "1000", "--record",
           str(video)]

    def ready(proc: subprocess.Popen) -> bool:
        line = proc.stdout.readline()
        return line.startswith("frame") and int(line.split()[1]) >= 4

    proc = _interrupted_recording(cmd, _env(), video, ready, tmp_path)
    assert proc.returncode == 0
    frames, size = video_info(video)
    assert 4 <= frames < 1000 and size == (1080, 540)


@pytest.mark.slow
def test_sigint_closes_the_window_and_finishes_the_recording(xvfb, tmp_path):
    video = tmp_path / "win.mp4"
    cmd = [sys.executable, str(ROOT / "main.py"), str(DAMBREAK), "--record", str(video)]

    def ready(proc: subprocess.Popen) -> bool:  # ffmpeg writes the file's header once the first frame came in
        time.sleep(0.2)
        return video.exists() and video.stat().st_size > 0

    proc = _interrupted_recording(cmd, _env(DISPLAY=xvfb), video, ready, tmp_path)
    assert proc.returncode == 0, proc.stdout.read()[-2000:]
    frames, size = video_info(video)
    assert frames >= 1 and size == (1080, 540)
