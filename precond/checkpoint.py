"""Checkpoints of the learned preconditioners: one plain dict {layout, config, model, record}.

`model` is the network's state_dict, `config` its config dataclass as a dict, `record` how it was
trained. Files are read with torch.load(..., weights_only=True) only (tensors and plain containers,
no pickled code) and written atomically. Anything that keeps a file from giving a working network
(missing, unreadable, another layout, a config the network cannot have, weights that do not fit
it or are not finite) is a CheckpointError, which is a PreconditionerUnavailable: a solver falls
back on it. Its message is one short line, the file and the reason; torch's own (multi-line)
text stays in the exception's __cause__.

Config dataclasses check their fields in __post_init__ (precond.config), so an impossible
config (window 0, no heads) fails on load, not in the first solve.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.nn as nn

from .solver import PreconditionerUnavailable

Net = TypeVar("Net", bound=nn.Module)


class CheckpointError(PreconditionerUnavailable):
    """A checkpoint that cannot give a working network here."""


def save_checkpoint(path: str | Path, layout: str, net: nn.Module, record: dict, half: bool = False) -> None:
    """Write `net` (with its `cfg` dataclass) and `record`; half: floating tensors as float16 (half the
    file; loading gives the network's own dtype back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"layout": layout, "config": asdict(net.cfg), "model": state, "record": record}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, layout: str, build: Callable[[dict], Net],
                    hint: str = "") -> tuple[Net, dict]:
    """(network, record) from a checkpoint of `layout`; `build(config)` makes the empty network.
    hint: what to do about a missing file, for the message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found" + (f" ({hint})" if hint else ""))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, ValueError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable (corrupt, or holds more than tensors)") from err
    if not isinstance(ckpt, dict) or not {"layout", "config", "model"} <= set(ckpt) \
            or not isinstance(ckpt["config"], dict) or not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"checkpoint {path} is not a checkpoint (expected a dict with 'layout', "
                              f"'config' and 'model')")
    if ckpt["layout"] != layout:
        raise CheckpointError(f"checkpoint {path} was trained for layout {ckpt['layout']!r}, this code reads {layout!r}")
    try:
        net = build(ckpt["config"])
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} has an invalid config: {err}") from err
    try:
        net.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} holds weights that do not fit its config") from err
    if not all(bool(torch.isfinite(v).all()) for v in net.state_dict().values() if v.is_floating_point()):
        raise CheckpointError(f"checkpoint {path} holds weights that are not finite")
    return net, ckpt.get("record", {})
