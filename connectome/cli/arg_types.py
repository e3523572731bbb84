"""Argument types of the command line that refuse a bad value in argparse's one line (exit code 2)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _checked(text: str, convert: Callable[[str], float], ok: Callable[[float], bool], expected: str):
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, found {text!r}")
    return value


def positive_int(text: str) -> int:
    """A whole number above 0 (block and chunk shapes, worker counts)."""
    return int(_checked(text, int, lambda v: v > 0, "a whole number > 0"))


def non_negative_int(text: str) -> int:
    """A whole number from 0 up (overlaps)."""
    return int(_checked(text, int, lambda v: v >= 0, "a whole number >= 0"))


def band_or_off(text: str) -> int | str:
    """A whole number from 0 up, or `off` (`segment --blank-band`)."""
    return "off" if text == "off" else int(_checked(text, int, lambda v: v >= 0, "a whole number >= 0 or off"))


def non_negative_float(text: str) -> float:
    """A finite number from 0 up (multiples, where 0 means no limit)."""
    return float(_checked(text, float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"))


def positive_float(text: str) -> float:
    """A finite number above 0 (voxel sizes in nm)."""
    return float(_checked(text, float, lambda v: math.isfinite(v) and v > 0, "a number > 0"))


def share(text: str) -> float:
    """A number above 0 up to 1 (shares that must be covered)."""
    return float(_checked(text, float, lambda v: 0.0 < v <= 1.0, "a number above 0 up to 1"))


def fraction(text: str) -> float:
    """A number from 0 to 1 (merge thresholds: affinities and merge probabilities)."""
    return float(_checked(text, float, lambda v: 0.0 <= v <= 1.0, "a number from 0 to 1"))
