"""Convert refsim's flat parameters to and from PyTorch and Keras weight layouts.

==================  ======================  ======================  =====================
tensor              refsim                  PyTorch state_dict      Keras get_weights()
==================  ======================  ======================  =====================
conv kernel         (O, C, K, K)            (O, C, K, K)            (K, K, C, O)  HWIO
dense weight        (I, O)                  (O, I)                  (I, O)
first dense after   rows in (c, h, w)       columns in (c, h, w)    rows in (h, w, c)
a flatten           order (NCHW)            order                   order (NHWC)
==================  ======================  ======================  =====================

Keras flattens NHWC activations, so the dense layer after a ``Flatten`` of a (C, H, W)
tensor sees its inputs in a different order: its rows are permuted, not just transposed.
PyTorch names are ``<layer>.weight`` / ``<layer>.bias``, in layer order (refsim's names);
Keras' ``model.get_weights()`` is the list [kernel, bias] per layer in the same order.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from refsim.nn.model import FLOAT_DTYPES, Conv2D, Dense, Flatten, Model

__all__ = ["to_torch_state_dict", "from_torch_state_dict", "to_keras_weights", "from_keras_weights"]


def _as_numpy(value, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch.Tensor, without importing torch
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{what} must be float32 or float64, got {arr.dtype}")
    return arr


def _check_params(model: Model, params) -> np.ndarray:
    params = np.asarray(params)
    model.views(params)  # validates dtype and length
    return params


def to_torch_state_dict(model: Model, params) -> "OrderedDict[str, np.ndarray]":
    """PyTorch-layout copies: conv (O, C, K, K), dense weight (O, I), weight then bias."""
    view = model.views(_check_params(model, params))
    state = OrderedDict()
    for spec in model.layout:
        value = view[spec.name]
        is_dense_weight = spec.name.endswith(".weight") and value.ndim == 2
        state[spec.name] = np.ascontiguousarray(value.T if is_dense_weight else value)
    return state


def from_torch_state_dict(model: Model, state_dict) -> np.ndarray:
    """Flat params from a PyTorch state dict (NumPy arrays or tensors) with refsim's names.

    The result has the dtype of the state dict's tensors (all must share one float dtype).
    """
    expected = [spec.name for spec in model.layout]
    if list(state_dict.keys()) != expected:
        raise ValueError(f"{model.name}: state dict keys {list(state_dict.keys())} do not match "
                         f"{expected} (names and order)")
    arrays = {k: _as_numpy(v, f"state_dict[{k!r}]") for k, v in state_dict.items()}
    dtypes = {a.dtype for a in arrays.values()}
    if len(dtypes) != 1:
        raise TypeError(f"{model.name}: state dict mixes dtypes {sorted(map(str, dtypes))}")
    flat = np.empty(model.num_params, dtype=dtypes.pop())
    view = model.views(flat)
    for spec in model.layout:
        value = arrays[spec.name]
        if value.ndim == 2:
            value = value.T
        if value.shape != spec.shape:
            torch_shape = spec.shape[::-1] if len(spec.shape) == 2 else spec.shape
            raise ValueError(f"{model.name}: {spec.name} must have PyTorch shape {torch_shape}, "
                             f"got {arrays[spec.name].shape}")
        view[spec.name][...] = value
    return flat


def _flatten_input_shapes(model: Model) -> dict:
    """For each dense layer fed directly by a Flatten: the (C, H, W) shape that was flattened."""
    result = {}
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dense) and i > 0 and isinstance(model.layers[i - 1], Flatten):
            shape = model.shapes[i - 1]
            if len(shape) == 3:
                result[layer.name] = shape
    return result


def to_keras_weights(model: Model, params) -> list:
    """Keras ``get_weights()`` order and layouts: HWIO kernels, (I, O) dense, NHWC flatten."""
    view = model.views(_check_params(model, params))
    flattened = _flatten_input_shapes(model)
    weights = []
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            weights.append(np.ascontiguousarray(view[f"{layer.name}.weight"].transpose(2, 3, 1, 0)))
        elif isinstance(layer, Dense):
            w = view[f"{layer.name}.weight"]  # (I, O), rows in (c, h, w) order
            if layer.name in flattened:
                C, H, W = flattened[layer.name]
                w = w.reshape(C, H, W, -1).transpose(1, 2, 0, 3).reshape(C * H * W, -1)
            weights.append(np.ascontiguousarray(w))
        else:
            continue
        weights.append(view[f"{layer.name}.bias"].copy())
    return weights


def from_keras_weights(model: Model, weights) -> np.ndarray:
    """Flat params from Keras ``get_weights()`` (the inverse of :func:`to_keras_weights`)."""
    arrays = [_as_numpy(w, f"weights[{i}]") for i, w in enumerate(weights)]
    if len(arrays) != len(model.layout):
        raise ValueError(f"{model.name}: expected {len(model.layout)} Keras arrays "
                         f"(kernel, bias per layer), got {len(arrays)}")
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) != 1:
        raise TypeError(f"{model.name}: Keras weights mix dtypes {sorted(map(str, dtypes))}")
    flattened = _flatten_input_shapes(model)
    flat = np.empty(model.num_params, dtype=dtypes.pop())
    view = model.views(flat)
    it = iter(arrays)
    for layer in model.layers:
        if not isinstance(layer, (Conv2D, Dense)):
            continue
        kernel, bias = next(it), next(it)
        w_spec = view[f"{layer.name}.weight"]
        if isinstance(layer, Conv2D):
            expected = w_spec.shape[2:] + w_spec.shape[1::-1]  # (K, K, C, O)
            if kernel.shape != expected:
                raise ValueError(f"{layer.name}: Keras kernel must be {expected}, got {kernel.shape}")
            w_spec[...] = kernel.transpose(3, 2, 0, 1)
        else:
            if kernel.shape != w_spec.shape:
                raise ValueError(f"{layer.name}: Keras kernel must be {w_spec.shape}, got {kernel.shape}")
            if layer.name in flattened:
                C, H, W = flattened[layer.name]
                kernel = kernel.reshape(H, W, C, -1).transpose(2, 0, 1, 3).reshape(C * H * W, -1)
            w_spec[...] = kernel
        b_spec = view[f"{layer.name}.bias"]
        if bias.shape != b_spec.shape:
            raise ValueError(f"{layer.name}: Keras bias must be {b_spec.shape}, got {bias.shape}")
        b_spec[...] = bias
    return flat
