"""Command line: parse, check, build the scene, simulation and solver, hand over to the window or the headless runner."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from app.stop import StopRequest

HEADLESS_FRAMES = 300  # --frames when --headless gives none


def _flag(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse type from a parser that raises ValueError with the reason (sim.limits)."""
    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return convert


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (what was wrong, what was expected) and exit code 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see python main.py --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from app.render import RENDER_MODES
    from precond import METHODS
    from sim import limits
    p = _Parser(prog="main.py", description="Real-time 2D water/air simulator with a learned pressure solver.")
    p.add_argument("scene", help="scene file, e.g. scenes/dambreak.yaml")
    p.add_argument("--headless", action="store_true", help="run without a window, print stats")
    p.add_argument("--frames", type=_flag(limits.FRAMES.parse),
                   help=f"frames to run, {limits.FRAMES.span()} (headless default {HEADLESS_FRAMES}; window: run until closed)")
    p.add_argument("--solver", choices=METHODS, help="pressure solver (overrides the scene)")
    p.add_argument("--grid", type=_flag(limits.parse_grid), help="grid NXxNY (overrides the scene)")
    p.add_argument("--ratio", type=_flag(limits.RATIO.parse), help=f"density ratio rho_water/rho_air, {limits.RATIO.span()}")
    p.add_argument("--tol", type=_flag(limits.TOLERANCE.parse), help="PCG relative residual tolerance")
    p.add_argument("--compiled", action="store_true", default=None,
                   help="run PCG as torch.compile'd chunks (the first solve of a grid shape compiles, once per machine)")
    p.add_argument("--device", choices=limits.DEVICES, default="cpu", help="where Taichi and torch run")
    p.add_argument("--stats-json", metavar="PATH", help="write one JSON object per frame")
    p.add_argument("--record", metavar="OUT.mp4", help="record the view to an MP4 (or .gif)")
    p.add_argument("--record-fps", type=_flag(limits.RECORD_FPS.parse), metavar="FPS",
                   help=f"frames per second of the recording, {limits.RECORD_FPS.span()} (default: one per "
                        "simulated frame, 60 for frame_dt 1/60); the video plays at simulation speed")
    p.add_argument("--screenshot", metavar="OUT.png", help="save the view after the last frame and exit")
    p.add_argument("--render", default="phase", choices=RENDER_MODES, help="what the view shows")
    p.add_argument("--dump-systems", metavar="DIR", help="write each frame's Poisson system as .npz (training data)")
    p.add_argument("--dump-fields", metavar="DIR",
                   help="write the cell-centred phi, u, v, pressure, rho and the time of each frame as .npz")
    p.add_argument("--dump-every", type=_flag(limits.FRAMES.parse), default=1,
                   help="with --dump-systems / --dump-fields: every K-th frame only")
    p.add_argument("--quiet", action="store_true", help="headless: print only the summary")
    return p.parse_args(argv)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _interrupted() -> int:
    print("interrupted")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; every refusal is one line on stderr and exit code 2, before Taichi starts."""
    stop = StopRequest().install()
    try:
        return _main(argv, stop)
    except KeyboardInterrupt:  # a second Ctrl-C, during the set-up
        return _interrupted()


def _main(argv: list[str] | None, stop: StopRequest) -> int:
    args = parse_args(argv)
    from app.preflight import OutputError, check_outputs, memory_parts, missing_display
    try:
        check_outputs(stats_json=args.stats_json, record=args.record, screenshot=args.screenshot,
                      dump_dir=args.dump_systems, fields_dir=args.dump_fields, headless=args.headless)
    except OutputError as err:
        return _fail(str(err))
    if not args.headless and (no_display := missing_display()):
        print(no_display, file=sys.stderr)
        return 2
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            return _fail("--device cuda: no CUDA device is available here; use --device cpu")

    from precond import METHODS
    from sim import memory
    from sim.scene import SceneError, load_scene
    try:
        scene = load_scene(args.scene, methods=METHODS).with_overrides(
            methods=METHODS, grid=args.grid, ratio=args.ratio, solver=args.solver, tol=args.tol, compiled=args.compiled)
        nx, ny = scene.grid.nx, scene.grid.ny
        frames = args.frames or HEADLESS_FRAMES
        memory.check(nx, ny, scene.solver.method, what=f"grid {nx}x{ny}", particles=scene.transport == "apic",
                     markers=scene.interface == "particle_level_set",
                     extra=memory_parts(nx, ny, headless=args.headless, frames=frames,
                                        pictures=bool(args.record or args.screenshot)))
    except (SceneError, memory.MemoryLimitError) as err:
        return _fail(str(err))
    if stop.requested:
        return _interrupted()

    from sim.simulation import Simulation, SimulationError  # Taichi starts here
    sim = Simulation.from_scene(scene, device=args.device)
    if stop.requested:
        return _interrupted()

    if not args.headless:
        from app.viewer import run_window
        return run_window(sim, record=args.record, screenshot=args.screenshot, frames=args.frames,
                          render_mode=args.render, record_fps=args.record_fps, stop=stop)

    from app.headless import run_headless
    from app.report import RunReport
    try:
        report = RunReport(sim, stats_json=args.stats_json, dump_dir=args.dump_systems, dump_every=args.dump_every,
                           quiet=args.quiet, fields_dir=args.dump_fields)
    except OutputError as err:
        return _fail(str(err))
    try:
        run_headless(sim, frames, record=args.record, screenshot=args.screenshot, render_mode=args.render,
                     on_frame=report.on_frame, on_system=report.on_system, record_fps=args.record_fps,
                     stop=lambda: stop.requested)
    except (SimulationError, OutputError) as err:
        print(report.summary())
        return _fail(str(err))
    except KeyboardInterrupt:  # a second Ctrl-C, within a frame
        print("interrupted")
    finally:
        report.close()
    if stop.requested:
        print("interrupted")
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
