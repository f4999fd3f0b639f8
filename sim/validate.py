"""`python -m sim.validate`: the simulator against experiment and against the physics it must keep.

Four cases, each a short run measured from outside the step (sim.measure):

- dambreak: Martin & Moyce (1952), collapse of a liquid column of width a and height 2a
  (n^2 = 2) on a rigid plane; the surge front Z = x / a against T = t sqrt(2 g / a), at several
  resolutions a / h. Reported: the largest |Z - Z_exp| over the experimental points with T in
  [0.5, 3] (the simulated front interpolated to each point's T).
- hydrostatic: a flat pool at rest at 1,000:1 in a closed tank; the largest |u|, |v| reached.
- sloshing: the shipped sloshing scene; the available energy (kinetic + potential above the
  flat rest state, both phases) at every period of the fundamental mode (linear theory,
  omega^2 = g k tanh(k d), k = pi / L), and the fraction lost in each. The clock starts after
  the first frame: its projection removes the divergent part of the scene's initial velocity
  (about 4 % of the energy), which is not the transport's loss.
- bubbles: the shipped bubbles scene with the volume correction off; the change of the water
  area over the first 0.4 s, as a fraction of the bubbles' initial area. And with it on, the
  largest shift of the interface the correction makes in a frame (FrameStats.volume_shift, cells).
  Both for each interface (the level set alone and the particle level set, sim.pls).

It prints one table (also written to OUT/validation.md) and writes OUT/validation.png (all four
panels) and one PNG per case. Options pick the cases, resolutions and transports.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from . import limits, measure
from .scene import INTERFACES, TRANSPORTS, Circle

SCENES = Path(__file__).resolve().parent.parent / "scenes"
CASES = ("dambreak", "hydrostatic", "sloshing", "bubbles")

# Martin & Moyce (1952), "Part IV. An experimental study of the collapse of liquid columns on a rigid
# horizontal plane", Phil. Trans. R. Soc. Lond. A 244, 312-324: surge front for n^2 = 2, column
# a = 2.25 in, (T, Z) points digitised from their Figure 3 as distributed with PySPH
# (pysph/examples/db_exp_data.py, `mm_data_2`). The a = 1.125 in series of the same figure
# (`mm_data_1`) is plotted for the experiment's own scatter.
MARTIN_MOYCE_A225 = np.array([
    (0.832, 1.217), (1.219, 1.474), (1.997, 2.292), (2.547, 2.995), (3.345, 4.134), (4.034, 4.944),
])
MARTIN_MOYCE_A1125 = np.array([
    (0.849, 1.245), (1.212, 1.443), (1.602, 1.884), (2.283, 2.689), (2.950, 3.728), (3.598, 4.528),
])
T_RANGE = (0.5, 3.0)  # the T window the front is judged in
DAMBREAK_T_END = 3.5
DAMBREAK_DT = 0.05  # frame length in T units: the front is sampled this often

FRONT_TARGET = 0.15  # largest |Z - Z_exp| at a / h = 16 (issue 16)
ENERGY_TARGET = 0.05  # energy lost per sloshing period
BUBBLE_TARGET = 0.02  # water area change / initial bubble area over 0.4 s
REST_TARGET = 1e-5  # m/s: the largest speed a pool at rest may reach (sim tests' bound)
BUBBLE_SECONDS = 0.4
SHIFT_TARGET = 0.1  # cells: the largest interface shift the volume correction may make in a frame (bubbles)


class ValidationError(RuntimeError):
    """The run cannot write its output; the message is one line."""


@dataclass(frozen=True)
class Options:
    """What to run: cases, their grids, the transports to compare, the solver, where to write."""

    cases: tuple[str, ...] = CASES
    resolutions: tuple[int, ...] = (8, 16, 32)  # dam break a / h
    sloshing_grid: tuple[int, int] = (128, 64)
    periods: int = 3
    bubbles_grid: tuple[int, int] = (64, 96)
    hydrostatic_grid: tuple[int, int] = (64, 64)
    hydrostatic_frames: int = 120
    transports: tuple[str, ...] = ("semi_lagrangian",)
    solver: str = "mgpcg"
    out: Path = Path("validate_out")


@dataclass
class Row:
    """One line of the table: a measured figure against its target (None: reported only)."""

    case: str
    transport: str
    setting: str
    quantity: str
    value: float
    target: Optional[float] = None
    fmt: str = "{:.3f}"

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "ok" if self.value <= self.target else "MISSED"


@dataclass
class Curve:
    """One plotted line: x, y and its label."""

    x: np.ndarray
    y: np.ndarray
    label: str


@dataclass
class CaseResult:
    rows: list[Row] = field(default_factory=list)
    curves: list[Curve] = field(default_factory=list)


# ---------------------------------------------------------------------- running
def _simulation(scene_data: dict, source: str, transport: str, solver: str):
    """A Simulation of the scene mapping with the transport and solver given (Taichi starts here)."""
    import precond
    from .scene import parse_scene
    from .simulation import Simulation
    scene = parse_scene({**scene_data, "transport": transport}, source, methods=precond.METHODS)
    return Simulation(scene, precond.Solver(solver))


def _shipped(name: str) -> dict:
    """A shipped scene file's mapping (to be edited and parsed again)."""
    from . import bounded_yaml
    from .scene import read_scene_text
    return bounded_yaml.safe_load(read_scene_text(SCENES / f"{name}.yaml"))


