"""The ``refsim`` command line. The only module that prints.

``refsim info`` prints the version, the array backends available on this machine and the
reference models with their parameter counts.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import refsim
from refsim.backend import available_backends
from refsim.nn import cnn_cifar, cnn_mnist, logistic, mlp_2nn


def _info(args: argparse.Namespace) -> int:
    import numba
    import scipy

    print(f"refsim {refsim.__version__}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"numba {numba.__version__}")
    print(f"backends: {', '.join(available_backends())}")
    print("models:")
    for factory in (cnn_mnist, mlp_2nn, logistic, cnn_cifar):
        model = factory()
        shape = "x".join(map(str, model.input_shape))
        print(f"  {model.name:<10} input {shape:<8} {model.num_params:>10,} parameters")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="refsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="version, backends and models")
    info.set_defaults(func=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
