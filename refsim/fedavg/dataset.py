"""The arrays a FedAvg run trains and tests on: float NCHW images and integer labels.

McMahan et al., AISTATS 2017, arXiv:1602.05629, Sec. 3 trains on MNIST; this module only
converts the uint8 images of ``refsim.data`` explicitly (x / 255, no standardisation, as the
paper does not mention one; the Flower CIFAR-10 tutorial's Normalize on request) and adds the
channel axis of grey images.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from refsim.backend import Purpose, make_rng
from refsim.data import ImageData, standardize, to_float

__all__ = ["FedData", "from_images", "holdout_split"]


class FedData(NamedTuple):
    """x_train (N, C, H, W) float, y_train (N,) int64, x_test (M, C, H, W), y_test (M,)."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def from_images(data: ImageData, dtype=np.float32, train_limit: int | None = None,
                test_limit: int | None = None,
                normalize: tuple[float, float] | None = None) -> FedData:
    """uint8 images -> ``to_float`` (x / 255) as NCHW ``dtype`` arrays.

    Grey images (N, H, W) gain a channel axis, (N, 1, H, W); colour images come as
    (N, C, H, W) (CIFAR-10) and keep their shape. ``normalize = (mean, std)`` then applies
    ``standardize``, (x / 255 - mean) / std in ``dtype``, to every channel (torchvision's
    ``Normalize((mean,) * C, (std,) * C)`` after ``ToTensor``; the Flower CIFAR-10 tutorial
    uses (0.5, 0.5)). ``train_limit`` / ``test_limit`` keep the first that many examples.
    """
    dtype = np.dtype(dtype).type  # to_float wants the scalar type (np.float32)
    xtr, ytr = data.x_train[:train_limit], data.y_train[:train_limit]
    xte, yte = data.x_test[:test_limit], data.y_test[:test_limit]

    def convert(x):
        x = to_float(x, dtype)
        x = x[:, None] if x.ndim == 3 else x  # (N, C, H, W)
        return x if normalize is None else standardize(x, *normalize)

    return FedData(convert(xtr), np.asarray(ytr, np.int64),
                   convert(xte), np.asarray(yte, np.int64))


def holdout_split(partition, fraction: float, seed: int):
    """Hold out a fixed fraction of each client's examples for federated evaluation.

    For client k with indices P_k (n_k of them): ``perm = make_rng(seed, Purpose.EVAL_SPLIT,
    k).permutation(n_k)``, n_eval = floor(fraction * n_k); the held-out examples are
    ``sort(P_k[perm[:n_eval]])`` and the client trains on ``sort(P_k[perm[n_eval:]])`` (as the
    Flower tutorial's per-client validation loaders do; FEMNIST-style per-writer test sets are
    not modelled here). fraction = 0 returns the partition unchanged and empty hold-outs.

    Returns (train_parts, eval_parts), two lists of K int64 arrays.

    >>> tr, ev = holdout_split([np.arange(10), np.arange(10, 13)], 0.2, seed=0)
    >>> [len(p) for p in tr], [len(p) for p in ev]
    ([8, 3], [2, 0])
    """
    train, held = [], []
    for k, idx in enumerate(partition):
        idx = np.asarray(idx, dtype=np.int64)
        n_eval = int(np.floor(fraction * len(idx)))
        perm = make_rng(seed, Purpose.EVAL_SPLIT, k).permutation(len(idx))  # (n_k,)
        held.append(np.sort(idx[perm[:n_eval]]))
        train.append(np.sort(idx[perm[n_eval:]]))
    return train, held
