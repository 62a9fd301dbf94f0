"""Run refsim's CUDA C kernels on the CPU: the same source, compiled by the host C++ compiler.

refsim's kernels are grid-stride loops without shared memory, barriers or atomics
(``refsim.cuda_launch``), so calling the kernel function once for every (block, thread)
pair of a small grid, one after another, computes exactly what the GPU computes. A prelude
defines ``__global__`` and friends away and makes ``blockIdx``, ``threadIdx``, ``blockDim`` and
``gridDim`` global variables the launcher sets before each call. ``exp`` and ``log`` are the
host's libm, so floating-point kernels agree with the GPU only to rounding; data movement and
integer results are exact.

Use :func:`emulated_launch` wherever ``refsim.nn.cuda`` takes a ``launch`` argument.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

from refsim.cuda_launch import real_type

__all__ = ["compiler", "emulated_launch", "EMULATED_GRID"]

EMULATED_GRID = (3, 5)  # (blocks, threads): small, odd, so every stride path is exercised

_PRELUDE = r"""
#include <cmath>
using std::exp;
using std::floor;
using std::log;
using std::rint;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
struct refsim_dim3 { unsigned int x, y, z; };
extern "C" { refsim_dim3 threadIdx, blockIdx, blockDim, gridDim; }
"""


def compiler() -> str | None:
    """The host C++ compiler (``$CXX``, g++ or c++), or None."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class _Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


@functools.lru_cache(maxsize=None)
def _library(source: str, real: str) -> ctypes.CDLL:
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler to emulate the CUDA kernels with")
    text = _PRELUDE + source
    tag = hashlib.sha256((real + text).encode()).hexdigest()[:16]
    folder = os.path.join(tempfile.gettempdir(), "refsim-cuda-emulator")
    os.makedirs(folder, exist_ok=True)
    lib = os.path.join(folder, f"{tag}-{real}.so")
    if not os.path.exists(lib):
        src = os.path.join(folder, f"{tag}-{real}.cpp")
        with open(src, "w") as f:
            f.write(text)
        tmp = f"{lib}.{os.getpid()}"
        subprocess.run([cxx, "-std=c++14", "-O1", "-fno-fast-math", "-ffp-contract=off",
                        "-shared", "-fPIC", f"-Dreal_t={real}", src, "-o", tmp],
                       check=True, capture_output=True, text=True)
        os.replace(tmp, lib)
    return ctypes.CDLL(lib)


def emulated_launch(source: str, name: str, dtype, total: int, *args,
                    grid: tuple[int, int] = EMULATED_GRID) -> None:
    """A ``launch`` for refsim's kernels: run kernel ``name`` on NumPy arrays, one call per
    (block, thread) of ``grid``; arguments typed as ``refsim.cuda_launch`` types them."""
    if total <= 0:
        return
    dt = np.dtype(dtype)
    real = real_type(dt)
    lib = _library(source, real)
    ctype_real = ctypes.c_float if real == "float" else ctypes.c_double
    cargs = []
    for a in args:
        if isinstance(a, np.ndarray):
            if not a.flags.c_contiguous:
                raise ValueError(f"{name}: a kernel argument is not C-contiguous")
            cargs.append(ctypes.c_void_p(a.ctypes.data))
        elif type(a) is int or isinstance(a, np.int64):
            cargs.append(ctypes.c_longlong(int(a)))
        elif isinstance(a, np.uint64):
            cargs.append(ctypes.c_ulonglong(int(a)))
        elif type(a) is float:
            cargs.append(ctype_real(a))
        elif isinstance(a, np.float64):
            cargs.append(ctypes.c_double(float(a)))
        elif isinstance(a, np.float32):
            cargs.append(ctypes.c_float(float(a)))
        else:
            raise TypeError(f"{name}: cannot pass {type(a).__name__} to a kernel")
    kernel = getattr(lib, name)
    kernel.restype = None
    blocks, threads = grid
    block_idx, thread_idx = _Dim3.in_dll(lib, "blockIdx"), _Dim3.in_dll(lib, "threadIdx")
    block_dim, grid_dim = _Dim3.in_dll(lib, "blockDim"), _Dim3.in_dll(lib, "gridDim")
    block_dim.x, block_dim.y, block_dim.z = threads, 1, 1
    grid_dim.x, grid_dim.y, grid_dim.z = blocks, 1, 1
    for b in range(blocks):
        for t in range(threads):
            block_idx.x, thread_idx.x = b, t
            kernel(*cargs)
