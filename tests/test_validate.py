"""sim.measure's physical readouts on states with known answers, and `python -m sim.validate` end to end at tiny size."""
import math

import numpy as np
import pytest

from sim import measure, validate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _flat(nx, ny, depth):
    h = 1.0 / ny
    y = (np.arange(ny) + 0.5) * h
    phi = np.broadcast_to(y[None, :] - depth, (nx, ny)).copy()
    return {"phi": phi, "u": np.zeros((nx + 1, ny)), "v": np.zeros((nx, ny + 1))}, h


def test_surge_front_is_the_floor_rows_zero_crossing():
    h = 0.1
    x = (np.arange(10) + 0.5) * h
    phi = np.tile((x - 0.43)[:, None], (1, 3))
    assert measure.surge_front(phi, h) == pytest.approx(0.43)
    assert measure.surge_front(np.ones((10, 3)), h) == 0.0
    assert measure.surge_front(-np.ones((10, 3)), h) == pytest.approx(1.0)


def test_a_flat_pool_at_rest_has_no_available_energy_and_a_tilted_one_has_its_potential():
    state, h = _flat(64, 32, 0.4)
    assert measure.rest_level(state["phi"], h) == pytest.approx(0.4, abs=1e-9)
    assert abs(measure.available_energy(state, h, 100.0, -9.81)) < 1e-9
    width = 2.0
    x = (np.arange(64) + 0.5) * h
    slope = 0.05
    tilted = dict(state, phi=(state["phi"] + slope * (x - width / 2)[:, None]) / math.hypot(1, slope))
    # A free surface 0.4 - s (x - 1) over [0, 2]: (rho_w - rho_a) g s^2 / 2 * integral of (x - 1)^2 dx.
    exact = (100.0 - 1.0) * 9.81 * slope ** 2 / 2 * (2 / 3)
    assert measure.available_energy(tilted, h, 100.0, -9.81) == pytest.approx(exact, rel=0.02)


def test_kinetic_energy_of_a_uniform_stream():
    state, h = _flat(16, 16, 2.0)  # all water
    state["u"][:] = 0.5
    rho = measure.densities(state["phi"], h, 1000.0)
    assert measure.kinetic_energy(state["u"], state["v"], rho, h) == pytest.approx(0.5 * 1000 * 0.25 * 17 / 16)


def test_sloshing_period_is_the_linear_dispersion_relation():
    assert validate.sloshing_period(0.35, 2.0, -9.81) == pytest.approx(2.26, abs=0.01)
    assert validate.sloshing_period(100.0, 2.0, -9.81) == pytest.approx(2 * math.pi / math.sqrt(9.81 * math.pi / 2))


def test_validate_at_tiny_size_prints_the_table_and_writes_the_plots(tmp_path, capsys):
    out = tmp_path / "val"
    code = validate.main(["--resolutions", "3", "4", "--sloshing-grid", "32x16", "--periods", "1",
                          "--bubbles-grid", "16x24", "--hydrostatic-grid", "32x16", "--hydrostatic-frames", "5",
                          "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    table = (out / "validation.md").read_text()
    assert table.strip() in printed
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:]]
    cases = [r[0].strip() for r in rows]
    assert cases == ["dambreak", "dambreak", "dambreak", "hydrostatic", "sloshing"] + ["bubbles"] * 4
    assert [r[2].split(", ")[2] for r in rows[5:]] == ["level_set"] * 2 + ["particle_level_set"] * 2
    values = {(r[0].strip(), r[2].strip()): float(r[4]) for r in rows}
    fronts = [v for (case, setting), v in values.items() if case == "dambreak" and setting.startswith("a/h")]
    assert all(0.0 < f < 2.0 for f in fronts)  # the front moved, and stayed near the experiment
    rest = next(v for (case, _), v in values.items() if case == "hydrostatic")
    assert rest < 1e-4
    loss = next(v for (case, _), v in values.items() if case == "sloshing")
    assert 0.0 < loss < 1.0
    shifts = [v for (case, setting), v in values.items() if case == "bubbles" and "correction on" in setting]
    assert len(shifts) == 2 and all(0.0 < s < 0.5 for s in shifts)  # it acts, within MAX_SHIFT_CELLS a frame
    for name in ("validation", "dambreak", "hydrostatic", "sloshing", "bubbles"):
        assert (out / f"{name}.png").stat().st_size > 10_000, name


def test_validate_refuses_an_output_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep")
    assert validate.main(["--cases", "hydrostatic", "--out", str(target)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out: expected a writable directory") and str(target) in err
    assert target.read_text() == "keep"


def test_validate_refuses_a_resolution_off_the_grid_limits(capsys):
    with pytest.raises(SystemExit) as exit_info:
        validate.main(["--resolutions", "2"])
    assert exit_info.value.code == 2
    assert "--resolutions: expected integers from 3 to 341, got [2]" in capsys.readouterr().err
