"""Write what the viewer shows: MP4 (or GIF) recordings through ffmpeg, PNG screenshots.

The ffmpeg process (the binary imageio-ffmpeg ships) runs in its own session, so a Ctrl-C meant
for the viewer never reaches it; closing its input makes it finish the file. `Recorder.close()`
does that, and is idempotent: call it from `finally`, on window close and on SIGINT. A target
that cannot be written raises `RecordingError` naming the path and the reason.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import IO

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np

from .preflight import RECORD_SUFFIXES

GIF_FPS = 25  # browsers slow down GIFs with frame delays under 20 ms


class RecordingError(RuntimeError):
    """A recording or a screenshot could not be written; the message names the path and the reason."""


def _reason(err: BaseException) -> str:
    return err.strerror if isinstance(err, OSError) and err.strerror else str(err) or type(err).__name__


def _probe(path: Path, what: str) -> None:
    """Fail early, with the reason, if `path` cannot be created or overwritten."""
    try:
        with open(path, "ab"):
            pass
    except OSError as err:
        raise RecordingError(f"cannot write {what} {str(path)!r}: {_reason(err)}") from None


def save_png(path: str | os.PathLike, picture: np.ndarray) -> None:
    """Save an (h, w, 3) uint8 picture as PNG."""
    target = Path(path)
    _probe(target, "screenshot")
    try:
        iio.imwrite(target, picture, extension=".png")
    except (OSError, ValueError) as err:
        raise RecordingError(f"cannot write screenshot {str(target)!r}: {_reason(err)}") from None


def fit(picture: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`picture` scaled (nearest) to fit within size = (width, height), centred on black; unchanged if it fits."""
    w, h = size
    ph, pw = picture.shape[:2]
    if (pw, ph) == (w, h):
        return picture
    scale = min(w / pw, h / ph)
    sw, sh = max(1, min(w, round(pw * scale))), max(1, min(h, round(ph * scale)))
    rows = np.minimum((np.arange(sh) / scale).astype(np.intp), ph - 1)
    cols = np.minimum((np.arange(sw) / scale).astype(np.intp), pw - 1)
    out = np.zeros((h, w, 3), dtype=np.uint8)
    y0, x0 = (h - sh) // 2, (w - sw) // 2
    out[y0:y0 + sh, x0:x0 + sw] = picture[rows[:, None], cols[None, :]]
    return out


class Recorder:
    """Frames of one fixed size into an MP4 (H.264, yuv420p) or, for a .gif path, an animated GIF.

    One `write` is one frame of the input at `fps` (the simulation's frame rate), so the video plays
    at simulation speed however long each frame took to compute; `out_fps` (default: `fps`) is the
    file's frame rate, to which ffmpeg drops or repeats frames (a GIF's is at most GIF_FPS).
    Frames of another size are letterboxed into the recording's size. A path not ending in .mp4 or
    .gif raises RecordingError.
    """

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], fps: float = 60.0,
                 out_fps: float | None = None) -> None:
        w, h = size
        if w < 2 or h < 2 or w % 2 or h % 2:
            raise ValueError(f"recording size: expected even width and height, got {w}x{h}")
        self.path, self.size, self.fps, self.frames = Path(path), (w, h), float(fps), 0
        self.out_fps = float(out_fps or fps)
        suffix = self.path.suffix.lower()
        if suffix not in RECORD_SUFFIXES:
            raise RecordingError(f"cannot record to {str(self.path)!r}: expected a name ending in "
                                 f"{' or '.join(RECORD_SUFFIXES)}")
        _probe(self.path, "recording")
        if suffix == ".gif":
            codec = ["-vf", f"fps={min(self.out_fps, GIF_FPS):g},split[a][b];[a]palettegen=max_colors=96:"
                            "stats_mode=diff[p];[b][p]paletteuse=dither=bayer:bayer_scale=3:diff_mode=rectangle",
                     "-loop", "0"]
        else:
            codec = ["-r", f"{self.out_fps:g}", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "veryfast",
                     "-crf", "18", "-movflags", "+faststart", "-f", "mp4"]
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
               "-s", f"{w}x{h}", "-r", f"{self.fps:g}", "-i", "-", *codec, str(self.path)]
        self._log: IO[bytes] = tempfile.TemporaryFile()
        try:
            self._proc: subprocess.Popen | None = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
                start_new_session=os.name != "nt",
                creationflags=subprocess.CREATE_NEW_PROCESS_GROUP if os.name == "nt" else 0)
        except OSError as err:
            self._log.close()
            raise RecordingError(f"cannot record to {str(self.path)!r}: ffmpeg did not start ({_reason(err)})") from None

    def write(self, picture: np.ndarray) -> None:
        """Append one (h, w, 3) uint8 frame; on failure the recording is closed and RecordingError raised."""
        if self._proc is None:
            raise RecordingError(f"recording {str(self.path)!r} is already closed")
        frame = np.ascontiguousarray(fit(picture, self.size), dtype=np.uint8)
        try:
            self._proc.stdin.write(frame.tobytes())
        except OSError as err:
            detail = self._finish() or _reason(err)
            raise RecordingError(f"recording to {str(self.path)!r} failed: {detail}") from None
        self.frames += 1

    def close(self) -> None:
        """Finish the file (waits for ffmpeg); safe to call more than once. Raises RecordingError if ffmpeg failed."""
        if self._proc is None:
            return
        detail = self._finish()
        if detail:
            raise RecordingError(f"recording to {str(self.path)!r} failed: {detail}")

    def _finish(self) -> str:
        """Close ffmpeg's input and wait for it; returns its error output ('' on success)."""
        proc, self._proc = self._proc, None
        try:
            proc.stdin.close()
        except OSError:
            pass  # ffmpeg already gone; its exit status and log tell why
        code = proc.wait()
        self._log.seek(0)
        log = self._log.read().decode(errors="replace").strip()
        self._log.close()
        if code == 0:
            return ""
        return (log.splitlines()[-1] if log else f"ffmpeg exited with status {code}")