def dambreak(opts: Options, transport: str) -> CaseResult:
    """Martin & Moyce's n^2 = 2 column at each a / h: a 6a x 3a tank, open top, 1,000:1."""
    out = CaseResult()
    errors = []
    for cells in opts.resolutions:
        a = 1.0 / 3.0  # the tank is 3a high (the domain is 1 high), 6a long
        t_unit = 1.0 / math.sqrt(2.0 * 9.81 / a)  # T = t / t_unit
        sim = _simulation({"grid": {"nx": 6 * cells, "ny": 3 * cells}, "ratio": 1000, "gravity": -9.81,
                           "boundary": {"top": "open"},
                           "shapes": [{"type": "box", "min": [0.0, 0.0], "max": [a, 2.0 * a]}],
                           "time": {"frame_dt": DAMBREAK_DT * t_unit, "max_substeps": 64}},
                          "sim.validate dambreak", transport, opts.solver)
        h = 1.0 / sim.ny
        ts, zs = [0.0], [measure.surge_front(sim.state()["phi"], h) / a]
        while ts[-1] < DAMBREAK_T_END:
            sim.step()
            ts.append(sim.time / t_unit)
            zs.append(measure.surge_front(sim.state()["phi"], h) / a)
        t, z = np.array(ts), np.array(zs)
        exp = MARTIN_MOYCE_A225[(MARTIN_MOYCE_A225[:, 0] >= T_RANGE[0]) & (MARTIN_MOYCE_A225[:, 0] <= T_RANGE[1])]
        err = float(np.max(np.abs(np.interp(exp[:, 0], t, z) - exp[:, 1])))
        errors.append(err)
        out.rows.append(Row("dambreak", transport, f"a/h = {cells} ({sim.nx}x{sim.ny})",
                            "max abs(Z - Z_exp), T in [0.5, 3]", err, FRONT_TARGET if cells == 16 else None))
        out.curves.append(Curve(t, z, f"{transport}, a/h = {cells}"))
    if len(errors) > 1:
        falls = all(b < a for a, b in zip(errors, errors[1:]))
        out.rows.append(Row("dambreak", transport, "refinement", "error falls with a/h (1 = yes)",
                            float(falls), None, "{:.0f}"))
    return out


def hydrostatic(opts: Options, transport: str) -> CaseResult:
    """A flat pool 0.37 deep in a closed tank at 1,000:1: it must stay at rest."""
    nx, ny = opts.hydrostatic_grid
    sim = _simulation({"grid": {"nx": nx, "ny": ny}, "ratio": 1000, "boundary": {"top": "wall"},
                       "shapes": [{"type": "box", "min": [0.0, 0.0], "max": [nx / ny, 0.37]}]},
                      "sim.validate hydrostatic", transport, opts.solver)
    ts, speeds = [], []
    for _ in range(opts.hydrostatic_frames):
        sim.step()
        state = sim.state()
        ts.append(sim.time)
        speeds.append(max(float(np.abs(state["u"]).max()), float(np.abs(state["v"]).max())))
    worst = max(speeds)
    return CaseResult([Row("hydrostatic", transport, f"{nx}x{ny}, 1000:1, {opts.hydrostatic_frames} frames",
                           "max abs(u), abs(v) (m/s)", worst, REST_TARGET, "{:.1e}")],
                      [Curve(np.array(ts), np.maximum(np.array(speeds), 1e-12), transport)])


def sloshing_period(depth: float, length: float, gravity: float) -> float:
    """Period (s) of the fundamental sloshing mode of a tank `length` long, `depth` deep (linear theory)."""
    k = math.pi / length
    return 2.0 * math.pi / math.sqrt(abs(gravity) * k * math.tanh(k * depth))


