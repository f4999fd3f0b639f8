"""Draw a simulation field with moderngl: upload it as a float texture, colour it in a fragment shader.

The same `Renderer` serves the window (drawing into a texture that imgui shows) and headless runs
(a standalone EGL context); `RenderTarget.read()` gives the picture back as an RGB array for
screenshots and recordings. Colour ranges are computed with numpy per frame, never per pixel in Python.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import moderngl
import numpy as np

from .colormaps import COLORMAPS, LUT_PATH

SHADER_DIR = Path(__file__).resolve().parent.parent / "assets" / "shaders"
RENDER_MODES = ("phase", "density", "pressure", "speed", "vorticity")
MODE_COLORMAP = {"density": "ocean", "pressure": "viridis", "speed": "inferno", "vorticity": "coolwarm"}
PICTURE_HEIGHT = 540
_ROBUST_SAMPLES = 65536  # vorticity's range is a percentile over at most this many cells


@dataclass(frozen=True)
class ColorScale:
    """What the colours of a mode mean: `label` from `lo` (first colour) to `hi` (last colour)."""

    label: str
    lo: float
    hi: float


def picture_size(nx: int, ny: int, height: int = PICTURE_HEIGHT) -> tuple[int, int]:
    """(width, height) in pixels, both even (video encoders need that), with the grid's aspect ratio."""
    h = max(2, height - height % 2)
    w = max(2, 2 * round(h * nx / ny / 2))
    return w, h


def mode_scalar(fields: dict[str, np.ndarray], mode: str) -> tuple[np.ndarray, ColorScale]:
    """The (nx, ny) scalar a render mode colours, and the range mapped onto its colormap."""
    if mode == "phase":
        return fields["phi"], ColorScale("water / air", -1.0, 1.0)
    if mode == "density":
        value = np.log10(np.maximum(fields["rho"], 1e-30))
        return value, ColorScale("log10 density", float(value.min()), max(float(value.max()), float(value.min()) + 1e-3))
    if mode == "pressure":
        value = fields["pressure"]
        return value, ColorScale("pressure", float(value.min()), max(float(value.max()), float(value.min()) + 1e-6))
    if mode == "speed":
        value = fields["speed"]
        return value, ColorScale("speed (m/s)", 0.0, max(float(value.max()), 1e-6))
    if mode == "vorticity":
        value = fields["vorticity"]
        flat = value.ravel()
        sample = flat[:: max(1, flat.size // _ROBUST_SAMPLES)]
        m = max(float(np.percentile(np.abs(sample), 99.0)), 1e-6)
        return value, ColorScale("vorticity (1/s)", -m, m)
    raise ValueError(f"render mode: expected one of {', '.join(RENDER_MODES)}, got {mode!r}")


def create_offscreen_context() -> moderngl.Context:
    """A standalone GL 3.3 context for headless rendering: EGL (no display needed), else the platform default."""
    try:
        return moderngl.create_standalone_context(require=330, backend="egl")
    except Exception as egl_error:  # glcontext raises bare Exception when EGL is missing
        try:
            return moderngl.create_standalone_context(require=330)
        except Exception as err:
            raise RuntimeError(f"no off-screen OpenGL context: EGL failed ({egl_error}); default failed ({err})") from err


class RenderTarget:
    """An off-screen framebuffer with a colour texture; `read()` returns its picture, top row first."""

    def __init__(self, ctx: moderngl.Context, size: tuple[int, int]) -> None:
        self.size = size
        self.texture = ctx.texture(size, 3)
        self.texture.filter = (moderngl.LINEAR, moderngl.LINEAR)
        self.fbo = ctx.framebuffer(color_attachments=[self.texture])

    def read(self) -> np.ndarray:
        """(height, width, 3) uint8 RGB."""
        w, h = self.size
        data = self.fbo.read(components=3, alignment=1)
        return np.frombuffer(data, dtype=np.uint8).reshape(h, w, 3)[::-1].copy()

    def release(self) -> None:
        self.fbo.release()
        self.texture.release()


class Renderer:
    """`upload(fields, mode)` once per frame, then `draw(target)` into any number of targets."""

    def __init__(self, ctx: moderngl.Context) -> None:
        self.ctx = ctx
        self.program = ctx.program(vertex_shader=(SHADER_DIR / "field.vert").read_text(),
                                   fragment_shader=(SHADER_DIR / "field.frag").read_text())
        lut = np.ascontiguousarray(iio.imread(LUT_PATH)[..., :3])
        self.lut = ctx.texture((lut.shape[1], lut.shape[0]), 3, lut.tobytes())
        self.lut.filter = (moderngl.LINEAR, moderngl.LINEAR)
        self.lut.repeat_x = self.lut.repeat_y = False
        self.vao = ctx.vertex_array(self.program, [])
        self.field: moderngl.Texture | None = None
        self.scale = ColorScale("", 0.0, 1.0)
        self._rows = list(COLORMAPS)
        self.program["u_field"] = 0
        self.program["u_lut"] = 1

    def upload(self, fields: dict[str, np.ndarray], mode: str) -> ColorScale:
        """Send phi, the mode's scalar and the solid cells to the GPU (one RGB32F texture, rows along y);
        returns the colour scale."""
        scalar, self.scale = mode_scalar(fields, mode)
        phi = fields["phi"]
        nx, ny = phi.shape
        if self.field is None or self.field.size != (nx, ny):
            if self.field is not None:
                self.field.release()
            self.field = self.ctx.texture((nx, ny), 3, dtype="f4")
            self.field.filter = (moderngl.LINEAR, moderngl.LINEAR)
            self.field.repeat_x = self.field.repeat_y = False
        texels = np.empty((ny, nx, 3), dtype=np.float32)
        texels[..., 0] = phi.T
        texels[..., 1] = scalar.T
        texels[..., 2] = fields["solid"].T
        self.field.write(texels)
        self.program["u_phase"] = int(mode == "phase")
        if mode != "phase":
            self.program["u_lut_row"] = (self._rows.index(MODE_COLORMAP[mode]) + 0.5) / len(self._rows)
        self.program["u_range"] = (self.scale.lo, self.scale.hi)
        return self.scale

    def draw(self, target: RenderTarget) -> None:
        """Colour the uploaded field into `target`, leaving the previously bound framebuffer bound."""
        if self.field is None:
            raise RuntimeError("Renderer.draw before upload: no field to draw")
        previous = self.ctx.fbo
        target.fbo.use()
        self.lut.use(1)
        self.field.use(0)
        self.vao.render(moderngl.TRIANGLE_STRIP, vertices=4)
        if previous is not None:  # a standalone context starts with none bound
            previous.use()

    def picture(self, size: tuple[int, int], target: RenderTarget | None = None) -> tuple[np.ndarray, RenderTarget]:
        """Draw the uploaded field at `size` and read it back; reuses `target` when it has that size."""
        if target is None or target.size != size:
            if target is not None:
                target.release()
            target = RenderTarget(self.ctx, size)
        self.draw(target)
        return target.read(), target
