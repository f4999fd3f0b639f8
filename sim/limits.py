"""Every range an input is checked against, in one place: the command line, the scene loader, the
simulation's setters and the viewer's sliders all read them from here.

A `Range` also writes the "expected ..." half of an error message, so every check words its
limit the same way.
"""
from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass
from typing import Optional, Union

Number = Union[int, float]


@dataclass(frozen=True)
class Range:
    """Values from `lo` to `hi` (None: no upper end); `above`: `lo` itself is excluded."""

    lo: Number
    hi: Optional[Number] = None
    integer: bool = False
    above: bool = False

    @property
    def noun(self) -> str:
        return "an integer" if self.integer else "a number"

    def __contains__(self, value: Number) -> bool:
        low_ok = value > self.lo if self.above else value >= self.lo
        return low_ok and (self.hi is None or value <= self.hi)

    def span(self) -> str:
        """'from 8 to 2048', 'from 1 up' or 'above 0 and at most 0.1'."""
        lo = self._format(self.lo)
        if self.above:
            return f"above {lo}" + ("" if self.hi is None else f" and at most {self._format(self.hi)}")
        return f"from {lo}" + (" up" if self.hi is None else f" to {self._format(self.hi)}")

    def expected(self) -> str:
        """What a message says was expected, e.g. 'an integer from 8 to 2048'."""
        return f"{self.noun} {self.span()}"

    def clamp(self, value: Number) -> Number:
        """The nearest value within the range (for sliders)."""
        return max(self.lo, value if self.hi is None else min(self.hi, value))

    def parse(self, text: str) -> Number:
        """A command-line value; ValueError with the one-line reason if it is not a number in range."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise ValueError(f"expected {self.noun}, got {brief(text)}") from None
        if value not in self:
            raise ValueError(f"expected {self.expected()}, got {cut(text)}")
        return value

    def _format(self, value: Number) -> str:
        return str(int(value)) if self.integer else f"{value:g}"


GRID_SIDE = Range(8, 2048, integer=True)  # cells along x or y
CELLS = Range(1024, 262_144, integer=True)  # N = nx * ny offered by the viewer's slider
RATIO = Range(1.0, 1000.0)  # rho_water / rho_air
TOLERANCE = Range(1e-14, 0.1)  # PCG relative residual
MAXITER = Range(1, 1_000_000, integer=True)  # PCG iteration cap
GRAVITY = Range(-100.0, 100.0)  # m/s^2
FRAME_DT = Range(0.0, 0.1, above=True)  # simulated seconds per frame
CFL = Range(0.1, 10.0)  # cells a substep may move the fluid; the top is the most the advection tolerates
SUBSTEPS = Range(1, 64, integer=True)  # substep cap per frame
COORDINATE = Range(-100.0, 100.0)  # shape positions and normals, domain units
RADIUS = Range(0.0, 100.0, above=True)  # circle radius, domain units
VELOCITY = Range(-100.0, 100.0)  # initial shape velocity components, m/s
PERIOD = Range(0.0, 1000.0, above=True)  # a body's oscillation period, s
BODY_SPEED = Range(0.0, 20.0)  # how fast the mouse may move a body, m/s (faster drags are slowed to this)
FRAMES = Range(1, 1_000_000, integer=True)  # frame counts on the command line (--frames, --dump-every)
RECORD_FPS = Range(1.0, 240.0)  # frames per second of a recording (--record-fps)
PUSH = Range(-100.0, 100.0)  # velocity one push adds (Simulation.push), m/s
STATE_SPEED = Range(0.0, 1e5)  # |u|, |v| of a sane state, m/s: beyond it the state is a blow-up
DEVICES = ("cpu", "cuda")

# Scene files: what the loader reads at most, so that no file can take the machine down.
SCENE_BYTES = 1_000_000  # file size
SCENE_DEPTH = 32  # nesting of mappings and lists (a scene needs 4)
SCENE_NODES = 100_000  # values in the document with every alias expanded
TEXT_CHARS = 1_000  # a text field (name, description)
SHOWN_CHARS = 40  # how much of a bad value an error message quotes

_GRID_TEXT = re.compile(r"(\d{1,9})[xX](\d{1,9})")


def cut(text: str) -> str:
    """`text` cut to SHOWN_CHARS, for error messages (never the whole of a huge value)."""
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def _bounded_repr() -> reprlib.Repr:
    r = reprlib.Repr()
    r.maxlevel, r.maxdict, r.maxlist, r.maxtuple = 2, 3, 3, 3
    r.maxstring = r.maxlong = r.maxother = SHOWN_CHARS
    return r


_REPR = _bounded_repr()


def brief(value: object) -> str:
    """A repr of `value` for error messages, at most about SHOWN_CHARS long: long texts and containers are
    cut while the repr is built (reprlib), so no value is ever written out whole."""
    return cut(_REPR.repr(value))


def parse_grid(text: str) -> tuple[int, int]:
    """'128x64' -> (128, 64); ValueError with the one-line reason for other text or sides out of GRID_SIDE."""
    m = _GRID_TEXT.fullmatch(text.strip())
    if not m:
        raise ValueError(f"expected NXxNY such as 128x64, got {brief(text)}")
    nx, ny = int(m[1]), int(m[2])
    if nx not in GRID_SIDE or ny not in GRID_SIDE:
        raise ValueError(f"expected each side {GRID_SIDE.span()} cells, got {nx}x{ny}")
    return nx, ny