def sloshing(opts: Options, transport: str) -> CaseResult:
    """The shipped sloshing scene on `sloshing_grid`: available energy per period."""
    nx, ny = opts.sloshing_grid
    data = {**_shipped("sloshing"), "grid": {"nx": nx, "ny": ny}}
    sim = _simulation(data, "sim.validate sloshing", transport, opts.solver)
    h, g = 1.0 / ny, sim.scene.gravity
    sim.step()  # the first projection makes the scene's initial velocity divergence-free: the clock starts there
    state = sim.state()
    period = sloshing_period(measure.rest_level(state["phi"], h), sim.scene.width, g)
    t0 = sim.time
    ts, es = [0.0], [measure.available_energy(state, h, sim.ratio, g)]
    while ts[-1] < opts.periods * period:
        sim.step()
        ts.append(sim.time - t0)
        es.append(measure.available_energy(sim.state(), h, sim.ratio, g))
    t, e = np.array(ts), np.array(es)
    at = np.interp(np.arange(opts.periods + 1) * period, t, e)
    out = CaseResult(curves=[Curve(t / period, e / e[0], transport)])
    for k in range(1, opts.periods + 1):
        out.rows.append(Row("sloshing", transport, f"{nx}x{ny}, {sim.ratio:g}:1, period {k} "
                            f"(T = {period:.2f} s)", "energy lost in the period", 1.0 - at[k] / at[k - 1],
                            ENERGY_TARGET))
    return out


def bubbles(opts: Options, transport: str) -> CaseResult:
    """The shipped bubbles scene on `bubbles_grid` for BUBBLE_SECONDS, with each interface: with the volume
    correction off, the water area change / bubble area; with it on, the largest shift of the interface it
    makes in a frame."""
    nx, ny = opts.bubbles_grid
    out = CaseResult()
    for interface, correction in ((i, c) for i in INTERFACES for c in (False, True)):
        data = {**_shipped("bubbles"), "grid": {"nx": nx, "ny": ny}, "volume_correction": correction,
                "interface": interface}
        sim = _simulation(data, "sim.validate bubbles", transport, opts.solver)
        bubble_area = sum(math.pi * s.radius ** 2 for s in sim.scene.shapes
                          if isinstance(s, Circle) and s.phase == "air")
        area = sim.scene.width  # the domain is 1 high
        start = sim.water_volume()
        ts, changes, shifts = [0.0], [0.0], [0.0]
        while ts[-1] < BUBBLE_SECONDS - 1e-9:
            shifts.append(abs(sim.step().volume_shift))
            ts.append(sim.time)
            changes.append((sim.water_volume() - start) * area / bubble_area)
        setting = (f"{nx}x{ny}, {sim.ratio:g}:1, {interface}, correction {'on' if correction else 'off'}, "
                   f"{BUBBLE_SECONDS:g} s")
        if correction:
            out.rows.append(Row("bubbles", transport, setting, "max abs(correction shift) per frame (cells)",
                                max(shifts), SHIFT_TARGET))
        else:
            out.rows.append(Row("bubbles", transport, setting, "max abs(water area change) / bubble area",
                                float(np.max(np.abs(changes))), BUBBLE_TARGET))
            out.curves.append(Curve(np.array(ts), np.array(changes), f"{transport}, {interface}"))
    return out


RUNNERS: dict[str, Callable[[Options, str], CaseResult]] = {
    "dambreak": dambreak, "hydrostatic": hydrostatic, "sloshing": sloshing, "bubbles": bubbles}


