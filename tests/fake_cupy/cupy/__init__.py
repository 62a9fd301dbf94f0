"""A stand-in for CuPy that runs on the CPU, to exercise refsim's CuPy code paths without a GPU.

Not CuPy, and never a source of GPU results: put ``tests/fake_cupy`` first on ``PYTHONPATH`` to
run the tests marked gpu through it (``docs/gpu.md``). What it models:

* ``cupy.ndarray`` is a NumPy subclass whose type lives in module "cupy", so refsim's dispatch
  (``refsim.nn.cuda.is_cupy_array``, ``refsim.backend.get_xp``) takes the device branches;
  ``get()`` copies to the host and ``asarray`` copies from it, as a transfer would.
* An operation mixing a device array with a host array of one or more elements raises
  TypeError, as in CuPy; so do indexing a device array with a host index array and assigning
  a host array into one, which CuPy may instead do with a hidden transfer (the stand-in is
  stricter, so refsim's device code never relies on one).
* ``RawModule`` compiles the CUDA C with the host compiler and runs each kernel through
  ``tests/cuda_emulator.py`` on a small grid (refsim's grid-stride kernels do not depend on
  the launch configuration).
* Array functions are NumPy's, with results viewed as ``cupy.ndarray``.
* ``transfers`` counts host-to-device copies and ``waits`` the reads that would wait for a GPU
  (``get``, ``float``, ``int``, ``bool``, ``item``, ``tolist``), so a test can check that a
  loop does not copy or wait at every step.

Floating-point results differ from a GPU's in the last bits (host libm, host BLAS), so
tolerances are tested here, never the GPU's bits or speed.
"""

from __future__ import annotations

import os
import sys
import types

import numpy as _np

__version__ = "0.0-fake"
_FAKE = True
counters = {"transfers": 0, "waits": 0}


def _waited():
    counters["waits"] += 1


class ndarray(_np.ndarray):  # noqa: N801 - CuPy's name
    """A NumPy array playing a device array."""

    def get(self):
        _waited()
        return _np.array(self.view(_np.ndarray), copy=True)

    def __float__(self):
        _waited()
        return float(self.view(_np.ndarray))

    def __int__(self):
        _waited()
        return int(self.view(_np.ndarray))

    def __bool__(self):
        _waited()
        return bool(self.view(_np.ndarray))

    def item(self, *args):
        _waited()
        return self.view(_np.ndarray).item(*args)

    def tolist(self):
        _waited()
        return self.view(_np.ndarray).tolist()

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        for a in inputs:
            if type(a) is _np.ndarray and a.ndim > 0:
                raise TypeError(f"fake CuPy: {ufunc.__name__} mixes a device array with a "
                                f"host array of shape {a.shape}")
        args = [a.view(_np.ndarray) if isinstance(a, ndarray) else a for a in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(o.view(_np.ndarray) if isinstance(o, ndarray) else o
                                  for o in kwargs["out"])
        return _wrap(getattr(ufunc, method)(*args, **kwargs))

    def __getitem__(self, key):
        for k in key if isinstance(key, tuple) else (key,):
            if type(k) is _np.ndarray:
                raise TypeError("fake CuPy: indexing a device array with a host index array")
        return _wrap(super().__getitem__(_unwrap_index(key)))

    def __setitem__(self, key, value):
        if type(value) is _np.ndarray and value.ndim > 0:
            raise TypeError("fake CuPy: assigning a host array into a device array")
        super().__setitem__(_unwrap_index(key), value)

    __module__ = "cupy"


def _unwrap_index(key):
    if isinstance(key, tuple):
        return tuple(k.view(_np.ndarray) if isinstance(k, ndarray) else k for k in key)
    return key.view(_np.ndarray) if isinstance(key, ndarray) else key


def _wrap(out):
    if isinstance(out, _np.ndarray) and not isinstance(out, ndarray):
        return out.view(ndarray)
    if isinstance(out, tuple):
        return tuple(_wrap(o) for o in out)
    return out


def asarray(a, dtype=None):
    """A device copy of a host array (or the device array itself)."""
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    counters["transfers"] += 1
    return _np.array(a, dtype=dtype, copy=True).view(ndarray)


def ascontiguousarray(a, dtype=None):
    if not isinstance(a, ndarray):
        raise TypeError("fake CuPy: ascontiguousarray of a host array")
    return _np.ascontiguousarray(a.view(_np.ndarray), dtype=dtype).view(ndarray)


def __getattr__(name):
    value = getattr(_np, name)
    if callable(value) and not isinstance(value, type):  # functions and ufuncs, not dtypes
        def function(*args, **kwargs):
            return _wrap(value(*args, **kwargs))
        function.__name__ = name
        return function
    return value


class _Runtime:
    @staticmethod
    def getDeviceCount():  # noqa: N802 - CUDA's name
        return 1


class Device:
    def __init__(self, device_id: int = 0):
        self.id = device_id

    def synchronize(self):
        pass


cuda = types.SimpleNamespace(runtime=_Runtime(), Device=Device)


class RawModule:
    """Compiles ``code`` for the host; ``-Dreal_t=...`` picks the float type."""

    def __init__(self, code: str, options=()):
        real = [o.split("=", 1)[1] for o in options if o.startswith("-Dreal_t=")]
        self._code, self._real = code, real[0] if real else "float"

    def get_function(self, name: str):
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if here not in sys.path:
            sys.path.insert(0, here)
        from cuda_emulator import emulated_launch

        dtype = _np.float32 if self._real == "float" else _np.float64

        def kernel(grid, block, args):
            host = [a.view(_np.ndarray) if isinstance(a, ndarray) else a for a in args]
            for a in args:
                if type(a) is _np.ndarray:
                    raise TypeError(f"fake CuPy: kernel {name} was passed a host array")
            emulated_launch(self._code, name, dtype, 1, *host)

        return kernel
