"""M copies of one model trained side by side: one forward/backward pass for M clients.

A FedAvg round trains m clients from the same broadcast weights, each on its own minibatches.
With small batches (the paper's B = 10) each client's step is a few small matrix products and
a GPU waits on kernel launches, not arithmetic. Stacking the clients turns the M small products
of a layer into one batched product (``xp.matmul`` over a leading client axis; cuBLAS's strided
batched GEMM on a GPU) and every other layer into one call over M * b examples::

    W    (M, P)               client i's flat parameters, the layout of ``Model``
    x    (M, b, *input_shape) client i's minibatch, all of the same size b
    L_i  = mean softmax cross-entropy of client i's batch under W[i]
    G[i] = dL_i / dW[i]       (M, P)

Client i's result is the same function of (W[i], x[i], y[i]) as ``Model.loss_grad_and_logits``;
the two differ only in the order of the sums inside the matrix products (the single-client
convolution sums its batch in im2col chunks), so they agree to float rounding, not bit for bit
(``tests/test_fedavg_stacked.py``). Per-client layers (convolution, dense) use the client
axis; max-pool, ReLU and flatten see the M * b examples as one batch; the loss is taken per
client so that each L_i and dz_i is exactly the single-client computation on the same logits.
"""

from __future__ import annotations

import numpy as np

from refsim.backend import get_xp
from refsim.nn.activation import relu_backward, relu_forward
from refsim.nn.conv import conv_output_size, conv_padding
from refsim.nn.im2col import col2im, im2col
from refsim.nn.loss import softmax_cross_entropy
from refsim.nn.model import Conv2D, Dense, MaxPool2D, Model, ReLU
from refsim.nn.pool import maxpool2d_backward, maxpool2d_forward

__all__ = ["stacked_views", "stacked_loss_grad_and_logits"]


def stacked_views(model: Model, W) -> dict:
    """Named views (M, *shape) of stacked flat vectors W (M, P)."""
    if W.ndim != 2 or W.shape[1] != model.num_params:
        raise ValueError(f"{model.name}: stacked parameters must have shape (M, "
                         f"{model.num_params}), got {W.shape}")
    M = W.shape[0]
    return {s.name: W[:, s.offset:s.offset + s.size].reshape(M, *s.shape) for s in model.layout}


def _conv_forward(x, w, b, padding):
    """x (M, n, C, H, W), w (M, O, C, K, K), b (M, O) -> y (M, n, O, Ho, Wo), cache."""
    xp = get_xp(x)
    M, n, C, H, W = x.shape
    O, K = w.shape[1], w.shape[3]
    before = conv_padding(K, padding)[0]
    Ho, Wo = conv_output_size(H, K, padding), conv_output_size(W, K, padding)
    cols = im2col(x.reshape(M * n, C, H, W), K, before, Ho, Wo)  # (C, K, K, M*n, Ho, Wo)
    cols = cols.reshape(C * K * K, M, n * Ho * Wo).transpose(1, 0, 2)  # (M, CKK, n*Ho*Wo)
    y = xp.matmul(w.reshape(M, O, C * K * K), cols) + b[:, :, None]  # (M, O, n*Ho*Wo)
    y = y.reshape(M, O, n, Ho, Wo).transpose(0, 2, 1, 3, 4)  # (M, n, O, Ho, Wo)
    return y, (x.shape, w, before, cols)


def _conv_backward(dy, cache, need_dx):
    """dy (M, n, O, Ho, Wo) -> dx (M, n, C, H, W) or None, dw (M, O, C, K, K), db (M, O)."""
    xp = get_xp(dy)
    (M, n, C, H, W), w, before, cols = cache
    O, K = w.shape[1], w.shape[3]
    Ho, Wo = dy.shape[3], dy.shape[4]
    dy_t = xp.ascontiguousarray(dy.transpose(0, 2, 1, 3, 4)).reshape(M, O, n * Ho * Wo)
    dw = xp.matmul(dy_t, cols.transpose(0, 2, 1)).reshape(w.shape)  # (M, O, C, K, K)
    db = dy_t.sum(axis=2)  # (M, O)
    dx = None
    if need_dx:
        dcols = xp.matmul(w.reshape(M, O, C * K * K).transpose(0, 2, 1), dy_t)  # (M, CKK, nHW)
        dcols = xp.ascontiguousarray(dcols.transpose(1, 0, 2)).reshape(C, K, K, M * n, Ho, Wo)
        dx = col2im(dcols, (M * n, C, H, W), before).reshape(M, n, C, H, W)
    return dx, dw, db


