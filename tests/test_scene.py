"""Scene files: the shipped scenes load, and every kind of bad file fails with one line naming file and field."""
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from precond import METHODS
from sim import limits
from sim.limits import Range
from sim.scene import Box, Circle, HalfPlane, Scene, SceneError
from sim.scene import load_scene as _load_scene
from sim.scene import parse_scene as _parse_scene

ROOT = Path(__file__).resolve().parent.parent
SCENES = sorted((ROOT / "scenes").glob("*.yaml"))
load_scene = partial(_load_scene, methods=METHODS)
parse_scene = partial(_parse_scene, methods=METHODS)
GOOD = """\
name: test
grid: {nx: 32, ny: 16}
ratio: 100
shapes:
  - {type: box, min: [0, 0], max: [0.5, 0.5]}
  - {type: circle, center: [1.0, 0.7], radius: 0.1, phase: water, velocity: [0, -1]}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scene.yaml"
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(SceneError) as info:
        load_scene(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    return message


def test_shipped_scenes_load_and_differ():
    assert {p.stem for p in SCENES} >= {"dambreak", "drop", "bubbles", "sloshing"}
    scenes = [load_scene(p) for p in SCENES]
    for scene in scenes:
        assert isinstance(scene, Scene) and scene.shapes and scene.description
        assert 1 <= scene.ratio <= 1000
    assert len({(s.grid, s.boundary.top, s.ratio, len(s.shapes)) for s in scenes}) == len(scenes)
    bubbles = load_scene(SCENES[0].parent / "bubbles.yaml")
    assert bubbles.boundary.top == "wall" and bubbles.ratio == 1000
    assert any(shape.phase == "air" for shape in bubbles.shapes)


def test_defaults_and_number_forms(tmp_path):
    scene = load_scene(_write(tmp_path, GOOD + "solver: {tol: 1e-8}\ntime: {frame_dt: 1/30}\n"))
    assert scene.name == "test" and (scene.grid.nx, scene.grid.ny) == (32, 16) and scene.width == 2.0
    assert scene.solver.tol == 1e-8 and scene.solver.method == "mgpcg" and scene.solver.maxiter is None
    assert scene.time.frame_dt == pytest.approx(1 / 30) and scene.time.cfl == 3.0 and scene.time.max_substeps == 8
    assert scene.gravity == -9.81 and scene.boundary.top == "wall" and scene.volume_correction is True
    assert scene.transport == "semi_lagrangian"
    assert load_scene(_write(tmp_path, GOOD + "transport: apic\n")).transport == "apic"
    box, circle = scene.shapes
    assert isinstance(box, Box) and box.phase == "water" and box.velocity is None
    assert isinstance(circle, Circle) and circle.velocity == (0.0, -1.0)
    plane = parse_scene({"shapes": [{"type": "halfplane", "point": [0, 0.3], "normal": [0, 2]}]}, "x").shapes[0]
    assert isinstance(plane, HalfPlane) and plane.sdf(0.5, 0.1) == pytest.approx(-0.2)


@pytest.mark.parametrize("text, field, expected", [
    (GOOD + "gridd: {nx: 3}\n", "gridd", "unknown field"),
    ("grid: {nx: 32, nz: 16}\n", "grid.nz", "unknown field; expected one of nx, ny"),
    ("shapes:\n  - {type: box, min: [0, 0], max: [1, 1], colour: red}\n", "shapes[0].colour", "unknown field"),
])
def test_unknown_field(tmp_path, text, field, expected):
    message = _error(tmp_path, text)
    assert f": {field}: {expected}" in message


@pytest.mark.parametrize("text, field, expected", [
    ("grid: {nx: abc, ny: 16}\n", "grid.nx", "expected an integer from 8 to 2048, got 'abc'"),
    ("grid: {nx: 32.5}\n", "grid.nx", "expected an integer from 8 to 2048, got 32.5"),
    ("ratio: [1, 2]\n", "ratio", "expected a number from 1 to 1000, got [1, 2]"),
    ("ratio: true\n", "ratio", "expected a number from 1 to 1000, got True"),
    ("boundary: {top: lid}\n", "boundary.top", "expected one of wall, open, got 'lid'"),
    ("shapes: {type: box}\n", "shapes", "expected a list of shapes, got {'type': 'box'}"),
    ("shapes:\n  - {type: star, center: [0, 0]}\n", "shapes[0].type", "expected one of box, circle, halfplane"),
    ("shapes:\n  - {type: circle, center: 0.5, radius: 0.1}\n", "shapes[0].center", "expected a pair [x, y]"),
    ("shapes:\n  - {type: box, min: [0, 0], max: [1, 1], phase: oil}\n", "shapes[0].phase",
     "expected one of water, air, solid, got 'oil'"),
    ("shapes:\n  - {type: polygon, points: [[0, 0], [1, 1], [2, 2]], phase: solid}\n", "shapes[0].points",
     "expected corners that enclose an area (not all on one line)"),
    ("shapes:\n  - {type: polygon, points: [[0, 0], [1, 0]]}\n", "shapes[0].points",
     "expected a list of 3 to 256 corners [x, y], got [[0, 0], [1, 0]]"),
    ("shapes:\n  - {type: polygon, points: [[0, 0], [1, 0], [1, x]]}\n", "shapes[0].points[2][1]",
     "expected a number from -100 to 100, got 'x'"),
    ("shapes:\n  - {type: box, min: [0, 0], max: [1, 1], phase: solid, velocity: [1, 0]}\n", "shapes[0].velocity",
     "expected no velocity on a solid (a moving solid takes motion)"),
    ("shapes:\n  - {type: box, min: [0, 0], max: [1, 1], motion: free}\n", "shapes[0].motion",
     "expected motion only on a solid (this box is water)"),
    ("shapes:\n  - {type: circle, center: [0, 0], radius: 1, phase: solid, motion: fast}\n", "shapes[0].motion",
     "expected free or a mapping {amplitude: [ax, ay], period: T}, got 'fast'"),
    ("shapes:\n  - {type: circle, center: [0, 0], radius: 1, phase: solid, motion: {amplitude: [1, 0], period: 0}}\n",
     "shapes[0].motion.period", "expected a number above 0 and at most 1000, got 0"),
    ("shapes:\n  - {type: polygon, points: [[0, 0], [1, 0], [0, 1]], phase: solid, motion: free}\n",
     "shapes[0].motion", "unknown field; expected one of type, points, phase, velocity"),
    ("shapes:\n" + "  - {type: circle, center: [0, 0], radius: 1, phase: solid, motion: free}\n" * 9, "shapes",
     "expected at most 8 solids with motion, got '9 of them'"),
    ("solver: {method: magic}\n", "solver.method", "expected one of none, jacobi, ic0, mgpcg"),
    ("volume_correction: maybe\n", "volume_correction", "expected true or false, got 'maybe'"),
    ("transport: flip\n", "transport", "expected one of semi_lagrangian, apic, got 'flip'"),
    ("transport: [apic]\n", "transport", "expected one of semi_lagrangian, apic, got ['apic']"),
    ("name: 3\n", "name", "expected text of at most 1000 characters, got 3"),
])
def test_wrong_type(tmp_path, text, field, expected):
    message = _error(tmp_path, text)
    assert f": {field}: {expected}" in message


@pytest.mark.parametrize("text, field, expected", [
    ("grid: {nx: 4, ny: 16}\n", "grid.nx", "expected an integer from 8 to 2048, got 4"),
    ("grid: {nx: 32, ny: 4096}\n", "grid.ny", "expected an integer from 8 to 2048, got 4096"),
    ("ratio: 5000\n", "ratio", "expected a number from 1 to 1000, got 5000"),
    ("ratio: 0.5\n", "ratio", "expected a number from 1 to 1000, got 0.5"),
    ("gravity: 1e9\n", "gravity", "expected a number from -100 to 100"),
    ("solver: {tol: 0}\n", "solver.tol", "expected a number from 1e-14 to 0.1, got 0"),
    ("solver: {maxiter: 0}\n", "solver.maxiter", "expected an integer from 1 to 1000000, got 0"),
    ("time: {frame_dt: -1}\n", "time.frame_dt", "expected a number above 0 and at most 0.1, got -1"),
    ("time: {max_substeps: 100}\n", "time.max_substeps", "expected an integer from 1 to 64, got 100"),
    ("shapes:\n  - {type: box, min: [0, 0], max: [1, 1]}\n  - {type: circle, center: [0.5, 0.5], radius: -0.1}\n",
     "shapes[1].radius", "expected a number above 0 and at most 100, got -0.1"),
    ("shapes:\n  - {type: box, min: [0.5, 0], max: [0.2, 1]}\n", "shapes[0].max", "expected a corner above and to the right"),
    ("shapes:\n  - {type: circle, center: [0.5, .nan], radius: 0.1}\n", "shapes[0].center[1]",
     "expected a number from -100 to 100"),
    ("shapes:\n  - {type: halfplane, point: [0, 0], normal: [0, 0]}\n", "shapes[0].normal", "expected a nonzero direction [nx, ny], got [0, 0]"),
])
def test_out_of_range(tmp_path, text, field, expected):
    message = _error(tmp_path, text)
    assert f": {field}: {expected}" in message


def test_missing_required_shape_field(tmp_path):
    message = _error(tmp_path, "shapes:\n  - {type: circle, center: [0.5, 0.5]}\n")
    assert ": shapes[0].radius: missing" in message


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(SceneError) as info:
        load_scene(path)
    assert str(info.value).startswith(f"{path}: (file): expected a regular UTF-8 scene file of at most 1,000,000 bytes")
    assert "No such file" in str(info.value)


@pytest.mark.parametrize("text, where", [
    ("grid: {nx: 32, ny: 16\nratio: 3\n", "line "),
    ("name: a\n  ratio: 3\n", "line 2"),
    ("", "(scene): expected a mapping"),
    ("- just\n- a list\n", "(scene): expected a mapping"),
])
def test_bad_yaml(tmp_path, text, where):
    message = _error(tmp_path, text)
    assert where in message


@pytest.mark.parametrize("name, narrow, text, field", [
    ("RATIO", Range(1.0, 50.0), "ratio: 60\n", "ratio"),
    ("TOLERANCE", Range(1e-14, 0.01), "solver: {tol: 0.05}\n", "solver.tol"),
    ("GRID_SIDE", Range(8, 50, integer=True), "grid: {nx: 60}\n", "grid.nx"),
    ("SUBSTEPS", Range(1, 16, integer=True), "time: {max_substeps: 20}\n", "time.max_substeps"),
    ("FRAME_DT", Range(0.0, 0.04, above=True), "time: {frame_dt: 0.05}\n", "time.frame_dt"),
    ("COORDINATE", Range(-50.0, 50.0), "shapes:\n  - {type: circle, center: [0.5, 60], radius: 0.1}\n",
     "shapes[0].center[1]"),
])
def test_scene_ranges_come_from_sim_limits(tmp_path, monkeypatch, name, narrow, text, field):
    """Narrow one limit: the loader follows it, wording included (a literal of its own would not)."""
    load_scene(_write(tmp_path, text))  # valid under the real limits
    monkeypatch.setattr(limits, name, narrow)
    assert f": {field}: expected {narrow.expected()}, got" in _error(tmp_path, text)


def test_reading_a_scene_needs_no_solver_and_no_taichi():
    """The scene names a method; the solver registry (the caller) validates it."""
    code = ("import sys; import sim.scene; "
            "print(sorted(m for m in ('precond', 'torch', 'scipy', 'taichi') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_method_names_come_from_the_caller(tmp_path):
    path = _write(tmp_path, GOOD + "solver: {method: mine}\n")
    assert _load_scene(path, methods=("mine",)).solver.method == "mine"
    with pytest.raises(SceneError, match=r": solver\.method: expected one of mgpcg, got 'mine'$"):
        _load_scene(path, methods=("mgpcg",))


def test_overrides():
    scene = parse_scene({"grid": {"nx": 32, "ny": 16}}, "x")
    out = scene.with_overrides(methods=METHODS, grid=(64, 64), ratio=10, solver="jacobi", tol=1e-8, maxiter=50)
    assert (out.grid.nx, out.grid.ny, out.ratio) == (64, 64, 10.0)
    assert (out.solver.method, out.solver.tol, out.solver.maxiter) == ("jacobi", 1e-8, 50)
    assert scene.with_overrides(methods=METHODS) == scene
    for kwargs, field in ((dict(ratio=2000), "--ratio"), (dict(grid=(4, 16)), "--grid nx"),
                          (dict(solver="magic"), "--solver"), (dict(tol=-1.0), "--tol")):
        with pytest.raises(SceneError, match=f"^command line: {field}: expected"):
            scene.with_overrides(methods=METHODS, **kwargs)


# ---------------------------------------------------------------------- hostile files: one line each, fast
def _alias_bomb(levels: int) -> str:
    """Ten references per level to the level below: 10 ** levels values once expanded, a few lines of text.
    The levels sit in the description's anchors (a text field), the bomb goes off in `name`."""
    lines = ["description: [&l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  , &l{k} [" + ", ".join([f"*l{k - 1}"] * 10) + "]" for k in range(1, levels)]
    return "\n".join(lines) + f"]\nname: *l{levels - 1}\n"


