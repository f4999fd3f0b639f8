"""torch.compile for the solvers: static tensor programs compiled once per grid shape, cached on disk.

`Compiled(fn, what)` wraps a function whose body is a static tensor program (no `.item()`, no
data-dependent Python control flow, no allocation whose size depends on values) and compiles it
with `fullgraph=True`: a graph break is an error, not a silent split, which is the CPU proof that
the same program can be captured as one CUDA graph (on CUDA it is compiled with
`mode="reduce-overhead"`, i.e. replayed as a CUDA graph). The first call for a new shape compiles
(tens of seconds on a 2-core CPU) and says so on stderr; Inductor's caches keep the result on disk
(`TORCHINDUCTOR_CACHE_DIR`, by default ~/.cache/fluid-htp/inductor), so a later process compiles
the same shape from the cache in a few seconds.

Where compiling cannot work (no C++ compiler, an operator Inductor does not lower, e.g. torch's
sparse CSR tensors), the wrapper warns once, naming the reason, and runs `fn` eagerly from then on:
same answer, only slower.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

CACHE_DIR = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or Path.home() / ".cache" / "fluid-htp" / "inductor")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(CACHE_DIR)    # read by Inductor when it first compiles
RECOMPILE_LIMIT = 64   # shapes x solvers one process may compile (dynamo's default of 8 is one window session)


def load_compiler() -> None:
    """Import torch's compiler front end (dynamo), which takes about 2 s: done by a compiled Solver when it
    is made, so that eager runs never pay it and the systems it solves are marked (`mark_dynamic`)."""
    import torch._dynamo  # noqa: F401


def mark_dynamic(t: torch.Tensor, dim: int) -> None:
    """Tell the compiler, where it is loaded, that dimension `dim` of `t` varies between calls (one compiled
    program serves all); with no compiler loaded nothing is compiling, and nothing needs the mark."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.maybe_mark_dynamic(t, dim)


def _configure() -> None:
    import torch._dynamo.config as dynamo_config
    # One program per grid shape, dynamic only in the dimensions marked so (HTP's chunk count). With
    # dynamo's automatic dynamic shapes, the HTP chunk compiled for 32x32 and then 128x64 became one
    # program symbolic in every size, which returned NaN on 128x64 (torch 2.13, CPU).
    dynamo_config.automatic_dynamic_shapes = False
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)


class Compiled:
    """`fn` compiled with fullgraph=True on first call, eager (with one warning) where that fails.

    `key(*args)` gives (family, shape): the family (e.g. the preconditioner's name) decides
    compiled or eager once for all its calls, the shape is named once when it compiles."""

    def __init__(self, fn: Callable, what: str, key: Callable[..., tuple[str, str]]) -> None:
        self.fn, self.what, self.key = fn, what, key
        self._compiled: dict[str, Callable] = {}
        self.eager_reason: dict[str, str] = {}    # family -> why it runs eager
        self._seen: set[tuple[str, str]] = set()

    def cold(self, key: tuple[str, str]) -> bool:
        """Whether a call for `key` (family, shape) would compile first (not eager, not compiled yet here)."""
        return key[0] not in self.eager_reason and key not in self._seen

    def is_compiled(self, family: str) -> bool:
        """False once compiling `family` has failed and its calls run eagerly."""
        return family not in self.eager_reason

    def _program(self, device: torch.device) -> Callable:
        mode = "reduce-overhead" if device.type == "cuda" else None
        if device.type not in self._compiled:
            _configure()
            self._compiled[device.type] = torch.compile(self.fn, fullgraph=True, mode=mode)
        return self._compiled[device.type]

    def __call__(self, device: torch.device, *args: Any) -> Any:
        family, shape = key = self.key(*args)
        if family in self.eager_reason:
            return self.fn(*args)
        cold = key not in self._seen
        t0 = time.perf_counter()
        if cold:
            print(f"compiling {self.what} of {family} for {shape} (once per shape; cached in {CACHE_DIR})",
                  file=sys.stderr, flush=True)
        try:
            if device.type == "cuda":
                # a CUDA graph's outputs live in its memory pool and the next replay overwrites them:
                # mark the replay, keep copies (a chunk's outputs are the next chunk's inputs)
                torch.compiler.cudagraph_mark_step_begin()
                out = torch.utils._pytree.tree_map(torch.clone, self._program(device)(*args))
            else:
                out = self._program(device)(*args)
        except Exception as err:    # no compiler, an unsupported operator, a graph break: run eager
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            self.eager_reason[family] = f"{type(err).__name__}: {' '.join(lines[:2])}"[:300]
            warnings.warn(f"{self.what} of {family} runs eager, not compiled ({self.eager_reason[family]})",
                          stacklevel=3)
            return self.fn(*args)
        if cold:
            self._seen.add(key)
            print(f"compiled {self.what} of {family} for {shape} in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr, flush=True)
        return out
