"""Run a simulation without a window; optionally record the view and save a screenshot, drawn off-screen.

The pictures come from the same renderer and shaders as the window, in a standalone (EGL) OpenGL
context. Printing stats is the caller's job: pass `on_frame`, or read the returned list. A
recording or screenshot that cannot be written ends the run with OutputError (app.preflight
checks the paths before the run, so this is a failure on the way, such as a full disk).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from precond import PoissonSystem
from sim.simulation import Simulation
from sim.stats import FrameStats

from .preflight import OutputError
from .recorder import Recorder, RecordingError, save_png
from .render import PICTURE_HEIGHT, Renderer, RenderTarget, create_offscreen_context, picture_size


def recording_fps(sim: Simulation) -> float:
    """One video frame per simulation frame: the video plays at simulation speed."""
    return 1.0 / sim.scene.time.frame_dt


def run_headless(sim: Simulation, frames: int, record: Optional[str] = None, screenshot: Optional[str] = None,
                 render_mode: str = "phase", on_frame: Optional[Callable[[FrameStats], None]] = None,
                 on_system: Optional[Callable[[PoissonSystem, torch.Tensor], None]] = None,
                 height: int = PICTURE_HEIGHT, record_fps: Optional[float] = None,
                 stop: Callable[[], bool] = lambda: False) -> list[FrameStats]:
    """Step `sim` `frames` times, or until `stop()` says so (checked before each frame); record every
    frame to `record` (a file of `record_fps` frames per second, default the simulation's), save the
    last view to `screenshot`.

    `on_system` goes to `Simulation.step`. Pictures are `height` pixels high with the grid's aspect
    ratio (the window's recordings use the default).

    A picture that cannot be made or written raises OutputError (after finishing the recording as
    far as it goes); SimulationError and KeyboardInterrupt propagate, the recording finished too.
    """
    renderer: Optional[Renderer] = None
    if record or screenshot:
        try:
            renderer = Renderer(create_offscreen_context())
        except RuntimeError as err:
            raise OutputError(f"--record/--screenshot: no off-screen OpenGL ({err})") from None
    size = picture_size(sim.nx, sim.ny, height)
    target: Optional[RenderTarget] = None
    recorder: Optional[Recorder] = None
    done: list[FrameStats] = []
    try:
        if record:
            recorder = Recorder(record, size, recording_fps(sim), record_fps)
        for _ in range(frames):
            if stop():
                break
            stats = sim.step(on_system)
            done.append(stats)
            if recorder is not None:
                renderer.upload(sim.fields(), render_mode)
                picture, target = renderer.picture(size, target)
                recorder.write(picture)
            if on_frame is not None:  # after the frame is recorded: a report of frame k means k frames on file
                on_frame(stats)
        if screenshot:
            renderer.upload(sim.fields(), render_mode)
            picture, target = renderer.picture(size, target)
            save_png(screenshot, picture)
        if recorder is not None:
            recorder, finishing = None, recorder
            finishing.close()
    except RecordingError as err:
        raise OutputError(str(err)) from None
    finally:
        if recorder is not None:  # interrupted or failed: finish what was recorded, as far as it goes
            try:
                recorder.close()
            except RecordingError:
                pass  # the error that got here is the one to report
        if renderer is not None:
            renderer.ctx.release()
    return done
