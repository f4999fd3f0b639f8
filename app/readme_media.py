"""Make the README's pictures in assets/readme/: a GIF of the dam break and a screenshot of the viewer.

Run `xvfb-run -a python -m app.readme_media` (or with a display). The GIF comes from the headless
runner (EGL); the screenshot is the whole window after a few dozen frames, panels and plots included.
"""
from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
from imgui_bundle import hello_imgui

import precond
from sim.scene import load_scene
from sim.simulation import Simulation

from .headless import run_headless
from .state import SCENE_DIR
from .viewer import run_window

OUT = Path(__file__).resolve().parent.parent / "assets" / "readme"
GIF_FRAMES = 150  # 2.5 s of simulated time
GIF_HEIGHT = 240
WINDOW_FRAMES = 45


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    scene = load_scene(SCENE_DIR / "dambreak.yaml", methods=precond.METHODS)
    warm = Simulation.from_scene(scene)
    for _ in range(3):  # compile the kernels first, so the window's plots show no start-up spike
        warm.step()
    code = run_window(Simulation.from_scene(scene), frames=WINDOW_FRAMES)
    if code != 0:
        return code
    iio.imwrite(OUT / "viewer.png", hello_imgui.final_app_window_screenshot())
    print(f"wrote {OUT / 'viewer.png'}")
    # After the window: an EGL context made first would keep GLX from making the window's context current.
    run_headless(Simulation.from_scene(scene), GIF_FRAMES, record=str(OUT / "dambreak.gif"), height=GIF_HEIGHT)
    print(f"wrote {OUT / 'dambreak.gif'}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
