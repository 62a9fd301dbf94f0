"""Which BLAS NumPy's matrix products run on here, as far as the library can be asked.

The bits of a float32 or float64 matrix product depend on the BLAS library, on the kernel it
picked for this CPU and on its thread count (docs/determinism.md, "Floating point"): on one
AMD Zen 5 VM OpenBLAS 0.3.31 loads its Haswell (AVX2) kernels by default and its SkylakeX
(AVX-512) ones under ``OPENBLAS_CORETYPE=SkylakeX``, and 30 CNN steps end on different
weights. So refsim reports what it ran on: ``refsim info`` prints :func:`describe_blas`, and
so do the step benchmarks.

The library's name and version come from NumPy's build configuration
(``numpy.show_config(mode="dicts")``). The kernel ("core") and thread count are asked of
the loaded OpenBLAS through its C functions ``openblas_get_corename`` and
``openblas_get_num_threads`` (in the wheels' ``scipy_openblas`` build: with that prefix and
the suffix ``64_``), found through ``/proc/self/maps``. Where that cannot work (another BLAS,
another OS) they are ``"unknown"`` and ``None``: this module never fails, it only reports.
"""

from __future__ import annotations

import ctypes
from typing import NamedTuple

import numpy as np

__all__ = ["BlasRuntime", "blas_runtime", "describe_blas"]


class BlasRuntime(NamedTuple):
    name: str  # NumPy's build configuration, e.g. "scipy-openblas"
    version: str  # e.g. "0.3.31.188.0"
    core: str  # OpenBLAS's kernel family chosen at load time, e.g. "Haswell"; or "unknown"
    threads: int | None  # OpenBLAS's thread count now; None where it cannot be asked


def _build_blas() -> tuple[str, str]:
    """(name, version) of the BLAS NumPy was built with."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return str(blas.get("name", "unknown")), str(blas.get("version", "unknown"))
    except Exception:  # an older NumPy, or a configuration without the entry
        return "unknown", "unknown"


def _loaded_openblas_paths() -> list[str]:
    """Paths of the shared libraries with "openblas" in their name mapped into this process."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split(None, 5)[-1].strip() for line in maps if "openblas" in line.lower()}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/") and ".so" in p)


def _openblas_function(lib, name: str):
    for prefix in ("scipy_openblas_", "openblas_"):
        for suffix in ("64_", ""):
            function = getattr(lib, f"{prefix}{name}{suffix}", None)
            if function is not None:
                return function
    return None


def blas_runtime() -> BlasRuntime:
    """The BLAS of NumPy's matrix products: name, version, kernel family, threads.

    >>> isinstance(blas_runtime().core, str)
    True
    """
    name, version = _build_blas()
    for path in _loaded_openblas_paths():
        try:
            lib = ctypes.CDLL(path)  # already loaded by NumPy: the same handle, not a reload
        except OSError:
            continue
        corename = _openblas_function(lib, "get_corename")
        threads = _openblas_function(lib, "get_num_threads")
        if corename is None:
            continue
        corename.restype = ctypes.c_char_p
        core = (corename() or b"unknown").decode("ascii", "replace")
        count = None
        if threads is not None:
            threads.restype = ctypes.c_int
            count = int(threads())
        return BlasRuntime(name, version, core, count)
    return BlasRuntime(name, version, "unknown", None)


def describe_blas() -> str:
    """One line, e.g. ``scipy-openblas 0.3.31.188.0, core Haswell, 2 threads``."""
    blas = blas_runtime()
    threads = ("threads unknown" if blas.threads is None
               else f"{blas.threads} thread{'s' if blas.threads != 1 else ''}")
    return f"{blas.name} {blas.version}, core {blas.core}, {threads}"
