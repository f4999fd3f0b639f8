"""Two-phase (water/air) flow on a MAC grid with Taichi kernels; the pressure solve goes to `precond`."""
from .scene import Scene, SceneError, load_scene
from .simulation import FrameStats, Simulation, SimulationError

__all__ = ["Scene", "SceneError", "load_scene", "Simulation", "SimulationError", "FrameStats"]
