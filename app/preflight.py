"""What a run needs from its surroundings, checked before anything is built: output paths that can be
written and are of the right kind, off-screen OpenGL for headless pictures, a display for the window.

Every output is checked the same way, whatever writes it later: a file must be new in a writable
directory or an existing regular file that may be overwritten (never a directory, a device or a
file of /proc), with the extension its format needs; a directory must exist or be creatable, and
accept a new file. A refusal is an `OutputError` with one line naming the flag, the path and what
was expected. The same error ends a run whose write fails later (a full disk).

Imports neither Taichi nor a solver, so a refusal comes before either starts.
"""
from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Optional

RECORD_SUFFIXES = (".mp4", ".gif")
SCREENSHOT_SUFFIXES = (".png",)
NO_DISPLAY = ("no display to open a window on{why}: run with --headless, or under a virtual display: "
              "xvfb-run -a python main.py SCENE ...")


class OutputError(RuntimeError):
    """An output cannot be written (before the run, or during it); the message is one line."""


def _kind(mode: int) -> str:
    return "a directory" if stat.S_ISDIR(mode) else "a device, FIFO or socket"


def check_file(path: str, flag: str, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse `path` unless a regular file can be written there (ending in one of `suffixes`, if given).

    The check opens the file for appending, which changes nothing in an existing file; a file it
    had to create for that is removed again."""
    def refuse(got: str) -> OutputError:
        want = f"a writable file path ending in {' or '.join(suffixes)}" if suffixes else "a writable file path"
        return OutputError(f"{flag}: expected {want}, got {path!r}{got}")
    if suffixes and Path(path).suffix.lower() not in suffixes:
        raise refuse("")
    try:
        mode: Optional[int] = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise refuse(f" ({err.strerror})") from None
    if mode is not None and not stat.S_ISREG(mode):
        raise refuse(f" ({_kind(mode)})")
    try:
        with open(path, "ab"):
            pass
    except OSError as err:
        raise refuse(f" ({err.strerror})") from None
    if mode is None:
        os.unlink(path)


def check_directory(path: str, flag: str) -> None:
    """Refuse `path` unless it is (or can be made) a directory that accepts new files; creates it if missing."""
    def refuse(got: str) -> OutputError:
        return OutputError(f"{flag}: expected a writable directory, got {path!r} ({got})")
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISDIR(mode):
            raise refuse(_kind(mode) if not stat.S_ISREG(mode) else "a file")
    except FileNotFoundError:
        pass
    except OSError as err:
        raise refuse(err.strerror) from None
    try:
        os.makedirs(path, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise refuse(err.strerror or type(err).__name__) from None


def check_offscreen() -> None:
    """Refuse a headless run with pictures where no off-screen OpenGL context can be made."""
    from .render import create_offscreen_context
    try:
        create_offscreen_context().release()
    except RuntimeError as err:
        raise OutputError(f"--record/--screenshot: expected off-screen OpenGL (EGL and Mesa), got none ({err})") from None


def check_outputs(*, stats_json: Optional[str], record: Optional[str], screenshot: Optional[str],
                  dump_dir: Optional[str], headless: bool, fields_dir: Optional[str] = None) -> None:
    """Every output a run was asked for, checked before it starts; raises OutputError.

    The dumps (`dump_dir`: --dump-systems, `fields_dir`: --dump-fields) are written by the headless
    runner only, so asking for one with the window is refused rather than ignored."""
    if stats_json is not None:
        check_file(stats_json, "--stats-json")
    if record is not None:
        check_file(record, "--record", RECORD_SUFFIXES)
    if screenshot is not None:
        check_file(screenshot, "--screenshot", SCREENSHOT_SUFFIXES)
    for flag, path in (("--dump-systems", dump_dir), ("--dump-fields", fields_dir)):
        if path is None:
            continue
        if not headless:
            raise OutputError(f"{flag}: expected a headless run (add --headless), got a window run")
        check_directory(path, flag)
    if headless and (record or screenshot):
        check_offscreen()


# The app's own memory, for sim.memory's estimate of a run.
WINDOW_BYTES = 250_000_000  # imgui, implot, the GL context (Mesa), the view: an allowance, not measured
WINDOW_BYTES_PER_CELL = 48  # the field texture, its upload buffer, a render mode's scalar (display fields: sim's)
PICTURE_BYTES = 150_000_000  # headless pictures: the off-screen context (measured +84 MB at 128x64; ffmpeg's own
#                              process comes on top, about as much again)
FRAME_RECORD_BYTES = 600  # what app.report keeps per frame of a headless run (a FrameStats: 544 bytes measured)


def memory_parts(nx: int, ny: int, *, headless: bool, frames: int, pictures: bool) -> dict[str, int]:
    """What the app adds to a run's memory (sim.memory.estimate's `extra`), by part."""
    if not headless:
        return {"window": WINDOW_BYTES + WINDOW_BYTES_PER_CELL * nx * ny}
    parts = {"frame records": FRAME_RECORD_BYTES * frames}
    if pictures:
        parts["pictures"] = PICTURE_BYTES + WINDOW_BYTES_PER_CELL * nx * ny
    return parts


def missing_display() -> Optional[str]:
    """The one-line message to print when there is no display to open a window on, else None."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return NO_DISPLAY.format(why=" (neither DISPLAY nor WAYLAND_DISPLAY is set)")
