"""``refsim info``: the version, the BLAS NumPy runs on (``refsim.blas``: float bits depend on
it), the array backends available here and the reference models."""

from __future__ import annotations

import argparse
import sys

import numpy as np

import refsim
from refsim.backend import available_backends
from refsim.blas import describe_blas
from refsim.nn import cnn_cifar, cnn_mnist, logistic, mlp_2nn

__all__ = ["add_subcommand"]


def info(args: argparse.Namespace) -> int:
    """Print the facts; exit code 0."""
    import numba
    import scipy

    print(f"refsim {refsim.__version__}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"numba {numba.__version__}")
    print(f"blas: {describe_blas()}")
    print(f"backends: {', '.join(available_backends())}")
    print("models:")
    for factory in (cnn_mnist, mlp_2nn, logistic, cnn_cifar):
        model = factory()
        shape = "x".join(map(str, model.input_shape))
        print(f"  {model.name:<10} input {shape:<8} {model.num_params:>10,} parameters")
    return 0


def add_subcommand(subparsers) -> None:
    """Register ``refsim info``."""
    sub = subparsers.add_parser("info", help="version, BLAS, backends and models")
    sub.set_defaults(func=info)
