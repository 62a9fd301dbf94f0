"""One plain SGD step, w <- w - eta * g (McMahan et al., "Communication-Efficient Learning of
Deep Networks from Decentralized Data", AISTATS 2017, arXiv:1602.05629, Algorithm 1,
ClientUpdate: "w <- w - eta grad l(w; b)").

In the parameters' dtype: eta is cast to it first, then each element is
``w[i] - eta * g[i]``, the product rounded, then the difference (no fused multiply-add).
``sgd_step_naive`` is the NumPy expression, the oracle; ``sgd_step`` runs the same
arithmetic as one compiled pass for NumPy arrays (no temporary for eta * g, and with
``out=w`` none at all) and the NumPy expression on other arrays (CuPy).
``tests/test_nn_sgd.py`` pins the two bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np

from refsim.backend import is_cupy_array

__all__ = ["sgd_step", "sgd_step_naive"]


def _check(params, grad) -> None:
    if params.shape != grad.shape or params.dtype != grad.dtype:
        raise ValueError(f"sgd_step: params {params.shape} {params.dtype} and grad "
                         f"{grad.shape} {grad.dtype} differ")


def sgd_step_naive(params, grad, lr: float):
    """w - dtype(lr) * g as a NumPy expression (any array module). Oracle of :func:`sgd_step`."""
    _check(params, grad)
    return params - params.dtype.type(lr) * grad


def _sgd_loop(params, grad, lr, out):
    """out[i] = params[i] - lr * grad[i], element by element (out may be params)."""
    for i in range(params.shape[0]):
        out[i] = params[i] - lr * grad[i]


_sgd_kernel = numba.njit(cache=True, nogil=True)(_sgd_loop)


def sgd_step(params, grad, lr: float, out=None):
    """One SGD step, the same bits as :func:`sgd_step_naive` (its oracle).

    params, grad : ndarray, shape (P,), one float dtype; lr : eta (cast to that dtype).
    out : None (a new array is returned) or an array like params to write into, params
    itself included (an in-place step, for a loop that owns its weights).
    """
    _check(params, grad)
    if is_cupy_array(params) or not (isinstance(params, np.ndarray) and isinstance(grad, np.ndarray)
            and params.ndim == 1 and params.flags.c_contiguous and grad.flags.c_contiguous):
        step = params - params.dtype.type(lr) * grad
        if out is None:
            return step
        out[...] = step
        return out
    if out is None:
        out = np.empty_like(params)
    elif out.shape != params.shape or out.dtype != params.dtype or not out.flags.c_contiguous:
        raise ValueError(f"sgd_step: out must be a contiguous {params.shape} {params.dtype} array")
    _sgd_kernel(params, grad, params.dtype.type(lr), out)
    return out
