"""The fixed inputs of the golden vectors, from a rule any language can replay.

The inputs are stored in the golden files, so a checker does not need this rule, except for
the parameters of the four reference models (1.66 M for the MNIST CNN: too many to store),
which a checker regenerates with :func:`fixed_params`. Every input comes from the SplitMix64
uniforms of ``refsim.compress.rng`` (``docs/compression.md`` section 1), not from a NumPy
generator, so that C++ or JAX can regenerate them without NumPy's PCG64::

    u_i(key)                       the i-th SplitMix64 uniform, float64 in [0, 1)
    fixed_uniform(key, shape, lo, hi)[i]  = lo + (hi - lo) * u_i(key)
    fixed_integers(key, shape, lo, hi)[i] = lo + floor((hi - lo) * u_i(key))   (int64)

with i the C-order flat index, each an IEEE float64 operation in the order written. Every
array of the golden files has its own small integer key (listed in ``docs/golden.md``), so
two arrays never share a stream; inputs are non-symmetric by construction.
"""

from __future__ import annotations

import math

import numpy as np

from refsim.compress.rng import uniform_naive
from refsim.nn import Model

__all__ = ["fixed_uniform", "fixed_integers", "fixed_params", "param_bounds"]


def _size(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def fixed_uniform(key: int, shape: tuple[int, ...], lo: float = -1.0,
                  hi: float = 1.0) -> np.ndarray:
    """``lo + (hi - lo) * u_i(key)`` for i in C order: float64 in [lo, hi), ``shape``.

    >>> fixed_uniform(0, (2,), 0.0, 1.0).tolist() == (uniform_naive(0, 0, 2)).tolist()
    True
    """
    u = uniform_naive(key, 0, _size(shape))  # (n,)
    return (lo + (hi - lo) * u).reshape(shape)


def fixed_integers(key: int, shape: tuple[int, ...], lo: int, hi: int) -> np.ndarray:
    """``lo + floor((hi - lo) * u_i(key))``: int64 in [lo, hi), ``shape``."""
    u = uniform_naive(key, 0, _size(shape))  # (n,)
    return (lo + np.floor((hi - lo) * u).astype(np.int64)).reshape(shape)


def param_bounds(model: Model) -> np.ndarray:
    """(P,) float64: 1 / sqrt(fan_in) of the layer each parameter belongs to.

    fan_in is C*K*K for a convolution weight (O, C, K, K) and I for a dense weight (I, O); a
    bias has the fan_in of its layer's weight (PyTorch's default initialisation bound).
    """
    fan_in = {}
    for spec in model.layout:
        layer, kind = spec.name.rsplit(".", 1)
        if kind == "weight":
            fan_in[layer] = _size(spec.shape[1:]) if len(spec.shape) == 4 else spec.shape[0]
    bounds = np.empty(model.num_params, dtype=np.float64)  # (P,)
    for spec in model.layout:
        layer = spec.name.rsplit(".", 1)[0]
        bounds[spec.offset:spec.offset + spec.size] = 1.0 / math.sqrt(fan_in[layer])
    return bounds


def fixed_params(model: Model, key: int) -> np.ndarray:
    """The model's flat float64 parameters: ``bound_i * (2 * u_i(key) - 1)``, i = 0..P-1.

    i is the index in the flat vector (layout of ``docs/nn.md``) and bound_i is
    :func:`param_bounds`; so every tensor is uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)),
    like PyTorch's default initialisation, and 2u - 1 is exact in float64.
    """
    u = uniform_naive(key, 0, model.num_params)  # (P,)
    return param_bounds(model) * (2.0 * u - 1.0)  # (P,)
