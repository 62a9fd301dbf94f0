"""The array backend and the one rule from which every random stream is derived.

This is layer 0 of refsim: it imports nothing from refsim and only NumPy at import
time. CuPy is optional and imported lazily, the first time a caller asks for it.

Array module
    Code is written once over an array module ``xp`` (NumPy or CuPy). The module is
    either passed explicitly (``get_xp("cupy")``) or derived from an array
    (``get_xp(x)``). There is no global switch.

Random streams (see ``docs/determinism.md``)
    Every random draw in refsim comes from ``make_rng(seed, purpose, *keys)``::

        numpy.random.default_rng([seed, int(purpose), *keys])

    i.e. a PCG64 generator seeded by ``numpy.random.SeedSequence`` with the entropy
    words ``[seed, purpose, *keys]``. Each :class:`Purpose` fixes how many keys it
    takes, so two different streams never share an entropy list (SeedSequence pads
    short lists with zeros, so ``[s, p, 0]`` and ``[s, p]`` would otherwise collide).
    Any round or client can therefore be replayed on its own, without replaying
    what came before it.
"""

from __future__ import annotations

import enum
import importlib
import operator
from types import ModuleType

import numpy as np

__all__ = ["Purpose", "get_xp", "to_numpy", "is_cupy_array", "make_rng", "available_backends"]

_MAX_KEY = 2**32  # each entropy word is one uint32, so the rule is easy to replay


class Purpose(enum.IntEnum):
    """What a random stream is used for; the value is the second entropy word.

    The keys each purpose takes after the seed (their number is fixed):

    ============== ===== ==================================================
    purpose        value keys
    ============== ===== ==================================================
    INIT           0     ()                         model initialisation
    PARTITION      1     ()                         splitting data over clients
    CLIENT_SAMPLE  2     (round,)                   clients chosen in a round
    BATCH_ORDER    3     (round, client, epoch)     a client's shuffle per epoch
    QUANTIZE       4     (round, client)            stochastic-rounding seeds
    EVAL_SPLIT     5     (client,)                  a client's held-out examples
    DATA           6     ()                         synthetic data generation
    BROADCAST      7     (round,)                   downlink stochastic rounding
    EVAL_SAMPLE    8     (round,)                   clients in a federated evaluation
    ============== ===== ==================================================
    """

    INIT = 0
    PARTITION = 1
    CLIENT_SAMPLE = 2
    BATCH_ORDER = 3
    QUANTIZE = 4
    EVAL_SPLIT = 5
    DATA = 6
    BROADCAST = 7
    EVAL_SAMPLE = 8

    @property
    def key_names(self) -> tuple[str, ...]:
        return _KEY_NAMES[self]


_KEY_NAMES: dict[Purpose, tuple[str, ...]] = {
    Purpose.INIT: (),
    Purpose.PARTITION: (),
    Purpose.CLIENT_SAMPLE: ("round",),
    Purpose.BATCH_ORDER: ("round", "client", "epoch"),
    Purpose.QUANTIZE: ("round", "client"),
    Purpose.EVAL_SPLIT: ("client",),
    Purpose.DATA: (),
    Purpose.BROADCAST: ("round",),
    Purpose.EVAL_SAMPLE: ("round",),
}


def _check_word(name: str, value: object) -> int:
    try:
        word = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if not 0 <= word < _MAX_KEY:
        raise ValueError(f"{name} must be in [0, 2**32), got {word}")
    return word


def make_rng(seed: int, purpose: Purpose, *keys: int) -> np.random.Generator:
    """The random stream for ``purpose`` under run seed ``seed`` and integer ``keys``.

    Returns ``numpy.random.default_rng([seed, int(purpose), *keys])``. Every word
    must be an integer in [0, 2**32); the number of keys is fixed by ``purpose``.

    >>> a = make_rng(7, Purpose.BATCH_ORDER, 3, 12, 0).permutation(5)
    >>> b = np.random.default_rng([7, 3, 3, 12, 0]).permutation(5)
    >>> bool((a == b).all())
    True
    """
    if not isinstance(purpose, Purpose):
        raise TypeError(f"purpose must be a refsim.backend.Purpose, got {purpose!r}")
    names = _KEY_NAMES[purpose]
    if len(keys) != len(names):
        raise ValueError(
            f"Purpose.{purpose.name} takes keys {names}, got {len(keys)} key(s): {keys}"
        )
    words = [_check_word("seed", seed), int(purpose)]
    words += [_check_word(name, key) for name, key in zip(names, keys)]
    return np.random.default_rng(words)


def _cupy() -> ModuleType | None:
    try:
        return importlib.import_module("cupy")
    except ImportError:
        return None


def get_xp(x_or_name: object) -> ModuleType:
    """The array module of an array, or of a backend named ``"numpy"`` / ``"cupy"``.

    ``"cupy"`` raises ValueError, saying which, when CuPy is not installed or sees no device.

    >>> get_xp(np.zeros(3)) is np, get_xp("numpy") is np
    (True, True)
    """
    if isinstance(x_or_name, str):
        if x_or_name == "numpy":
            return np
        if x_or_name == "cupy":
            cp = _cupy()
            if cp is None:
                raise ValueError("backend 'cupy' requested but CuPy is not installed "
                                 "(pip install 'refsim[gpu]')")
            if "cupy" not in available_backends():
                raise ValueError("backend 'cupy' requested but CuPy sees no CUDA device "
                                 "(check the driver and CUDA_VISIBLE_DEVICES)")
            return cp
        raise ValueError(f"unknown backend {x_or_name!r}: expected 'numpy' or 'cupy'")
    if is_cupy_array(x_or_name):
        return importlib.import_module("cupy")
    return np


def is_cupy_array(a: object) -> bool:
    """True for a ``cupy.ndarray``, decided from the type's module, so that CuPy is never
    imported for NumPy arrays."""
    return type(a).__module__.split(".")[0] == "cupy"


def to_numpy(a: object) -> np.ndarray:
    """A NumPy copy (CuPy) or view (NumPy) of an array."""
    if is_cupy_array(a):
        return a.get()
    return np.asarray(a)


def available_backends() -> list[str]:
    """``["numpy"]``, plus ``"cupy"`` when CuPy imports and sees a CUDA device."""
    backends = ["numpy"]
    cp = _cupy()
    if cp is not None:
        try:
            if cp.cuda.runtime.getDeviceCount() > 0:
                backends.append("cupy")
        except Exception:  # noqa: BLE001 - CuPy raises driver-specific errors without a GPU
            pass
    return backends
