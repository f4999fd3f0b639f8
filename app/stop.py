"""Ctrl-C (SIGINT) and SIGTERM as a request to stop, which the run honours at its next safe point.

The handler only sets a flag: an exception raised asynchronously can land in an import, in
Taichi's compiler or in a finaliser, where it prints a traceback or is swallowed. The command line
installs it first thing, checks `requested` between its set-up steps, the headless loop between
frames, and the window closes itself through `on_request`. A second signal, for whoever will not
wait for the current frame, raises KeyboardInterrupt at once.
"""
from __future__ import annotations

import signal
from typing import Any, Callable, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Set by the first SIGINT or SIGTERM after `install()`; `on_request` (if set) is called then."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.on_request: Optional[Callable[[], None]] = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> "StopRequest":
        for signum in SIGNALS:
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if self.on_request is not None:
            self.on_request()
