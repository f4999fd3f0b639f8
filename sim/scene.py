"""Scene files: what to simulate, read from YAML with a bounded `yaml.SafeLoader` and validated field by field.

The domain is `nx/ny` wide and 1 high (square cells, h = 1/ny); coordinates are in domain units
with x to the right and y up. Every field but `shapes` is optional; the ranges are those of
`sim.limits`:

    name: dam break                 # text, default: the file name
    description: ...                # text, default ""
    grid: {nx: 128, ny: 64}         # cells along x and y; default 128 x 64
    ratio: 1000                     # rho_water / rho_air; default 1000
    gravity: -9.81                  # vertical acceleration in m/s^2; default -9.81
    boundary: {top: wall}           # wall | open (open: pressure 0 on the top faces); other sides are walls
    shapes:                         # applied in order onto an all-air domain; default []
      - {type: box, min: [x, y], max: [x, y], phase: water}
      - {type: circle, center: [x, y], radius: r, phase: air, velocity: [u, v]}
      - {type: halfplane, point: [x, y], normal: [nx, ny], phase: water}   # fills the side against the normal
      - {type: polygon, points: [[x, y], [x, y], [x, y], ...], phase: solid}  # 3 to POLYGON_POINTS corners
      - {type: box, min: [x, y], max: [x, y], phase: solid, motion: {amplitude: [ax, ay], period: T}}
    solver: {method: mgpcg, tol: 1e-6, maxiter: null, compiled: false}   # method: one of the names the caller allows
    time: {frame_dt: 1/60, cfl: 3, max_substeps: 8}
    volume_correction: true         # keep the water volume by a global level-set shift each frame
    transport: semi_lagrangian      # velocity transport (TRANSPORTS)
    interface: level_set            # interface capturing (INTERFACES): level_set or particle_level_set

Shapes: `phase` is water (default), air or solid; `velocity` (m/s, optional) sets the initial velocity
inside a water or air shape. Water and air shapes also clear the solid under them, so a later
air box carves a hole or a channel out of an earlier solid. A polygon's inside is given by the
even-odd rule. A solid box or circle with `motion` is a body (sim.solids): it moves as a kinematic
boundary, `motion: free` where only the mouse moves it, `{amplitude: [ax, ay], period: T}` for
the oscillation x(t) = x0 + a sin(2 pi t / T) (a wave maker), which the mouse can also move about. Numbers may be written `1e-6` or `1/60` (YAML 1.1 would read those as text).
The file is read as sim.bounded_yaml describes (safe loading within size, depth and alias bounds).
The solver names come from the caller (the solver registry, `precond.METHODS`), so reading a
scene needs no solver code. A bad file raises `SceneError` with one line naming the file, the
field and what was expected.
"""
from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Collection, Optional, Union

import numpy as np
import yaml

from . import bounded_yaml, limits
from .limits import Range, brief, cut

Vec2 = tuple[float, float]
PHASES = ("water", "air", "solid")
TOPS = ("wall", "open")
TRANSPORTS = ("semi_lagrangian", "apic")  # velocity transport schemes (sim.advect, sim.apic)
INTERFACES = ("level_set", "particle_level_set")  # interface capturing: the level set alone, or with marker particles (sim.pls)
POLYGON_POINTS = 256  # corners a polygon may have
MAX_BODIES = 8  # moving solids (shapes with motion) in a scene, and bodies the mouse may add
_NUMBER_TEXT = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")
_FRACTION_TEXT = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*/\s*(\d+\.?\d*|\.\d+)\s*")


class SceneError(ValueError):
    """A scene file (or an override of it) is unreadable or invalid; the message is one line."""


@dataclass(frozen=True)
class Grid:
    """Cells along x and y; the domain is nx/ny wide and 1 high."""

    nx: int = 128
    ny: int = 64


@dataclass(frozen=True)
class Boundary:
    """Top side: 'wall' (no flow) or 'open' (pressure 0). Left, right and bottom are walls."""

    top: str = "wall"


@dataclass(frozen=True)
class Motion:
    """A body's scripted motion about where it is placed: x(t) = x0 + amplitude sin(2 pi t / period);
    amplitude (0, 0) is a free body, moved only by the mouse."""

    amplitude: Vec2 = (0.0, 0.0)
    period: float = 1.0

    def offset(self, t: float) -> Vec2:
        s = math.sin(2.0 * math.pi * t / self.period)
        return self.amplitude[0] * s, self.amplitude[1] * s


