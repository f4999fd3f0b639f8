"""System dumps: Poisson systems written by the simulator as .npz, read back for benchmarks and training.

`precond` never imports the simulator; it asks the command line for systems instead
(`main.py SCENE --headless --dump-systems DIR`), one file per frame holding float64 arrays
`diag, cx, cy` shaped (nx, ny) and the right-hand side `b` shaped (nx * ny,).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from .system import PoissonSystem

REPO = Path(__file__).resolve().parent.parent


def save_system(path: str | Path, system: PoissonSystem, b: torch.Tensor, **meta: float | str) -> None:
    """Write one system (and its right-hand side) as an .npz dump."""
    arrays = {k: getattr(system, k).detach().cpu().double().numpy() for k in ("diag", "cx", "cy")}
    np.savez_compressed(path, b=b.detach().cpu().double().numpy().reshape(-1), **arrays,
                        **{f"meta_{k}": np.asarray(v) for k, v in meta.items()})


def load_system(path: str | Path, device: str = "cpu",
                dtype: torch.dtype = torch.float64) -> tuple[PoissonSystem, torch.Tensor, dict]:
    """Read a dump; a file that is not one gets a ValueError naming it and what was missing."""
    try:
        with np.load(path) as z:
            missing = {"diag", "cx", "cy", "b"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: not a system dump, missing arrays {sorted(missing)}")
            t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)
            system = PoissonSystem(t(z["diag"]), t(z["cx"]), t(z["cy"]))
            meta = {k[5:]: z[k].item() for k in z.files if k.startswith("meta_")}
            return system, t(z["b"]), meta
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read system dump ({err})") from err


def dump_scene(scene: str | Path, out_dir: str | Path, frames: int, grid: tuple[int, int] | None = None,
               ratio: float | None = None, every: int = 1) -> list[Path]:
    """Run the simulator headless on `scene` and return the dumps of frames every..frames."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO / "main.py"), str(scene), "--headless", "--quiet", "--frames", str(frames),
           "--dump-systems", str(out), "--dump-every", str(every)]
    if grid is not None:
        cmd += ["--grid", f"{grid[0]}x{grid[1]}"]
    if ratio is not None:
        cmd += ["--ratio", f"{ratio:g}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"simulator failed on {scene} ({' '.join(cmd[1:])}):\n{proc.stderr.strip()[-2000:]}")
    return sorted(out.glob("*.npz"))