# ---------------------------------------------------------------------- reporting
def table(rows: Sequence[Row]) -> str:
    """The rows as one markdown table."""
    lines = ["| case | transport | setting | quantity | measured | target | |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        target = "" if r.target is None else "<= " + r.fmt.format(r.target)
        lines.append(f"| {r.case} | {r.transport} | {r.setting} | {r.quantity} | {r.fmt.format(r.value)} | "
                     f"{target} | {r.verdict} |")
    return "\n".join(lines)


def _panel(ax, case: str, curves: Sequence[Curve]) -> None:
    """Draw one case's curves (and the experiment, for the dam break) on a matplotlib axis."""
    for c in curves:
        ax.plot(c.x, c.y, label=c.label)
    if case == "dambreak":
        ax.plot(*MARTIN_MOYCE_A225.T, "ko", label="Martin & Moyce 1952, a = 2.25 in")
        ax.plot(*MARTIN_MOYCE_A1125.T, "k^", mfc="none", label="Martin & Moyce 1952, a = 1.125 in")
        ax.axvspan(*T_RANGE, color="0.93", zorder=0)
        ax.set(xlabel="T = t sqrt(2g/a)", ylabel="Z = x / a", title="dam break surge front (n^2 = 2)",
               xlim=(0, DAMBREAK_T_END), ylim=(1, 5.5))
    elif case == "hydrostatic":
        ax.set_yscale("log")
        ax.set(xlabel="t (s)", ylabel="max |u|, |v| (m/s)", title="pool at rest, 1000:1")
    elif case == "sloshing":
        ax.set(xlabel="t / T (sloshing periods)", ylabel="E / E(0)", title="sloshing: available energy",
               ylim=(0, 1.05))
    elif case == "bubbles":
        ax.axhspan(-BUBBLE_TARGET, BUBBLE_TARGET, color="0.9", zorder=0)
        ax.set(xlabel="t (s)", ylabel="water area change / bubble area",
               title="bubbles, volume correction off")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot(results: dict[str, list[CaseResult]], out: Path) -> list[Path]:
    """OUT/<case>.png for each case run, and OUT/validation.png with all of them side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    curves = {case: [c for r in rs for c in r.curves] for case, rs in results.items()}
    for case, cs in curves.items():
        fig, ax = plt.subplots(figsize=(6, 4.2))
        _panel(ax, case, cs)
        fig.tight_layout()
        fig.savefig(out / f"{case}.png", dpi=110)
        plt.close(fig)
        written.append(out / f"{case}.png")
    cols = min(2, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.2 * rows), squeeze=False)
    for ax, (case, cs) in zip(axes.flat, curves.items()):
        _panel(ax, case, cs)
    for ax in list(axes.flat)[len(curves):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(out / "validation.png", dpi=110)
    plt.close(fig)
    written.append(out / "validation.png")
    return written


def run(opts: Options, log: Callable[[str], None] = print) -> list[Row]:
    """Run the chosen cases for every transport, print and write the table and the plots; the rows."""
    try:
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "validation.md").write_text("")
    except OSError as err:
        raise ValidationError(f"--out: expected a writable directory, got {str(opts.out)!r} "
                              f"({err.strerror or err})") from None
    results: dict[str, list[CaseResult]] = {}
    for case in opts.cases:
        for transport in opts.transports:
            start = time.perf_counter()
            results.setdefault(case, []).append(RUNNERS[case](opts, transport))
            log(f"{case} ({transport}): {time.perf_counter() - start:.1f} s")
    rows = [row for rs in results.values() for r in rs for row in r.rows]
    text = table(rows)
    (opts.out / "validation.md").write_text(text + "\n")
    written = plot(results, opts.out)
    log(text)
    log("wrote " + ", ".join(str(p) for p in [opts.out / "validation.md", *written]))
    return rows


def _grid(text: str) -> tuple[int, int]:
    try:
        return limits.parse_grid(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_args(argv: Optional[Sequence[str]] = None) -> Options:
    import precond
    p = argparse.ArgumentParser(prog="python -m sim.validate", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="which cases to run")
    p.add_argument("--resolutions", nargs="+", type=int, default=[8, 16, 32], metavar="A/H",
                   help="dam break: cells across the column's width a (the tank is 6a x 3a)")
    p.add_argument("--sloshing-grid", type=_grid, default=(128, 64), metavar="NXxNY")
    p.add_argument("--periods", type=int, default=3, help="sloshing periods to run")
    p.add_argument("--bubbles-grid", type=_grid, default=(64, 96), metavar="NXxNY")
    p.add_argument("--hydrostatic-grid", type=_grid, default=(64, 64), metavar="NXxNY")
    p.add_argument("--hydrostatic-frames", type=int, default=120)
    p.add_argument("--transports", nargs="+", choices=TRANSPORTS, default=["semi_lagrangian"],
                   help="velocity transports to run every case with")
    p.add_argument("--solver", default="mgpcg", choices=precond.METHODS, help="pressure solver")
    p.add_argument("--out", type=Path, default=Path("validate_out"), help="directory for the table and PNGs")
    a = p.parse_args(argv)
    for name in ("periods", "hydrostatic_frames"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')}: expected an integer of at least 1, got {getattr(a, name)}")
    sides = limits.GRID_SIDE
    if any(3 * r < sides.lo or 6 * r > sides.hi for r in a.resolutions):  # the tank is 6a x 3a cells
        p.error(f"--resolutions: expected integers from {math.ceil(sides.lo / 3)} to {sides.hi // 6}, "
                f"got {a.resolutions}")
    return Options(cases=tuple(a.cases), resolutions=tuple(a.resolutions), sloshing_grid=a.sloshing_grid,
                   periods=a.periods, bubbles_grid=a.bubbles_grid, hydrostatic_grid=a.hydrostatic_grid,
                   hydrostatic_frames=a.hydrostatic_frames, transports=tuple(a.transports), solver=a.solver,
                   out=a.out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    opts = parse_args(argv)
    try:
        run(opts)
    except ValidationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