@dataclass(frozen=True)
class Box:
    """Axis-aligned box from `min` to `max` (domain units)."""

    min: Vec2
    max: Vec2
    phase: str = "water"
    velocity: Optional[Vec2] = None
    motion: Optional[Motion] = None

    def sdf(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance, negative inside."""
        cx, cy = (self.min[0] + self.max[0]) / 2, (self.min[1] + self.max[1]) / 2
        dx = np.abs(x - cx) - (self.max[0] - self.min[0]) / 2
        dy = np.abs(y - cy) - (self.max[1] - self.min[1]) / 2
        outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
        return outside + np.minimum(np.maximum(dx, dy), 0.0)


@dataclass(frozen=True)
class Circle:
    """Disc of `radius` around `center` (domain units)."""

    center: Vec2
    radius: float
    phase: str = "water"
    velocity: Optional[Vec2] = None
    motion: Optional[Motion] = None

    def sdf(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance, negative inside."""
        return np.hypot(x - self.center[0], y - self.center[1]) - self.radius


@dataclass(frozen=True)
class HalfPlane:
    """Everything on the far side of the line through `point` from its `normal` (e.g. normal [0, 1]: below)."""

    point: Vec2
    normal: Vec2
    phase: str = "water"
    velocity: Optional[Vec2] = None

    def sdf(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance, negative inside."""
        n = math.hypot(*self.normal)
        return ((x - self.point[0]) * self.normal[0] + (y - self.point[1]) * self.normal[1]) / n


@dataclass(frozen=True)
class Polygon:
    """A closed polygon through `points` (domain units; inside by the even-odd rule)."""

    points: tuple[Vec2, ...]
    phase: str = "water"
    velocity: Optional[Vec2] = None

    def sdf(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance, negative inside: distance to the nearest edge, signed by crossing parity."""
        x, y = np.broadcast_arrays(x, y)
        dist = np.full(x.shape, np.inf)
        inside = np.zeros(x.shape, dtype=bool)
        for (ax, ay), (bx, by) in zip(self.points, self.points[1:] + self.points[:1]):
            ex, ey = bx - ax, by - ay
            t = np.clip(((x - ax) * ex + (y - ay) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
            dist = np.minimum(dist, np.hypot(x - ax - t * ex, y - ay - t * ey))
            crosses = (ay > y) != (by > y)
            with np.errstate(divide="ignore", invalid="ignore"):
                inside ^= crosses & (x < ax + (y - ay) * ex / np.where(ey == 0.0, 1.0, ey))
        return np.where(inside, -dist, dist)


def polygon_area(points: tuple[Vec2, ...]) -> float:
    """The shoelace area (signed by orientation)."""
    return 0.5 * sum(ax * by - bx * ay for (ax, ay), (bx, by) in zip(points, points[1:] + points[:1]))


Shape = Union[Box, Circle, HalfPlane, Polygon]


def is_body(shape: Shape) -> bool:
    """A moving solid (a box or circle with motion), as opposed to the fixed geometry."""
    return getattr(shape, "motion", None) is not None


@dataclass(frozen=True)
class SolverSettings:
    """Pressure solver: a precond method name, PCG relative tolerance, iteration cap (None: the solver's
    default), and whether PCG runs as compiled chunks (precond.Solver's `compiled`)."""

    method: str = "mgpcg"
    tol: float = 1e-6
    maxiter: Optional[int] = None
    compiled: bool = False


@dataclass(frozen=True)
class TimeSettings:
    """Frame length (s), CFL number (cells per substep) and the most substeps one frame may take."""

    frame_dt: float = 1.0 / 60.0
    cfl: float = 3.0
    max_substeps: int = 8


@dataclass(frozen=True)
class Scene:
    """A validated scene; `source` is the file it came from (for messages)."""

    name: str
    description: str = ""
    grid: Grid = field(default_factory=Grid)
    ratio: float = 1000.0
    gravity: float = -9.81
    boundary: Boundary = field(default_factory=Boundary)
    shapes: tuple[Shape, ...] = ()
    solver: SolverSettings = field(default_factory=SolverSettings)
    time: TimeSettings = field(default_factory=TimeSettings)
    volume_correction: bool = True
    transport: str = TRANSPORTS[0]
    interface: str = INTERFACES[0]
    source: str = "<scene>"

    @property
    def width(self) -> float:
        """Domain width in domain units (the height is 1)."""
        return self.grid.nx / self.grid.ny

    @property
    def open_top(self) -> bool:
        return self.boundary.top == "open"

    def with_overrides(self, *, methods: Collection[str], grid: Optional[tuple[int, int]] = None,
                       ratio: Optional[float] = None, solver: Optional[str] = None, tol: Optional[float] = None,
                       maxiter: Optional[int] = None, compiled: Optional[bool] = None) -> "Scene":
        """A copy with command-line overrides applied (None keeps the scene's value); bad values raise SceneError.

        `solver` must be one of `methods`, the solver registry's names."""
        r = _Reader("command line")
        out = self
        if grid is not None:
            out = replace(out, grid=Grid(r.integer(grid[0], "--grid nx", limits.GRID_SIDE),
                                         r.integer(grid[1], "--grid ny", limits.GRID_SIDE)))
        if ratio is not None:
            out = replace(out, ratio=r.number(ratio, "--ratio", limits.RATIO))
        settings = out.solver
        if solver is not None:
            settings = replace(settings, method=r.choice(solver, "--solver", tuple(methods)))
        if tol is not None:
            settings = replace(settings, tol=r.number(tol, "--tol", limits.TOLERANCE))
        if maxiter is not None:
            settings = replace(settings, maxiter=r.integer(maxiter, "--maxiter", limits.MAXITER))
        if compiled is not None:
            settings = replace(settings, compiled=r.boolean(compiled, "--compiled"))
        return replace(out, solver=settings)


class _Reader:
    """Typed, range-checked reads from the parsed YAML; every failure names `source` and the dotted field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, path: str, expected: str, got: Any) -> SceneError:
        return SceneError(f"{self.source}: {path}: expected {expected}, got {brief(got)}")

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.error(path, "a mapping of " + ", ".join(allowed), value)
        for key in value:
            if key not in allowed:
                name = cut(key) if isinstance(key, str) else brief(key)
                where = f"{path}.{name}" if path != "(scene)" else name
                raise SceneError(f"{self.source}: {where}: unknown field; expected one of {', '.join(allowed)}")
        return value

    def integer(self, value: Any, path: str, limit: Range) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value not in limit:
            raise self.error(path, limit.expected(), value)
        return int(value)

    def number(self, value: Any, path: str, limit: Range) -> float:
        v = _to_number(value)
        if v is None or v not in limit:
            raise self.error(path, limit.expected(), value)
        return v

    def choice(self, value: Any, path: str, options: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in options:
            raise self.error(path, "one of " + ", ".join(options), value)
        return value

    def text(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or len(value) > limits.TEXT_CHARS:
            raise self.error(path, f"text of at most {limits.TEXT_CHARS} characters", value)
        return value

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(path, "true or false", value)
        return value

    def vec2(self, value: Any, path: str, limit: Range) -> Vec2:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise self.error(path, f"a pair [x, y] of numbers {limit.span()}", value)
        return (self.number(value[0], f"{path}[0]", limit), self.number(value[1], f"{path}[1]", limit))


def _to_number(value: Any) -> Optional[float]:
    """A finite float from an int, a float, or text like '1e-6' or '1/60'; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value.bit_length() > 1024:  # beyond float's range
        return None
    if isinstance(value, (int, float)):
        v = float(value)
    elif isinstance(value, str) and _NUMBER_TEXT.fullmatch(value):
        v = float(value)
    elif isinstance(value, str) and _FRACTION_TEXT.fullmatch(value):
        num, den = _FRACTION_TEXT.fullmatch(value).groups()
        if float(den) == 0.0:
            return None
        v = float(num) / float(den)
    else:
        return None
    return v if math.isfinite(v) else None


_SHAPE_KEYS = {
    "box": ("type", "min", "max", "phase", "velocity", "motion"),
    "circle": ("type", "center", "radius", "phase", "velocity", "motion"),
    "halfplane": ("type", "point", "normal", "phase", "velocity"),
    "polygon": ("type", "points", "phase", "velocity"),
}
_REQUIRED = {"box": ("min", "max"), "circle": ("center", "radius"), "halfplane": ("point", "normal"),
             "polygon": ("points",)}


def _motion(r: _Reader, raw: Any, path: str) -> Motion:
    if raw == "free":
        return Motion()
    m = r.mapping(raw, path, ("amplitude", "period")) if isinstance(raw, dict) else None
    if m is None:
        raise r.error(path, "free or a mapping {amplitude: [ax, ay], period: T}", raw)
    for key in ("amplitude", "period"):
        if key not in m:
            raise SceneError(f"{r.source}: {path}.{key}: missing; a scripted motion needs amplitude and period")
    return Motion(r.vec2(m["amplitude"], f"{path}.amplitude", limits.COORDINATE),
                  r.number(m["period"], f"{path}.period", limits.PERIOD))


def _points(r: _Reader, raw: Any, path: str) -> tuple[Vec2, ...]:
    expected = f"a list of 3 to {POLYGON_POINTS} corners [x, y]"
    if not isinstance(raw, list) or not 3 <= len(raw) <= POLYGON_POINTS:
        raise r.error(path, expected, raw)
    points = tuple(r.vec2(p, f"{path}[{k}]", limits.COORDINATE) for k, p in enumerate(raw))
    if abs(polygon_area(points)) <= 1e-12:
        raise r.error(path, "corners that enclose an area (not all on one line)", raw)
    return points


def _shape(r: _Reader, raw: Any, path: str) -> Shape:
    if not isinstance(raw, dict):
        raise r.error(path, "a mapping with type: " + " | ".join(_SHAPE_KEYS), raw)
    if "type" not in raw:
        raise SceneError(f"{r.source}: {path}.type: missing; expected one of {', '.join(_SHAPE_KEYS)}")
    kind = r.choice(raw["type"], f"{path}.type", tuple(_SHAPE_KEYS))
    m = r.mapping(raw, path, _SHAPE_KEYS[kind])
    for key in _REQUIRED[kind]:
        if key not in m:
            raise SceneError(f"{r.source}: {path}.{key}: missing; a {kind} needs {' and '.join(_REQUIRED[kind])}")
    phase = r.choice(m.get("phase", "water"), f"{path}.phase", PHASES)
    velocity = r.vec2(m["velocity"], f"{path}.velocity", limits.VELOCITY) if m.get("velocity") is not None else None
    if velocity is not None and phase == "solid":
        raise r.error(f"{path}.velocity", "no velocity on a solid (a moving solid takes motion)", m["velocity"])
    motion = _motion(r, m["motion"], f"{path}.motion") if m.get("motion") is not None else None
    if motion is not None and phase != "solid":
        raise r.error(f"{path}.motion", f"motion only on a solid (this {kind} is {phase})", m["motion"])
    if kind == "box":
        lo, hi = r.vec2(m["min"], f"{path}.min", limits.COORDINATE), r.vec2(m["max"], f"{path}.max", limits.COORDINATE)
        if not (lo[0] < hi[0] and lo[1] < hi[1]):
            raise r.error(f"{path}.max", f"a corner above and to the right of min {list(lo)}", m["max"])
        return Box(lo, hi, phase, velocity, motion)
    if kind == "circle":
        return Circle(r.vec2(m["center"], f"{path}.center", limits.COORDINATE),
                      r.number(m["radius"], f"{path}.radius", limits.RADIUS), phase, velocity, motion)
    if kind == "polygon":
        return Polygon(_points(r, m["points"], f"{path}.points"), phase, velocity)
    normal = r.vec2(m["normal"], f"{path}.normal", limits.COORDINATE)
    if normal == (0.0, 0.0):
        raise r.error(f"{path}.normal", "a nonzero direction [nx, ny]", m["normal"])
    return HalfPlane(r.vec2(m["point"], f"{path}.point", limits.COORDINATE), normal, phase, velocity)


_TOP_KEYS = ("name", "description", "grid", "ratio", "gravity", "boundary", "shapes", "solver", "time",
             "volume_correction", "transport", "interface")


def parse_scene(data: Any, source: str, *, methods: Collection[str], default_name: str = "scene") -> Scene:
    """Validate parsed YAML `data` into a Scene; `source` names it in error messages, `methods` are the
    solver names `solver.method` may take."""
    r = _Reader(source)
    if data is None:
        raise SceneError(f"{source}: (scene): expected a mapping of fields ({', '.join(_TOP_KEYS)}), got an empty file")
    m = r.mapping(data, "(scene)", _TOP_KEYS)
    g = r.mapping(m.get("grid", {}), "grid", ("nx", "ny"))
    grid = Grid(r.integer(g.get("nx", Grid.nx), "grid.nx", limits.GRID_SIDE),
                r.integer(g.get("ny", Grid.ny), "grid.ny", limits.GRID_SIDE))
    b = r.mapping(m.get("boundary", {}), "boundary", ("top",))
    s = r.mapping(m.get("solver", {}), "solver", ("method", "tol", "maxiter", "compiled"))
    maxiter = s.get("maxiter")
    solver = SolverSettings(r.choice(s.get("method", SolverSettings.method), "solver.method", tuple(methods)),
                            r.number(s.get("tol", SolverSettings.tol), "solver.tol", limits.TOLERANCE),
                            None if maxiter is None else r.integer(maxiter, "solver.maxiter", limits.MAXITER),
                            r.boolean(s.get("compiled", SolverSettings.compiled), "solver.compiled"))
    t = r.mapping(m.get("time", {}), "time", ("frame_dt", "cfl", "max_substeps"))
    time = TimeSettings(r.number(t.get("frame_dt", TimeSettings.frame_dt), "time.frame_dt", limits.FRAME_DT),
                        r.number(t.get("cfl", TimeSettings.cfl), "time.cfl", limits.CFL),
                        r.integer(t.get("max_substeps", TimeSettings.max_substeps), "time.max_substeps",
                                  limits.SUBSTEPS))
    shapes = m.get("shapes", [])
    if not isinstance(shapes, list):
        raise r.error("shapes", "a list of shapes", shapes)
    shapes = tuple(_shape(r, raw, f"shapes[{k}]") for k, raw in enumerate(shapes))
    if sum(is_body(shape) for shape in shapes) > MAX_BODIES:
        raise r.error("shapes", f"at most {MAX_BODIES} solids with motion",
                      f"{sum(is_body(shape) for shape in shapes)} of them")
    return Scene(
        name=r.text(m.get("name", default_name), "name"),
        description=r.text(m.get("description", ""), "description"),
        grid=grid,
        ratio=r.number(m.get("ratio", Scene.ratio), "ratio", limits.RATIO),
        gravity=r.number(m.get("gravity", Scene.gravity), "gravity", limits.GRAVITY),
        boundary=Boundary(r.choice(b.get("top", Boundary.top), "boundary.top", TOPS)),
        shapes=shapes,
        solver=solver,
        time=time,
        volume_correction=r.boolean(m.get("volume_correction", True), "volume_correction"),
        transport=r.choice(m.get("transport", Scene.transport), "transport", TRANSPORTS),
        interface=r.choice(m.get("interface", Scene.interface), "interface", INTERFACES),
        source=source,
    )


def read_scene_text(path: Union[str, Path]) -> str:
    """The text of a scene file: a regular file of at most limits.SCENE_BYTES, in UTF-8.

    Checked on the open file before reading (a device, a FIFO or a directory is never read), and
    read to the bound only; anything else raises SceneError naming the file."""
    source = str(path)

    def refuse(got: str) -> SceneError:
        return SceneError(f"{source}: (file): expected a regular UTF-8 scene file of at most "
                          f"{limits.SCENE_BYTES:,} bytes, got {got}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens without waiting for a writer
    except OSError as err:
        raise refuse(f"an error ({err.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise refuse("a directory" if stat.S_ISDIR(mode) else "a device, FIFO or socket")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(limits.SCENE_BYTES + 1)
        except OSError as err:
            raise refuse(f"an error ({err.strerror})") from None
    if len(data) > limits.SCENE_BYTES:
        raise refuse("a larger file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise refuse(f"bytes that are not UTF-8 (at byte {err.start})") from None


def load_scene(path: Union[str, Path], *, methods: Collection[str]) -> Scene:
    """Read and validate a scene file (`methods`: the solver names it may choose); any problem raises
    SceneError naming the file and the field (or the line, for YAML that does not parse or breaks
    sim.bounded_yaml's bounds)."""
    source = str(path)
    text = read_scene_text(path)
    try:
        data = bounded_yaml.safe_load(text)
    except bounded_yaml.BoundError as err:
        raise SceneError(f"{source}: line {err.mark.line + 1}, column {err.mark.column + 1}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(file)"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise SceneError(f"{source}: {where}: expected valid YAML, got a syntax error ({problem})") from None
    return parse_scene(data, source, methods=methods, default_name=Path(path).stem)
