"""Command line: parse, build the scene, simulation and solver, hand over to the window or the headless runner."""
from __future__ import annotations

import argparse
import os
import re
import sys


def _grid(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected NXxNY such as 128x64, got {text!r}")
    nx, ny = int(m[1]), int(m[2])
    if not (8 <= nx <= 2048 and 8 <= ny <= 2048):
        raise argparse.ArgumentTypeError(f"expected each side from 8 to 2048 cells, got {nx}x{ny}")
    return nx, ny


def _in_range(kind: type, lo: float, hi: float | None = None):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not (lo <= v and (hi is None or v <= hi)):
            raise argparse.ArgumentTypeError(f"expected a value from {lo:g}{f' to {hi:g}' if hi else ' up'}, got {text}")
        return v
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (what was wrong, what was expected) and exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see python main.py --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from precond import METHODS
    p = _Parser(prog="main.py", description="Real-time 2D water/air simulator with a learned pressure solver.")
    p.add_argument("scene", help="scene file, e.g. scenes/dambreak.yaml")
    p.add_argument("--headless", action="store_true", help="run without a window, print stats")
    p.add_argument("--frames", type=_in_range(int, 1), help="frames to run (headless default 300; window: run until closed)")
    p.add_argument("--solver", choices=METHODS, help="pressure solver (overrides the scene)")
    p.add_argument("--grid", type=_grid, help="grid NXxNY (overrides the scene)")
    p.add_argument("--ratio", type=_in_range(float, 1.0, 1000.0), help="density ratio rho_water/rho_air, 1 to 1000")
    p.add_argument("--tol", type=_in_range(float, 1e-14, 1e-1), help="PCG relative residual tolerance")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where Taichi and torch run")
    p.add_argument("--stats-json", metavar="PATH", help="write one JSON object per frame")
    p.add_argument("--record", metavar="OUT.mp4", help="record the view to an MP4")
    p.add_argument("--screenshot", metavar="OUT.png", help="save the view after the last frame and exit")
    p.add_argument("--render", default="phase", choices=("phase", "density", "pressure", "speed", "vorticity"),
                   help="what the view shows")
    p.add_argument("--dump-systems", metavar="DIR", help="write each frame's Poisson system as .npz (training data)")
    p.add_argument("--dump-every", type=_in_range(int, 1), default=1, help="dump every K-th frame")
    p.add_argument("--quiet", action="store_true", help="headless: print only the summary")
    return p.parse_args(argv)


def _check_writable(path: str | None, what: str) -> None:
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise SystemExit(_fail(f"{what}: cannot write {path!r}: directory {parent!r} does not exist or is not writable"))


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for path, what in ((args.stats_json, "--stats-json"), (args.record, "--record"), (args.screenshot, "--screenshot")):
        _check_writable(path, what)
    if not args.headless:
        from app.viewer import missing_display
        if no_display := missing_display():  # say so before the set-up, not after
            print(no_display, file=sys.stderr)
            return 2
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            return _fail("--device cuda: no CUDA device is available here; use --device cpu")

    from precond import Solver
    from sim.scene import SceneError, load_scene
    from sim.simulation import Simulation, SimulationError

    try:
        scene = load_scene(args.scene).with_overrides(grid=args.grid, ratio=args.ratio, solver=args.solver, tol=args.tol)
    except SceneError as err:
        return _fail(str(err))
    solver = Solver(scene.solver.method, tol=scene.solver.tol, maxiter=scene.solver.maxiter)
    sim = Simulation(scene, solver, device=args.device)

    if not args.headless:
        from app.viewer import run_window
        try:
            return run_window(sim, record=args.record, screenshot=args.screenshot, frames=args.frames,
                              render_mode=args.render)
        except KeyboardInterrupt:  # Ctrl-C before the window opened
            print("interrupted")
            return 0

    from app.headless import run_headless
    from app.report import RunReport
    report = RunReport(sim, stats_json=args.stats_json, dump_dir=args.dump_systems, dump_every=args.dump_every,
                       quiet=args.quiet)
    try:
        run_headless(sim, args.frames or 300, record=args.record, screenshot=args.screenshot,
                     render_mode=args.render, on_frame=report.on_frame)
    except SimulationError as err:
        print(report.summary())
        return _fail(str(err))
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        report.close()
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
