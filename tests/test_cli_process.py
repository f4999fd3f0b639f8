"""The real program in a subprocess: refusals are one line before Taichi starts (no banner), under a
memory limit and a timeout; Ctrl-C and SIGTERM at any moment end the run quietly."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DAMBREAK = str(ROOT / "scenes" / "dambreak.yaml")
MEMORY_LIMIT = 4 << 30  # address space: importing torch fits, reading /dev/zero into memory does not


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, preexec_fn=_limit_memory)


@pytest.mark.slow
@pytest.mark.parametrize("args, words", [
    (["/dev/zero", "--headless"], ["/dev/zero", "regular UTF-8 scene file", "a device"]),
    (["{tmp}/bad.yaml", "--headless"], ["bad.yaml", "line 2", "'ratio' again"]),
    ([DAMBREAK, "--headless", "--record", "{tmp}/out.avi"], ["--record", ".mp4 or .gif"]),
    ([DAMBREAK, "--headless", "--frames", "0"], ["--frames"]),
])
def test_refusals_are_one_line_on_stderr_before_taichi_starts(args, words, tmp_path):
    (tmp_path / "bad.yaml").write_text("ratio: 10\nratio: 20\n")
    run = _run(*(a.format(tmp=tmp_path) for a in args))
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "[Taichi]" not in run.stdout + run.stderr  # its banner comes with its start


def _handlers_installed(pid: int) -> bool:
    """main.py catches SIGTERM (Python alone does not) once it has installed its stop request."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def _interrupt(signum: int, after_frames: int) -> tuple[subprocess.CompletedProcess, float]:
    """Start a long headless run, send `signum` once the handlers are in (after_frames = 0: during the
    imports and set-up) or after that many progress lines; (the finished run, seconds it took to stop)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), DAMBREAK, "--headless", "--frames", "100000",
                             "--grid", "32x16"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    lines = []
    while not _handlers_installed(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, "the run never installed its handlers"
        time.sleep(0.01)
    while len(lines) < after_frames:
        line = proc.stdout.readline()
        assert line and time.monotonic() < deadline, "the run never got going"
        lines.append(line) if line.startswith("frame ") else None
    sent = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=240)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines) + out, err), time.monotonic() - sent


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("after_frames", [0, 3])
def test_a_signal_at_any_moment_ends_the_run_quietly(signum, after_frames):
    run, _ = _interrupt(signum, after_frames)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stdout + run.stderr and run.stderr.strip() == "", run.stderr
    assert "interrupted" in run.stdout
    if after_frames:
        assert "frames of dam break at 32x16" in run.stdout  # the summary of the frames that ran
        assert "100000 frames" not in run.stdout
