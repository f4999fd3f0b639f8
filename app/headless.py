"""Run a simulation without a window; optionally record the view and save a screenshot, drawn off-screen.

The pictures come from the same renderer and shaders as the window, in a standalone (EGL) OpenGL
context. Printing stats is the caller's job: pass `on_frame`, or read the returned list. A
recording or screenshot that cannot be written gets one message on stderr and the run goes on.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

import torch

from precond import PoissonSystem
from sim.simulation import Simulation
from sim.stats import FrameStats

from .recorder import Recorder, RecordingError, save_png
from .render import PICTURE_HEIGHT, Renderer, RenderTarget, create_offscreen_context, picture_size


def warn(err: BaseException, consequence: str) -> None:
    """One line on stderr for a failure the run survives: the exception type, its message, what happens now."""
    print(f"{type(err).__name__}: {err}; {consequence}", file=sys.stderr, flush=True)


def recording_fps(sim: Simulation) -> float:
    """One video frame per simulation frame: the video plays at simulation speed."""
    return 1.0 / sim.scene.time.frame_dt


def run_headless(sim: Simulation, frames: int, record: Optional[str] = None, screenshot: Optional[str] = None,
                 render_mode: str = "phase", on_frame: Optional[Callable[[FrameStats], None]] = None,
                 on_system: Optional[Callable[[PoissonSystem, torch.Tensor], None]] = None,
                 height: int = PICTURE_HEIGHT) -> list[FrameStats]:
    """Step `sim` `frames` times; record every frame to `record`, save the last view to `screenshot`.

    `on_system` goes to `Simulation.step`. Pictures are `height` pixels high with the grid's aspect
    ratio (the window's recordings use the default).

    SimulationError and KeyboardInterrupt propagate; the recording is finished either way.
    """
    renderer: Optional[Renderer] = None
    if record or screenshot:
        try:
            renderer = Renderer(create_offscreen_context())
        except RuntimeError as err:
            warn(err, "the run goes on without pictures")
    size = picture_size(sim.nx, sim.ny, height)
    target: Optional[RenderTarget] = None
    recorder: Optional[Recorder] = None
    if record and renderer is not None:
        try:
            recorder = Recorder(record, size, recording_fps(sim))
        except RecordingError as err:
            warn(err, "the run goes on without recording")
    done: list[FrameStats] = []
    try:
        for _ in range(frames):
            stats = sim.step(on_system)
            done.append(stats)
            if recorder is not None:
                renderer.upload(sim.fields(), render_mode)
                picture, target = renderer.picture(size, target)
                try:
                    recorder.write(picture)
                except RecordingError as err:
                    warn(err, "the run goes on without recording")
                    recorder = None
            if on_frame is not None:  # after the frame is recorded: a report of frame k means k frames on file
                on_frame(stats)
        if screenshot and renderer is not None:
            renderer.upload(sim.fields(), render_mode)
            picture, target = renderer.picture(size, target)
            try:
                save_png(screenshot, picture)
            except RecordingError as err:
                warn(err, "no screenshot was saved")
    finally:
        if recorder is not None:
            try:
                recorder.close()
            except RecordingError as err:
                warn(err, "the recording may be incomplete")
        if renderer is not None:
            renderer.ctx.release()
    return done