def _flat(h):
    """(M, n, ...) as one batch (M*n, ...)."""
    return h.reshape(h.shape[0] * h.shape[1], *h.shape[2:])


def stacked_loss_grad_and_logits(model: Model, W, x, y):
    """(L (M,) float64, G (M, P), logits (M, b, K)) of M clients' minibatches, side by side.

    W : (M, P) float32/float64; x : (M, b, *model.input_shape), W's dtype; y : (M, b) integer
    labels in [0, K) (not checked here: the caller checks each client's data once).
    """
    xp = get_xp(W)
    view = stacked_views(model, W)
    M = W.shape[0]
    if x.shape[:1] != (M,) or x.shape[2:] != model.input_shape or x.dtype != W.dtype:
        raise ValueError(f"{model.name}: x must be (M={M}, b, {model.input_shape}) "
                         f"{W.dtype}, got {x.shape} {x.dtype}")
    if y.shape != x.shape[:2]:
        raise ValueError(f"labels must have shape {x.shape[:2]}, got {y.shape}")
    n = x.shape[1]
    h, caches = x, []
    for layer in model.layers:
        if isinstance(layer, Conv2D):
            h, cache = _conv_forward(h, view[f"{layer.name}.weight"], view[f"{layer.name}.bias"],
                                     layer.padding)
        elif isinstance(layer, Dense):
            w, b = view[f"{layer.name}.weight"], view[f"{layer.name}.bias"]
            cache = (h, w)
            h = xp.matmul(h, w) + b[:, None, :]  # (M, n, O)
        elif isinstance(layer, MaxPool2D):
            out, cache = maxpool2d_forward(_flat(h), layer.padding)
            h = out.reshape(M, n, *out.shape[1:])
        elif isinstance(layer, ReLU):
            out, cache = relu_forward(h)
            h = out
        else:  # Flatten
            cache = h.shape
            h = h.reshape(M, n, -1)
        caches.append(cache)
    logits = h  # (M, n, K)
    d = xp.empty_like(logits)
    losses = []
    for i in range(M):  # per client: exactly the single-client loss on the same logits
        loss_i, d[i] = softmax_cross_entropy(logits[i], y[i], check=False)
        losses.append(loss_i)  # a float (NumPy) or a float64 0-d device array (CuPy)
    losses = xp.stack(losses).astype(np.float64)  # (M,)
    G = xp.empty_like(W)
    gview = stacked_views(model, G)
    for i in range(len(model.layers) - 1, -1, -1):
        layer, cache = model.layers[i], caches[i]
        need_dx = i > 0
        if isinstance(layer, Conv2D):
            d, dw, db = _conv_backward(d, cache, need_dx)
        elif isinstance(layer, Dense):
            h_in, w = cache
            dw, db = xp.matmul(h_in.transpose(0, 2, 1), d), d.sum(axis=1)  # (M, I, O), (M, O)
            d = xp.matmul(d, w.transpose(0, 2, 1)) if need_dx else None
        elif isinstance(layer, MaxPool2D):
            dx = maxpool2d_backward(_flat(d), cache)
            d = dx.reshape(M, n, *dx.shape[1:])
        elif isinstance(layer, ReLU):
            d = relu_backward(d, cache)
        else:  # Flatten
            d = d.reshape(cache)
        if isinstance(layer, (Conv2D, Dense)):
            gview[f"{layer.name}.weight"][...] = dw
            gview[f"{layer.name}.bias"][...] = db
    return losses, G, logits
