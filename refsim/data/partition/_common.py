"""Argument checks and the canonical output form shared by every partitioner.

Canonical form: a partition of N examples over K clients is a list of K int64 arrays; array k
holds the dataset indices of client k **sorted ascending**. Sorting makes the output depend only
on *which* examples a client holds, so two implementations agree exactly when their sets agree;
the order in which a client visits its examples is fixed separately, by
``refsim.data.batching`` (one permutation per epoch from the rng rule).
"""

from __future__ import annotations

import operator

import numpy as np

__all__ = ["as_labels", "check_count", "check_rng", "check_enough_examples", "canonical"]


def as_labels(labels: object, name: str = "labels") -> np.ndarray:
    """labels : array-like, shape (N,) of integers  ->  ndarray, shape (N,) int64."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one entry per example), got shape {y.shape}")
    if y.size and y.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """An integer >= ``minimum``, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def check_rng(rng: object) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise TypeError("rng must be a numpy.random.Generator (e.g. refsim.backend.make_rng("
                        f"seed, Purpose.PARTITION)), got {type(rng).__name__}")
    return rng


def check_enough_examples(num_examples: int, num_clients: int) -> None:
    if num_clients > num_examples:
        raise ValueError(f"num_clients={num_clients} > {num_examples} examples: "
                         "some clients would be empty")


def canonical(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Each client's indices as a sorted int64 array (see module docstring)."""
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
