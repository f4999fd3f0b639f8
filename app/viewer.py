"""The interactive window: imgui-bundle panels around the simulation view, which moderngl draws into a texture.

Left: scene, run controls, solver and grid settings, render mode, recording, live stats and a
per-solver comparison. Right: the view (keeps the domain's aspect ratio; the left mouse button
pours water or, with the drag tool, grabs a solid body, or drops a disc, and drags it through the
fluid; right drag pushes the fluid) over implot plots of ms/frame and PCG iterations, one line
per solver. Keys: Space play/pause, Right arrow step, Backspace reset, R record, P screenshot.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import moderngl
from imgui_bundle import hello_imgui, imgui, immapp, implot

import precond
from sim.limits import RATIO, SUBSTEPS, TOLERANCE
from sim.simulation import Simulation

from .headless import recording_fps
from .preflight import NO_DISPLAY, missing_display
from .recorder import Recorder, RecordingError, save_png
from .render import RENDER_MODES, Renderer, RenderTarget, picture_size
from .state import LEFT_TOOLS, N_CHOICES, ViewerState, list_scenes, view_to_domain
from .stop import StopRequest

WINDOW_SIZE = (1440, 900)
PANEL_WIDTH = 420
PLOT_HEIGHT = 220  # at least; the plots take what the view leaves
RED = imgui.ImVec4(0.95, 0.25, 0.20, 1.0)
YELLOW = imgui.ImVec4(0.95, 0.80, 0.20, 1.0)
GREEN = imgui.ImVec4(0.35, 0.85, 0.40, 1.0)


class Viewer:
    """The window's callbacks around one ViewerState; `run()` blocks until the window closes."""

    def __init__(self, sim: Simulation, state: ViewerState, record: Optional[str] = None,
                 screenshot: Optional[str] = None, frames: Optional[int] = None,
                 record_fps: Optional[float] = None) -> None:
        self.sim, self.state = sim, state
        self.record_path, self.screenshot_path, self.frames = record, screenshot, frames
        self.record_fps = record_fps
        self.renderer: Optional[Renderer] = None
        self.view: Optional[RenderTarget] = None
        self.picture_target: Optional[RenderTarget] = None
        self.recorder: Optional[Recorder] = None
        self.notice = ""
        self.scenes = list_scenes()
        self.pending: dict[str, Any] = {}  # slider values being dragged, applied on release
        self.opened = False
        self.exit_code = 0

    # ------------------------------------------------------------------ lifecycle
    def post_init(self) -> None:
        """The GL context exists now: wrap it in moderngl, build the renderer, start a requested recording."""
        self.opened = True
        self.renderer = Renderer(moderngl.create_context())
        if self.record_path:
            self.start_recording(self.record_path)

    def before_exit(self) -> None:
        """Window closing (button, SIGINT, --frames done): save a pending screenshot, finish the recording."""
        if self.screenshot_path and self.renderer is not None:
            self.screenshot(self.screenshot_path)
            self.screenshot_path = None
        self.stop_recording()

    def request_exit(self) -> None:
        hello_imgui.get_runner_params().app_shall_exit = True

    # ------------------------------------------------------------------ outputs
    def _picture(self) -> Any:
        picture, self.picture_target = self.renderer.picture(picture_size(self.sim.nx, self.sim.ny),
                                                             self.picture_target)
        return picture

    def screenshot(self, path: str) -> None:
        try:
            save_png(path, self._picture())
            self.notice = f"saved {path}"
        except RecordingError as err:
            self._fail(err, "no screenshot was saved")

    def start_recording(self, path: str) -> None:
        try:
            self.recorder = Recorder(path, picture_size(self.sim.nx, self.sim.ny), recording_fps(self.sim),
                                     self.record_fps)
            self.notice = f"recording to {path}"
        except RecordingError as err:
            self._fail(err, "the run goes on without recording")

    def stop_recording(self) -> None:
        if self.recorder is None:
            return
        recorder, self.recorder = self.recorder, None
        try:
            recorder.close()
            self.notice = f"saved {recorder.path} ({recorder.frames} frames)"
        except RecordingError as err:
            self._fail(err, "the recording may be incomplete")

    def _fail(self, err: Exception, consequence: str) -> None:
        """One line on stderr and in the panel for a failure the window survives, and what happens now."""
        print(f"{type(err).__name__}: {err}; {consequence}", file=sys.stderr, flush=True)
        self.state.error = f"{type(err).__name__}: {err}"

    def _default_name(self, suffix: str) -> str:
        return f"{Path(self.sim.scene.source).stem}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"

    # ------------------------------------------------------------------ per frame
    def gui(self) -> None:
        """One frame: apply the panels' edits, step, draw the view and the panels, record, maybe exit."""
        state = self.state
        self._keys()
        try:
            self.sim = state.apply(self.sim)
        except ValueError as err:
            state.error = str(err)
        stats = state.advance(self.sim)
        self.renderer.upload(self.sim.fields(), state.render_mode)
        if stats is not None and self.recorder is not None:
            try:
                self.recorder.write(self._picture())
            except RecordingError as err:
                self.recorder = None
                self._fail(err, "the run goes on without recording")
        hello_imgui.get_runner_params().fps_idling.enable_idling = not state.running and self.recorder is None

        imgui.begin_child("panel", imgui.ImVec2(PANEL_WIDTH, 0), imgui.ChildFlags_.borders)
        self._controls()
        self._stats()
        imgui.end_child()
        imgui.same_line()
        imgui.begin_child("main", imgui.ImVec2(0, 0))
        self._view()
        self._plots()
        imgui.end_child()

        if self.frames is not None:
            if state.history.tick >= self.frames:
                self.request_exit()
            elif not state.running and state.error:  # a scripted run whose simulation failed
                print(f"error: {state.error}", file=sys.stderr)
                self.exit_code = 1
                self.request_exit()

    def _keys(self) -> None:
        if imgui.get_io().want_text_input:
            return
        state = self.state
        if imgui.is_key_pressed(imgui.Key.space, repeat=False):
            state.running = not state.running
        if imgui.is_key_pressed(imgui.Key.right_arrow):
            state.running, state.step_requested = False, True
        if imgui.is_key_pressed(imgui.Key.backspace, repeat=False):
            state.reset_requested = True
        if imgui.is_key_pressed(imgui.Key.r, repeat=False):
            self._toggle_recording()
        if imgui.is_key_pressed(imgui.Key.p, repeat=False):
            self.screenshot(self._default_name(".png"))

    def _toggle_recording(self) -> None:
        if self.recorder is None:
            self.start_recording(self._default_name(".mp4"))
        else:
            self.stop_recording()

    def _controls(self) -> None:
        state = self.state
        names = [p.stem for p in self.scenes]
        current = next((k for k, p in enumerate(self.scenes)
                        if p.resolve() == Path(state.scene_path).resolve()), -1)
        changed, picked = imgui.combo("scene", current, names)
        if changed and picked != current:
            state.scene_path = str(self.scenes[picked])

        if imgui.button("Pause" if state.running else "Play", imgui.ImVec2(80, 0)):
            state.running = not state.running
        imgui.same_line()
        if imgui.button("Step", imgui.ImVec2(80, 0)):
            state.running, state.step_requested = False, True
        imgui.same_line()
        if imgui.button("Reset", imgui.ImVec2(80, 0)):
            state.reset_requested = True

        imgui.separator_text("solver")
        methods = list(precond.METHODS)
        changed, k = imgui.combo("solver", methods.index(state.solver) if state.solver in methods else 0, methods)
        if changed:
            state.solver = methods[k]
        tol = self._on_release("tolerance", state.tol, lambda v: imgui.slider_float(
            "tolerance", v, TOLERANCE.lo, TOLERANCE.hi, "%.0e", imgui.SliderFlags_.logarithmic))
        if tol is not None:
            state.tol = float(f"{tol:.3g}")
        changed, steps = imgui.slider_int("max substeps", state.max_substeps, SUBSTEPS.lo, SUBSTEPS.hi)
        if changed:
            state.max_substeps = steps

        imgui.separator_text("fluid and grid")
        changed, ratio = imgui.slider_float("density ratio", state.ratio, RATIO.lo, RATIO.hi, "%.1f",
                                            imgui.SliderFlags_.logarithmic)
        if changed:
            state.ratio = RATIO.clamp(ratio)
        index = self._on_release("N", _nearest(N_CHOICES, state.cells), lambda v: imgui.slider_int(
            "N", v, 0, len(N_CHOICES) - 1, f"{N_CHOICES[v]:,}"))
        if index is not None:
            state.set_cells(N_CHOICES[index])
        imgui.text_disabled(f"grid {self.sim.nx} x {self.sim.ny} = {self.sim.nx * self.sim.ny:,} cells")

        imgui.separator_text("view")
        imgui.text("left mouse:")
        for tool in LEFT_TOOLS:
            imgui.same_line()
            if imgui.radio_button(tool, state.left_tool == tool):
                state.left_tool, state.grabbed = tool, None
        for k, mode in enumerate(RENDER_MODES):
            if k:
                imgui.same_line()
            if imgui.radio_button(mode, state.render_mode == mode):
                state.render_mode = mode
        scale = self.renderer.scale
        if state.render_mode != "phase":
            imgui.text_disabled(f"{scale.label}: {scale.lo:.3g} .. {scale.hi:.3g}")
        if imgui.button("Stop recording (R)" if self.recorder else "Record (R)", imgui.ImVec2(170, 0)):
            self._toggle_recording()
        imgui.same_line()
        if imgui.button("Screenshot (P)", imgui.ImVec2(170, 0)):
            self.screenshot(self._default_name(".png"))
        if self.recorder is not None:
            imgui.text_colored(RED, f"REC {self.recorder.path.name}: {self.recorder.frames} frames")
        elif self.notice:
            imgui.text_wrapped(self.notice)
        if state.compiling:
            imgui.text_colored(YELLOW, state.compiling)
        if state.error:
            imgui.push_style_color(imgui.Col_.text, RED)
            imgui.text_wrapped(state.error)
            imgui.pop_style_color()

    def _on_release(self, key: str, current: Any, draw: Callable[[Any], tuple[bool, Any]]) -> Any:
        """Draw a slider that shows its dragged value but returns it only on release (else None): a new
        grid or solver per drag step would stall the window."""
        _, value = draw(self.pending.get(key, current))
        if imgui.is_item_active():
            self.pending[key] = value
            return None
        self.pending.pop(key, None)
        return value if imgui.is_item_deactivated_after_edit() else None

    def _stats(self) -> None:
        imgui.separator_text("live stats")
        s = self.state.history.last
        fps = imgui.get_io().framerate
        if s is None:
            imgui.text(f"frame 0   {fps:.1f} window fps")
            return
        imgui.text(f"frame {s.frame}   t = {s.time:.3f} s   {s.substeps} substep(s)")
        imgui.text(f"{s.ms_total:.1f} ms/frame   {1e3 / max(s.ms_total, 1e-6):.1f} sim fps   {fps:.1f} window fps")
        imgui.text(f"sim {s.ms_sim:.1f}  |  inference {s.ms_inference:.1f}  |  PCG {s.ms_pcg:.1f}  ms")
        imgui.text(f"{s.solver}: {s.iterations} iterations, residual {s.residual:.1e}")
        if s.fell_back:
            imgui.push_style_color(imgui.Col_.text, RED)
            imgui.text_wrapped(f"FELL BACK: {s.note}")
            imgui.pop_style_color()
        elif not s.converged:
            imgui.text_colored(RED, "not converged")
        else:
            imgui.text_colored(GREEN, "converged")
        imgui.text(f"water volume {s.volume:.4f}")

        traces = self.state.history.traces
        if imgui.begin_table("compare", 5, imgui.TableFlags_.borders_inner_h | imgui.TableFlags_.row_bg):
            for title in ("solver", "frames", "ms", "iters", "fallbacks"):
                imgui.table_setup_column(title)
            imgui.table_headers_row()
            for name, trace in traces.items():
                imgui.table_next_row()
                cells = (name, f"{len(trace)}", f"{trace.array('ms_total').mean():.1f}",
                         f"{trace.array('iterations').mean():.1f}", f"{int(trace.array('fell_back').sum())}")
                for k, text in enumerate(cells):
                    imgui.table_set_column_index(k)
                    imgui.text(text)
            imgui.end_table()

    def _view(self) -> None:
        """The simulation picture, as large as fits above the plots with the domain's aspect; mouse edits."""
        avail = imgui.get_content_region_avail()
        room_w, room_h = avail.x, max(64.0, avail.y - PLOT_HEIGHT - imgui.get_style().item_spacing.y)
        aspect = self.sim.nx / self.sim.ny
        w, h = (room_w, room_w / aspect) if room_w / aspect <= room_h else (room_h * aspect, room_h)
        scale = imgui.get_io().display_framebuffer_scale
        size = (max(2, int(w * scale.x)), max(2, int(h * scale.y)))
        if self.view is None or self.view.size != size:
            if self.view is not None:
                self.view.release()
            self.view = RenderTarget(self.renderer.ctx, size)
        self.renderer.draw(self.view)
        imgui.set_cursor_pos_x(imgui.get_cursor_pos_x() + (room_w - w) / 2)
        imgui.image(imgui.ImTextureRef(self.view.texture.glo), imgui.ImVec2(w, h), imgui.ImVec2(0, 1),
                    imgui.ImVec2(1, 0))
        left = imgui.is_mouse_down(imgui.MouseButton_.left)
        if not left:
            self.state.let_go()
        origin = imgui.get_item_rect_min()
        io = imgui.get_io()
        x, y = view_to_domain((io.mouse_pos.x, io.mouse_pos.y), (origin.x, origin.y), (w, h), aspect)
        hovered = imgui.is_item_hovered()
        try:
            dragging = self.state.left_tool == LEFT_TOOLS[1]
            if left and dragging and (hovered or self.state.grabbed is not None):  # a grabbed body follows
                self.state.drag(self.sim, x, y)                                    # the cursor off the view too
            if not hovered:
                return
            if left and not dragging:
                self.state.pour(self.sim, x, y)
            if imgui.is_mouse_down(imgui.MouseButton_.right):
                self.state.stir(self.sim, x, y, io.mouse_delta.x / w * aspect, -io.mouse_delta.y / h)
        except ValueError as err:
            self.state.error = str(err)

    def _plots(self) -> None:
        traces = self.state.history.traces
        avail = imgui.get_content_region_avail()
        width = avail.x / 2 - imgui.get_style().item_spacing.x / 2
        height = max(PLOT_HEIGHT, avail.y)
        fit = implot.AxisFlags_.auto_fit
        for k, (title, key, unit) in enumerate((("ms / frame (log scale)", "ms_total", "ms"),
                                                ("PCG iterations / frame", "iterations", "iterations"))):
            if k:
                imgui.same_line()
            if implot.begin_plot(title, imgui.ImVec2(width, height)):
                implot.setup_axes("frame", unit, fit)
                values = [trace.array(key) for trace in traces.values()]
                top = max((float(v.max()) for v in values), default=1.0)
                if key == "ms_total":  # solvers differ by orders of magnitude
                    implot.setup_axis_scale(implot.ImAxis_.y1, implot.Scale_.log10)
                    bottom = min((float(v.min()) for v in values), default=1.0)
                    implot.setup_axis_limits(implot.ImAxis_.y1, max(bottom, 1e-3) / 1.3, max(top, 1e-3) * 1.3,
                                             imgui.Cond_.always)
                else:
                    implot.setup_axis_limits(implot.ImAxis_.y1, 0.0, max(top, 1.0) * 1.1, imgui.Cond_.always)
                implot.setup_legend(implot.Location_.north_west)
                for name, trace in traces.items():
                    implot.plot_line(name, trace.array("tick"), trace.array(key))
                for name, trace in traces.items():
                    fell = trace.array("fell_back") > 0
                    if fell.any():
                        implot.plot_scatter("fell back", trace.array("tick")[fell], trace.array(key)[fell],
                                            implot.Spec(marker=implot.Marker_.circle, marker_size=4,
                                                        marker_fill_color=RED, marker_line_color=RED))
                implot.end_plot()


