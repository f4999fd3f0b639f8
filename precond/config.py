"""Field checks for the config dataclasses (network, multigrid): called in their __post_init__,
so an impossible value is a ValueError naming the field when the config is made (e.g. when a
checkpoint is loaded), never a crash in the first solve."""
from __future__ import annotations

from typing import Any, Callable


def check_fields(cfg: Any, rules: dict[str, tuple[Callable[[Any], bool], str]]) -> None:
    """ValueError naming the first field of the dataclass `cfg` that breaks its rule {field: (test, expected)}."""
    for name, (test, expected) in rules.items():
        value = getattr(cfg, name)
        if not test(value):
            raise ValueError(f"{type(cfg).__name__}.{name} must be {expected}, got {value!r}")


def is_int(low: int) -> Callable[[Any], bool]:
    """A test for check_fields: an integer (not a bool) >= low."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def is_power_of_two(v: Any) -> bool:
    return is_int(1)(v) and v & (v - 1) == 0


def is_positive(v: Any) -> bool:
    """A finite number > 0."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf")
