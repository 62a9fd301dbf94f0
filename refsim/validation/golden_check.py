"""Check a set of golden files against the reference copy, with the tolerances of its index.

The rule (``docs/golden.md``, "Tolerances"): a file passes when its bytes equal the
reference's, or when it holds exactly the reference's array names, each with the same dtype
and shape, integer and bool arrays equal, and every float array of dtype d within
``|actual - expected| <= atol + rtol * |expected|`` for the file's ``tolerance[d]`` in
``index.json`` (NaN never passes). So ``refsim golden --check DIR`` accepts a directory
regenerated on another machine (where BLAS may sum in another order), and the ``.npz`` files
an implementation in another language writes with the same array names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from refsim.validation.golden import INDEX, shipped_files
from refsim.validation.stable_npz import read_npz

__all__ = ["FileCheck", "compare_arrays", "check_files"]


class FileCheck(NamedTuple):
    """The verdict on one golden file: ``ok`` and a one-line ``detail``."""
    name: str
    ok: bool
    detail: str


def _float_excess(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float):
    """(worst |a - e| / (atol + rtol |e|), flat index of it); inf where the bound is 0 and
    the values differ, NaN handled as a failure."""
    a, e = actual.astype(np.float64).ravel(), expected.astype(np.float64).ravel()
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        err = np.abs(a - e)  # (n,)
        bound = atol + rtol * np.abs(e)  # (n,)
        ratio = np.where(err == 0, 0.0, np.where(bound > 0, err / bound, np.inf))  # (n,)
    ratio[np.isnan(ratio)] = np.inf
    if ratio.size == 0:
        return 0.0, -1
    worst = int(np.argmax(ratio))
    return float(ratio[worst]), worst


def compare_arrays(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                   tolerance: Mapping[str, Mapping[str, float]]) -> tuple[bool, str]:
    """(ok, one-line detail) for the arrays of one file against the reference arrays.

    ``tolerance``: {float dtype name: {"rtol": r, "atol": a}} (the file's index entry).
    """
    missing, extra = sorted(set(expected) - set(actual)), sorted(set(actual) - set(expected))
    if missing or extra:
        return False, f"array names differ (missing {missing[:4]}, unexpected {extra[:4]})"
    worst, worst_name = 0.0, ""
    for name in sorted(expected):
        a, e = actual[name], expected[name]
        if a.dtype != e.dtype or a.shape != e.shape:
            return False, (f"array {name!r}: {a.dtype.str} {list(a.shape)}, expected "
                           f"{e.dtype.str} {list(e.shape)}")
        if e.dtype.kind != "f":
            if not np.array_equal(a, e):
                bad = np.flatnonzero(a.ravel() != e.ravel())
                return False, (f"array {name!r}: {bad.size} of {e.size} entries differ, first "
                               f"at flat index {int(bad[0])}: {a.ravel()[bad[0]]!r}, expected "
                               f"{e.ravel()[bad[0]]!r}")
            continue
        tol = tolerance.get(e.dtype.name, {"rtol": 0.0, "atol": 0.0})
        excess, at = _float_excess(a, e, tol["rtol"], tol["atol"])
        if excess > 1.0:
            return False, (f"array {name!r}: flat index {at}: {a.ravel()[at]!r}, expected "
                           f"{e.ravel()[at]!r} (rtol {tol['rtol']:g}, atol {tol['atol']:g})")
        if excess > worst:
            worst, worst_name = excess, name
    if worst == 0.0:
        return True, "equal values (the bytes differ)"
    return True, f"within tolerance (worst: {worst_name!r} at {worst:.2g} of it)"


def check_files(candidate: Mapping[str, bytes],
                reference: Mapping[str, bytes] | None = None) -> list[FileCheck]:
    """Check every file listed in the reference index; ``reference`` defaults to the shipped
    copy. ValueError when a file is missing from ``candidate`` or is not a readable ``.npz``
    (the candidate's own ``index.json`` is not needed)."""
    reference = shipped_files() if reference is None else reference
    index = json.loads(reference[INDEX])
    results = []
    for entry in index["files"]:
        name = entry["name"]
        if name not in candidate:
            raise ValueError(f"{name} is missing (every file of the index is checked)")
        if candidate[name] == reference[name]:
            results.append(FileCheck(name, True, "identical bytes"))
            continue
        actual = read_npz(candidate[name], name)  # ValueError naming the file when damaged
        ok, detail = compare_arrays(actual, read_npz(reference[name]), entry["tolerance"])
        results.append(FileCheck(name, ok, detail))
    return results