def _nearest(choices: tuple[int, ...], value: int) -> int:
    return min(range(len(choices)), key=lambda k: abs(choices[k] - value))


def run_window(sim: Simulation, record: Optional[str] = None, screenshot: Optional[str] = None,
               frames: Optional[int] = None, render_mode: str = "phase", record_fps: Optional[float] = None,
               stop: Optional[StopRequest] = None) -> int:
    """Open the viewer on `sim`; returns the exit code: 0, 1 (a --frames run whose simulation failed), 2 (no display).

    With `frames`, the window closes after that many frames (saving `screenshot` first); without,
    it runs until closed and saves `screenshot`, if any, on close. A stop request (SIGINT, SIGTERM:
    app.stop) closes the window cleanly; one made before the window opened closes it at once.
    """
    if no_display := missing_display():
        print(no_display, file=sys.stderr)
        return 2
    stop = stop or StopRequest().install()
    viewer = Viewer(sim, ViewerState.from_simulation(sim, render_mode), record, screenshot, frames, record_fps)
    params = hello_imgui.RunnerParams()
    params.app_window_params.window_title = f"htpfluid - {sim.scene.name}"
    params.app_window_params.window_geometry.size = WINDOW_SIZE
    params.app_window_params.restore_previous_geometry = False
    params.imgui_window_params.default_imgui_window_type = hello_imgui.DefaultImGuiWindowType.provide_full_screen_window
    params.ini_disable = True
    params.fps_idling.enable_idling = False

    def post_init() -> None:
        viewer.post_init()
        if stop.requested:
            viewer.request_exit()

    params.callbacks.post_init = post_init
    params.callbacks.show_gui = viewer.gui
    params.callbacks.before_exit = viewer.before_exit
    stop.on_request = lambda: viewer.request_exit() if viewer.opened else None
    try:
        immapp.run(params, immapp.AddOnsParams(with_implot=True))
    except RuntimeError as err:
        if viewer.opened:
            raise
        print(NO_DISPLAY.format(why=f" ({err})"), file=sys.stderr)
        return 2
    finally:
        stop.on_request = None
        viewer.stop_recording()
    return viewer.exit_code