@pytest.mark.parametrize("text, words", [
    ("ratio: 10\nratio: 20\n", ["line 2, column 1", "each key once", "'ratio' again (first on line 1)"]),
    ("grid: {nx: 32, nx: 16}\n", ["line 1, column 16", "'nx' again"]),
    ("shapes: " + "[" * 5000 + "]" * 5000 + "\n", ["at most 32 levels of nesting"]),
    ("".join("  " * k + f"k{k}:\n" for k in range(100)), ["at most 32 levels of nesting"]),
    (_alias_bomb(12), ["at most 100000 values with aliases expanded", "alias bomb"]),
    ("shapes: &a [*a]\n", ["recursive alias"]),
    ("grid: {nx: " + "9" * 5000 + "}\n", ["line 1, column 12", "expected a valid int", "4300 digits"]),
    ("name: 2001-13-45\n", ["expected a valid timestamp", "month must be in 1..12"]),
    ("ratio: " + "9" * 400 + "\n", ["ratio: expected a number from 1 to 1000"]),
    ("ratio: .nan\n", ["ratio: expected a number from 1 to 1000, got nan"]),
    ("gravity: -.inf\n", ["gravity: expected a number from -100 to 100, got -inf"]),
    ("name: " + "n" * 2000 + "\n", ["name: expected text of at most 1000 characters", "'" + "n" * 17 + "..."]),
    ("name: a\x00b\n", ["unacceptable character #x0000"]),
    ("name: !!python/object/apply:os.system [echo]\n", ["could not determine a constructor"]),
    ("name: a\n---\nname: b\n", ["another document"]),
])
def test_hostile_documents_are_one_line(tmp_path, text, words):
    message = _error(tmp_path, text)
    assert len(message) < 300, message
    for word in words:
        assert word in message, message


