"""Argument checks shared by the compressors: one rule, one message format."""

from __future__ import annotations

import operator

__all__ = ["check_int"]


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """``value`` as an int; TypeError unless an integer, ValueError outside lo..hi (inclusive).

    >>> check_int("bits", 8, 1, 16)
    8
    """
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {v}")
    return v
