"""The viewer's colour lookup tables, generated from a few control points (run `python -m app.colormaps`).

Writes `assets/colormaps.png`: one 256-pixel row per entry of COLORMAPS, in that order; the
fragment shader picks a row by index. The control points sample well-known perceptual maps
(viridis, inferno, a blue "ocean" ramp and a cool-warm diverging map).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

LUT_PATH = Path(__file__).resolve().parent.parent / "assets" / "colormaps.png"
LUT_WIDTH = 256

# name -> evenly spaced sRGB control points (hex)
COLORMAPS: dict[str, tuple[str, ...]] = {
    "ocean": ("#f4f7fb", "#c6dbef", "#6baed6", "#2171b5", "#08306b"),
    "viridis": ("#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58",
                "#b5de2b", "#fde725"),
    "inferno": ("#000004", "#1b0c41", "#4a0c6b", "#781c6d", "#a52c60", "#cf4446", "#ed6925", "#fb9b06",
                "#f7d13d", "#fcffa4"),
    "coolwarm": ("#3b4cc0", "#7396f5", "#b0cbfc", "#dddddd", "#f6bfa6", "#e7745b", "#b40426"),
}


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[k:k + 2], 16) for k in (1, 3, 5)], dtype=np.float64)


def lut(name: str, width: int = LUT_WIDTH) -> np.ndarray:
    """A (width, 3) uint8 ramp through the control points of `name`, linear between them."""
    points = np.stack([_rgb(c) for c in COLORMAPS[name]])
    t = np.linspace(0.0, 1.0, width)
    knots = np.linspace(0.0, 1.0, len(points))
    return np.stack([np.interp(t, knots, points[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


def lut_image() -> np.ndarray:
    """All maps stacked: (len(COLORMAPS), LUT_WIDTH, 3) uint8, the content of assets/colormaps.png."""
    return np.stack([lut(name) for name in COLORMAPS])


def main() -> None:
    import imageio.v3 as iio
    LUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(LUT_PATH, lut_image())
    print(f"wrote {LUT_PATH}")


if __name__ == "__main__":
    main()