def test_an_alias_bomb_in_a_text_field_is_refused_before_it_is_written_out(tmp_path, monkeypatch):
    """Within the node bound an alias may still expand to a large value: the message quotes a bounded part."""
    monkeypatch.setattr(limits, "SCENE_NODES", 10 ** 9)
    message = _error(tmp_path, _alias_bomb(8))  # 10 ** 8 strings if written out in full
    assert "name: expected text" in message and len(message) < 300


@pytest.mark.parametrize("content, words", [
    ("name: x\n".encode("utf-16"), ["not UTF-8 (at byte 0)"]),
    (b"#" * (limits.SCENE_BYTES + 1), ["at most 1,000,000 bytes, got a larger file"]),
    (b"\x89PNG\r\n\x1a\n\x00\x00", ["not UTF-8"]),
])
def test_files_that_are_not_scene_text(tmp_path, content, words):
    path = tmp_path / "scene.yaml"
    path.write_bytes(content)
    with pytest.raises(SceneError) as info:
        load_scene(path)
    for word in words:
        assert word in str(info.value)


def test_a_byte_order_mark_is_fine(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffname: bom\n".encode("utf-8"))
    assert load_scene(path).name == "bom"


@pytest.mark.parametrize("make, got", [
    (lambda tmp: Path("/dev/zero"), "a device, FIFO or socket"),  # would be read forever
    (lambda tmp: tmp, "a directory"),
    (lambda tmp: (os.mkfifo(tmp / "fifo"), tmp / "fifo")[1], "a device, FIFO or socket"),  # would block
])
def test_only_regular_files_are_read(tmp_path, make, got):
    path = make(tmp_path)
    with pytest.raises(SceneError) as info:
        load_scene(path)
    assert str(info.value) == (f"{path}: (file): expected a regular UTF-8 scene file of at most 1,000,000 bytes, "
                               f"got {got}")
