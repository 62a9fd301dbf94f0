"""What every ``refsim`` subcommand shares: one-line usage errors, file writing, versions."""

from __future__ import annotations

import argparse
import platform
import sys

import numpy as np

import refsim
from refsim.blas import describe_blas
from refsim.fedavg.storage import atomic_write_bytes

__all__ = ["UsageError", "ArgParser", "flag", "write_text", "versions"]


class UsageError(Exception):
    """A bad flag or config value: one line on stderr, exit code 2."""


class ArgParser(argparse.ArgumentParser):
    """argparse with one error line and exit code 2 (argparse would also print the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def flag(key: str) -> str:
    """The flag of a settings key: ``batch_size`` -> ``--batch-size``."""
    return "--" + key.replace("_", "-")


def write_text(path: str, text: str) -> None:
    """UTF-8 text with ``\\n`` line ends on every platform (reruns are byte-identical),
    written atomically (a run killed meanwhile leaves the old file or the new one)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def versions() -> dict:
    """The versions a result depends on (written to ``summary.json``), with the BLAS kernel
    and threads that float bits depend on (``refsim.blas``)."""
    import numba
    import scipy
    return {"refsim": refsim.__version__, "python": sys.version.split()[0],
            "numpy": np.__version__, "scipy": scipy.__version__, "numba": numba.__version__,
            "platform": platform.platform(), "blas": describe_blas()}
