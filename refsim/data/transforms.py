"""Explicit conversions from stored uint8 images to the floats a model trains on.

The loaders in ``refsim.data.datasets`` return uint8 exactly as stored; every conversion is a
visible call here. MNIST's usual normalisation constants (mean 0.1307, std 0.3081 of x/255 over
the 60000 training images) are those of the PyTorch MNIST example (pytorch/examples:
mnist/main.py, ``transforms.Normalize((0.1307,), (0.3081,))``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MNIST_MEAN", "MNIST_STD", "to_float", "standardize", "invert"]

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def to_float(x: np.ndarray, dtype=np.float32) -> np.ndarray:
    """uint8 pixels to floats in [0, 1]: ``x / 255``.

    x : ndarray, shape (N, ...) uint8  ->  ndarray, same shape, ``dtype``

    >>> to_float(np.array([0, 51, 255], dtype=np.uint8))
    array([0. , 0.2, 1. ], dtype=float32)
    """
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise TypeError(f"to_float expects uint8 pixels, got {x.dtype}")
    return x.astype(dtype) / dtype(255)


def standardize(x: np.ndarray, mean: float = MNIST_MEAN, std: float = MNIST_STD) -> np.ndarray:
    """``(x - mean) / std`` for floats x in [0, 1] (PyTorch's ``transforms.Normalize``).

    x : ndarray, shape (N, ...) float  ->  ndarray, same shape and dtype
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"standardize expects floats (call to_float first), got {x.dtype}")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    return ((x - x.dtype.type(mean)) / x.dtype.type(std)).astype(x.dtype)


def invert(x: np.ndarray) -> np.ndarray:
    """``255 - x``: LEAF FEMNIST (255 = background) to MNIST polarity (0 = background).

    x : ndarray, shape (N, ...) uint8  ->  ndarray, same shape, uint8
    """
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise TypeError(f"invert expects uint8 pixels, got {x.dtype}")
    return np.uint8(255) - x
