"""Reader for LEAF's JSON data files (FEMNIST and the other LEAF image/tabular tasks).

Caldas, Duddu, Wu, Li, Konecny, McMahan, Smith & Talwalkar, "LEAF: A Benchmark for Federated
Settings", arXiv:1812.01097 (2018). Layout of one file (``data/<task>/data/{train,test}/*.json``,
as written by LEAF's ``preprocess.sh``)::

    {"users": [u_1, ...], "num_samples": [n_1, ...],
     "user_data": {u_1: {"x": [[...], ...], "y": [...]}, ...}}

FEMNIST's x are 784 floats ``gray/255`` of a 28x28 image where **1.0 (255) is the background**.
Files may be gzip-compressed (``.json.gz``). Numeric x only (not Shakespeare's strings).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import zlib

import numpy as np

__all__ = ["LeafData", "read_leaf_json", "leaf_to_uint8"]


@dataclasses.dataclass(frozen=True)
class LeafData:
    """users : list of U str;  x : ndarray, shape (N, D) float64;  y : ndarray, shape (N,) int64;
    groups : ndarray, shape (N,) int64, index into ``users`` (files and users in given order)."""

    users: list[str]
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray


def _load_json(path: str) -> dict:
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise ValueError(f"{path}: empty file (0 bytes)")
    try:
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return json.loads(raw)
    except EOFError:
        raise ValueError(f"{path}: truncated gzip stream") from None
    except (OSError, zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not valid LEAF JSON ({err})") from None


def read_leaf_json(paths: str | os.PathLike | list) -> LeafData:
    """Read one or more LEAF JSON files into flat arrays plus a per-example user index.

    Checks that each file has ``users``, ``num_samples`` and ``user_data``, that ``num_samples``
    matches the lengths of x and y, that rows of x have one length, and that no user occurs twice
    (within or across files); any failure is a ValueError naming the file and the user.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    users: list[str] = []
    xs, ys, gs = [], [], []
    width = None
    for path in map(os.fspath, paths):
        doc = _load_json(path)
        if not isinstance(doc, dict) or not {"users", "num_samples", "user_data"} <= doc.keys():
            raise ValueError(f"{path}: LEAF JSON needs keys users, num_samples, user_data")
        if not isinstance(doc["users"], list) or not isinstance(doc["num_samples"], list) or \
                not isinstance(doc["user_data"], dict):
            raise ValueError(f"{path}: LEAF JSON needs users and num_samples as lists and "
                             f"user_data as an object")
        if len(doc["users"]) != len(doc["num_samples"]):
            raise ValueError(f"{path}: {len(doc['users'])} users but "
                             f"{len(doc['num_samples'])} num_samples")
        for user, count in zip(doc["users"], doc["num_samples"]):
            if not isinstance(user, str) or type(count) is not int or count < 0:
                raise ValueError(f"{path}: user {user!r} with num_samples {count!r}: users "
                                 f"must be strings and num_samples integers >= 0")
            if user in users:
                raise ValueError(f"{path}: user {user!r} occurs twice")
            entry = doc["user_data"].get(user)
            if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
                raise ValueError(f"{path}: user {user!r} has no x/y in user_data")
            try:
                x = np.asarray(entry["x"], dtype=np.float64)  # (n_u, D)
                y = np.asarray(entry["y"])  # (n_u,)
            except (ValueError, TypeError) as err:
                raise ValueError(f"{path}: user {user!r}: x must be equal-length numeric rows "
                                 f"({err})") from None
            if x.ndim != 2 or len(x) != count or y.shape != (count,):
                raise ValueError(f"{path}: user {user!r}: num_samples says {count}, got x "
                                 f"{x.shape} and y {y.shape}")
            if y.size and y.dtype.kind not in "iu":
                raise ValueError(f"{path}: user {user!r}: labels must be integers, got {y.dtype}")
            if width is not None and x.shape[1] != width:
                raise ValueError(f"{path}: user {user!r}: rows of {x.shape[1]} values, "
                                 f"earlier rows had {width}")
            width = x.shape[1]
            gs.append(np.full(count, len(users), dtype=np.int64))
            users.append(user)
            xs.append(x)
            ys.append(y.astype(np.int64))
    if not users:
        raise ValueError(f"{list(map(os.fspath, paths))}: no users found")
    return LeafData(users=users, x=np.concatenate(xs), y=np.concatenate(ys),
                    groups=np.concatenate(gs))


def leaf_to_uint8(x: np.ndarray, side: int = 28) -> np.ndarray:
    """LEAF FEMNIST floats k/255 to uint8 images, exactly (255 stays the background).

    x : ndarray, shape (N, side*side) float in [0, 1]  ->  ndarray, shape (N, side, side) uint8
    Raises ValueError if a value is not a multiple of 1/255 (the conversion would lose data).
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != side * side:
        raise ValueError(f"expected shape (N, {side * side}), got {x.shape}")
    scaled = x * 255.0  # (N, side*side)
    rounded = np.rint(scaled)
    off_grid = x.size and np.abs(scaled - rounded).max() > 1e-6
    if off_grid or (x.size and (rounded.min() < 0 or rounded.max() > 255)):
        raise ValueError("values are not k/255 for integers k in 0..255")
    return rounded.astype(np.uint8).reshape(-1, side, side)
