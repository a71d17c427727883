"""The errors densbench refuses bad input with, and the helpers that name the key and what is allowed.

Torch-free: configs, families and objectives are checked before any training library loads.
"""

from __future__ import annotations

import math
from typing import Any, Iterable


class ConfigError(ValueError):
    """A config value or combination that densbench refuses, with the allowed values."""


class DataError(ValueError):
    """A dataset that cannot be used as configured (bad file, column, value or target)."""


def closest(value: Any, allowed: Iterable[Any]) -> str:
    """' (did you mean X?)' for the allowed value nearest a mistyped one, or '' when none is near."""
    import difflib

    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else ""


def one_of(key: str, value: Any, allowed: Iterable[Any]) -> None:
    """Refuse a value outside `allowed`, listing what is allowed (and the nearest, for a typo)."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed{closest(value, allowed)}; choose one of: {', '.join(map(str, allowed))}")


def positive(key: str, value: Any, integer: bool = False, allow_null: bool = False) -> None:
    """Refuse anything but a positive (integer) number (or null when allowed)."""
    if value is None and allow_null:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if ok and integer:
        ok = float(value) == int(value)
    if not ok:
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{key}={value!r} must be {kind}" + (" or null" if allow_null else ""))


def natural(key: str, value: Any) -> None:
    """Refuse anything but an integer >= 0 (seeds: 1.5 would run as seed 1 under a name of its own)."""
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise ConfigError(f"{key}={value!r} must be an integer >= 0")


def in_range(key: str, value: Any, lo: float, hi: float) -> None:
    """Refuse a number outside [lo, hi]."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi):
        raise ConfigError(f"{key}={value!r} must be a number in [{lo:g}, {hi:g}]")
