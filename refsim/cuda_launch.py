"""Compiling and launching refsim's CUDA C kernels with CuPy (layer 0, beside ``backend``).

Every kernel of refsim (``refsim.nn.cuda``, ``refsim.compress.quantize_cuda``) is written once
in CUDA C over a type ``real_t`` and compiled
per dtype with ``-Dreal_t=float`` or ``-Dreal_t=double`` (``cupy.RawModule``, NVRTC). Each is a
*grid-stride loop* over its ``total`` output elements::

    for (e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += blockDim.x * gridDim.x)

with no shared memory, no ``__syncthreads`` and no atomics. Hence

* the result does not depend on the launch configuration (each output element is computed by
  one thread, with a fixed order of operations), so a run is bit-for-bit repeatable;
* a kernel can be run on the CPU by calling it once per (block, thread) in any order, which is
  how ``tests/cuda_emulator.py`` checks the same source against the NumPy oracles without a GPU.

A launcher is any callable ``launch(source, name, dtype, total, *args)``: ``source`` the CUDA C
text, ``name`` the ``extern "C"`` kernel, ``total`` the loop length, ``args`` in the kernel's
parameter order: arrays (device pointers), Python ints (``long long``), Python floats
(``real_t``), or NumPy scalars, passed as their own C type (``numpy.uint64`` as
``unsigned long long``, ``numpy.float64`` as ``double``, ...). :func:`cupy_launch` is the GPU
one.
"""

from __future__ import annotations

import functools
import importlib

import numpy as np

__all__ = ["THREADS", "MAX_BLOCKS", "REAL_TYPES", "grid_size", "real_type", "cupy_launch"]

THREADS = 256  # threads per block
MAX_BLOCKS = 8192  # beyond this the grid-stride loop takes over
REAL_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def grid_size(total: int) -> int:
    """Blocks for ``total`` elements: ceil(total / THREADS), at most MAX_BLOCKS, at least 1."""
    return max(1, min(MAX_BLOCKS, -(-total // THREADS)))


def real_type(dtype) -> str:
    """The C type of ``real_t`` for a float32 / float64 dtype (TypeError otherwise)."""
    try:
        return REAL_TYPES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"CUDA kernels take float32 or float64 arrays, got {np.dtype(dtype)}") \
            from None


@functools.lru_cache(maxsize=None)
def _module(source: str, real: str, device: int):
    cp = importlib.import_module("cupy")
    return cp.RawModule(code=source, options=("--std=c++14", f"-Dreal_t={real}"))


def cupy_launch(source: str, name: str, dtype, total: int, *args) -> None:
    """Run kernel ``name`` of ``source`` (compiled for ``dtype``, cached per device) on the
    current CuPy device and stream: grid ``grid_size(total)`` x ``THREADS``. Python ints are
    passed as ``long long``, Python floats as ``real_t``, NumPy scalars as their own type;
    nothing is launched when ``total`` is 0."""
    if total <= 0:
        return
    cp = importlib.import_module("cupy")
    dt = np.dtype(dtype)
    kernel = _module(source, real_type(dt), cp.cuda.Device().id).get_function(name)
    cargs = tuple(np.int64(a) if type(a) is int else dt.type(a) if type(a) is float else a
                  for a in args)
    kernel((grid_size(total),), (THREADS,), cargs)
