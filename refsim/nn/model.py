"""A network as data: a tuple of layers plus one flat parameter vector with a fixed layout.

A :class:`Model` is an immutable description (its layers, input shape and parameter layout).
Its methods are pure functions of their arguments: ``init(rng)`` draws a flat parameter
vector, ``forward(params, x)`` returns logits and ``loss_and_grad(params, x, y)`` returns the
mean softmax cross-entropy and its gradient, flat, in the same layout as ``params``.

Parameter layout (``docs/nn.md``): the parameters of each layer with weights, in layer
order, weight then bias, each in C order and contiguous in one float32 or float64 vector:

* convolution ``<name>.weight`` (O, C, K, K) then ``<name>.bias`` (O,);
* dense ``<name>.weight`` (I, O) then ``<name>.bias`` (O,).

Images are NCHW. The four models of the paper and tutorials live in ``refsim.nn.models``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple, Union

import numpy as np

from refsim.backend import get_xp
from refsim.nn.activation import relu_backward, relu_forward
from refsim.nn.chunk_threads import ChunkThreads
from refsim.nn.conv import conv2d_backward, conv2d_forward, conv_output_size
from refsim.nn.dense import linear_backward, linear_forward
from refsim.nn.flatten import flatten_backward, flatten_forward
from refsim.nn.fused import conv_relu_pool_backward, conv_relu_pool_forward
from refsim.nn.loss import check_labels, softmax_cross_entropy
from refsim.nn.pool import maxpool2d_backward, maxpool2d_forward, pool_output_size
from refsim.nn.sgd import sgd_step  # re-exported: refsim.nn.model.sgd_step

__all__ = ["Conv2D", "MaxPool2D", "ReLU", "Flatten", "Dense", "ParamSpec", "Model", "sgd_step"]

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class Conv2D:
    """K x K convolution, stride 1, C -> O channels (``refsim.nn.conv``)."""
    name: str
    in_channels: int
    out_channels: int
    kernel: int
    padding: Union[str, int] = "valid"


@dataclass(frozen=True)
class MaxPool2D:
    """2x2 max-pool, stride 2 (``refsim.nn.pool``)."""
    padding: str = "valid"


@dataclass(frozen=True)
class ReLU:
    """max(x, 0) (``refsim.nn.activation``)."""


@dataclass(frozen=True)
class Flatten:
    """(N, C, H, W) -> (N, C*H*W) in C order (``refsim.nn.flatten``)."""


@dataclass(frozen=True)
class Dense:
    """y = x w + b with w of shape (I, O) (``refsim.nn.dense``)."""
    name: str
    in_features: int
    out_features: int


Layer = Union[Conv2D, MaxPool2D, ReLU, Flatten, Dense]


class ParamSpec(NamedTuple):
    """One named parameter tensor: its shape and offset in the flat vector."""
    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _output_shape(layer: Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-example output shape of ``layer`` for per-example input ``shape``."""
    if isinstance(layer, Conv2D):
        if len(shape) != 3 or shape[0] != layer.in_channels:
            raise ValueError(f"{layer.name} expects input (C={layer.in_channels}, H, W), got {shape}")
        return (layer.out_channels, conv_output_size(shape[1], layer.kernel, layer.padding),
                conv_output_size(shape[2], layer.kernel, layer.padding))
    if isinstance(layer, MaxPool2D):
        if len(shape) != 3:
            raise ValueError(f"MaxPool2D expects input (C, H, W), got {shape}")
        return (shape[0], pool_output_size(shape[1], layer.padding),
                pool_output_size(shape[2], layer.padding))
    if isinstance(layer, ReLU):
        return shape
    if isinstance(layer, Flatten):
        return (math.prod(shape),)
    if isinstance(layer, Dense):
        if shape != (layer.in_features,):
            raise ValueError(f"{layer.name} expects input ({layer.in_features},), got {shape}")
        return (layer.out_features,)
    raise TypeError(f"unknown layer {layer!r}")


def _param_shapes(layer: Layer) -> list[tuple[str, tuple[int, ...]]]:
    if isinstance(layer, Conv2D):
        k = layer.kernel
        return [(f"{layer.name}.weight", (layer.out_channels, layer.in_channels, k, k)),
                (f"{layer.name}.bias", (layer.out_channels,))]
    if isinstance(layer, Dense):
        return [(f"{layer.name}.weight", (layer.in_features, layer.out_features)),
                (f"{layer.name}.bias", (layer.out_features,))]
    return []


def _fans(layer: Union[Conv2D, Dense]) -> tuple[int, int]:
    """(fan_in, fan_out) as Keras and PyTorch compute them: times K*K for a convolution."""
    if isinstance(layer, Conv2D):
        return layer.in_channels * layer.kernel ** 2, layer.out_channels * layer.kernel ** 2
    return layer.in_features, layer.out_features


def _steps(layers: tuple[Layer, ...]) -> tuple[tuple[int, int], ...]:
    """The passes of a forward or backward sweep, as (first layer index, number of layers):
    each Conv2D followed by a ReLU and a MaxPool2D is one step of 3 (``refsim.nn.fused`` runs
    the three as one block, with the same results as layer by layer), every other layer a
    step of 1."""
    steps, i = [], 0
    while i < len(layers):
        block = (isinstance(layers[i], Conv2D) and i + 2 < len(layers)
                 and isinstance(layers[i + 1], ReLU) and isinstance(layers[i + 2], MaxPool2D))
        steps.append((i, 3 if block else 1))
        i += steps[-1][1]
    return tuple(steps)


@dataclass(frozen=True)
class Model:
    """An immutable network description; see the module docstring.

    >>> from refsim.nn import logistic
    >>> m = logistic()
    >>> p = m.init(np.random.default_rng(0), scheme="keras")
    >>> m.num_params, p.dtype, m.forward(p, np.zeros((2, 1, 28, 28), np.float32)).shape
    (7850, dtype('float32'), (2, 10))
    """
    name: str
    input_shape: tuple[int, ...]  # per example, e.g. (C, H, W)
    layers: tuple[Layer, ...]
    shapes: tuple[tuple[int, ...], ...] = field(init=False, repr=False)  # input of each layer, then output
    layout: tuple[ParamSpec, ...] = field(init=False, repr=False)
    num_params: int = field(init=False)
    steps: tuple[tuple[int, int], ...] = field(init=False, repr=False)  # (first layer, count)

    def __post_init__(self) -> None:
        shapes = [tuple(self.input_shape)]
        layout, offset = [], 0
        for layer in self.layers:
            shapes.append(_output_shape(layer, shapes[-1]))
            for name, shape in _param_shapes(layer):
                layout.append(ParamSpec(name, shape, offset))
                offset += math.prod(shape)
        if len(shapes[-1]) != 1:
            raise ValueError(f"{self.name}: the last layer must output logits (K,), got {shapes[-1]}")
        object.__setattr__(self, "shapes", tuple(shapes))
        object.__setattr__(self, "layout", tuple(layout))
        object.__setattr__(self, "num_params", offset)
        object.__setattr__(self, "steps", _steps(self.layers))

    @property
    def num_classes(self) -> int:
        return self.shapes[-1][0]

    # -- parameters -----------------------------------------------------------------------

    def views(self, flat) -> dict:
        """Named views (no copies) of a flat parameter or gradient vector."""
        self._check_params(flat)
        return {s.name: flat[s.offset:s.offset + s.size].reshape(s.shape) for s in self.layout}

    def init(self, rng: np.random.Generator, scheme: str = "keras", dtype=np.float32):
        """Draw initial parameters from ``rng`` (NumPy), as a flat vector of ``dtype``.

        ``scheme="keras"``: weights ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out))
        (glorot_uniform, Glorot and Bengio 2010), biases 0: Keras' Conv2D/Dense defaults.
        ``scheme="torch"``: weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)):
        PyTorch's default ``kaiming_uniform_(a=sqrt(5))`` and bias init.
        ``scheme="zeros"``: every parameter 0 (Keras ``kernel_initializer='zeros'``, as in TFF's
        image-classification tutorial); ``rng`` is not drawn from.
        Draws happen layer by layer, weight then bias, in float64 (``rng.uniform``), then
        are cast to ``dtype``.
        """
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        if scheme not in ("keras", "torch", "zeros"):
            raise ValueError(f"scheme must be 'keras', 'torch' or 'zeros', got {scheme!r}")
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        flat = np.zeros(self.num_params, dtype=dtype)
        view = self.views(flat)
        for layer in self.layers:
            if scheme == "zeros" or not isinstance(layer, (Conv2D, Dense)):
                continue
            fan_in, fan_out = _fans(layer)
            w, b = view[f"{layer.name}.weight"], view[f"{layer.name}.bias"]
            if scheme == "keras":
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                w[...] = rng.uniform(-limit, limit, size=w.shape)
            else:
                bound = 1.0 / math.sqrt(fan_in)
                w[...] = rng.uniform(-bound, bound, size=w.shape)
                b[...] = rng.uniform(-bound, bound, size=b.shape)
        return flat

    # -- forward and backward -------------------------------------------------------------

    def forward(self, params, x, *, threads: ChunkThreads | None = None):
        """Logits (N, K) for inputs x (N, *input_shape) of the same dtype as ``params``.
        ``threads``: as in :meth:`loss_grad_and_logits`."""
        logits, _ = self._forward(params, x, threads=threads)
        return logits

    def loss_and_grad(self, params, x, y):
        """(mean softmax cross-entropy, flat gradient in the layout of ``params``).

        x : (N, *input_shape), same float dtype as params; y : (N,) integer labels in [0, K).
        """
        loss, grad, _ = self.loss_grad_and_logits(params, x, y)
        return loss, grad

    def loss_grad_and_logits(self, params, x, y, *, check_values: bool = True,
                             threads: ChunkThreads | None = None):
        """``loss_and_grad`` plus the logits (N, K) of the same forward pass, so a training loop
        can count correct predictions without a second forward pass.

        ``check_values=False`` skips the scans for NaN/Inf in x and for labels outside [0, K)
        (shapes and dtypes are still checked), for a loop that checked its data once; on a GPU
        each scan waits for the device. The loss is a float64 0-d array for CuPy arrays (see
        ``refsim.nn.loss.softmax_cross_entropy``).

        ``threads`` (a ``refsim.nn.chunk_threads.ChunkThreads``, made and closed by the
        caller) runs the batch chunks of every convolution side by side: the same bits as
        without it, in less time on several cores when OpenBLAS runs one thread per call
        (``OPENBLAS_NUM_THREADS=1``; ``refsim.nn.conv.map_chunks``, docs/nn.md). NumPy arrays
        only; CuPy arrays ignore it.
        """
        logits, caches = self._forward(params, x, check_values, threads)
        if check_values:
            check_labels(y, x.shape[0], self.num_classes)
        elif y.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},), got {y.shape}")
        loss, d = softmax_cross_entropy(logits, y, check=False)  # d: (N, K)
        xp = get_xp(params)
        grad = xp.empty_like(params)
        gview = self.views(grad)
        for (i, count), cache in zip(reversed(self.steps), reversed(caches)):
            layer = self.layers[i]
            need_dx = i > 0  # nobody needs the gradient with respect to the data
            if count == 3:  # Conv2D, ReLU, MaxPool2D as one block (refsim.nn.fused)
                d, dw, db = conv_relu_pool_backward(d, cache, need_dx, threads)
            elif isinstance(layer, Conv2D):
                d, dw, db = conv2d_backward(d, cache, need_dx, threads)
            elif isinstance(layer, Dense):
                d, dw, db = linear_backward(d, cache, need_dx, gview[f"{layer.name}.weight"])
            elif isinstance(layer, MaxPool2D):
                d = maxpool2d_backward(d, cache)
            elif isinstance(layer, ReLU):
                d = relu_backward(d, cache)
            else:
                d = flatten_backward(d, cache)
            if isinstance(layer, (Conv2D, Dense)):
                if dw is not gview[f"{layer.name}.weight"]:  # not already written in place
                    gview[f"{layer.name}.weight"][...] = dw
                gview[f"{layer.name}.bias"][...] = db
        return loss, grad, logits

    def _forward(self, params, x, check_values: bool = True,
                 threads: ChunkThreads | None = None):
        self._check_input(params, x, check_values)
        view = self.views(params)
        caches = []
        h = x
        for i, count in self.steps:
            layer = self.layers[i]
            if count == 3:  # Conv2D, ReLU, MaxPool2D as one block (refsim.nn.fused)
                h, cache = conv_relu_pool_forward(h, view[f"{layer.name}.weight"],
                                                  view[f"{layer.name}.bias"], layer.padding,
                                                  self.layers[i + 2].padding, threads)
            elif isinstance(layer, Conv2D):
                h, cache = conv2d_forward(h, view[f"{layer.name}.weight"],
                                          view[f"{layer.name}.bias"], layer.padding, threads)
            elif isinstance(layer, Dense):
                h, cache = linear_forward(h, view[f"{layer.name}.weight"],
                                          view[f"{layer.name}.bias"])
            elif isinstance(layer, MaxPool2D):
                h, cache = maxpool2d_forward(h, layer.padding)
            elif isinstance(layer, ReLU):
                h, cache = relu_forward(h)
            else:
                h, cache = flatten_forward(h)
            caches.append(cache)
        return h, caches

    # -- input checks ---------------------------------------------------------------------

    def _check_params(self, params) -> None:
        xp = get_xp(params)
        if not isinstance(params, xp.ndarray):
            raise TypeError(f"{self.name}: params must be an ndarray, got {type(params).__name__}")
        if params.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{self.name}: params must be float32 or float64, got {params.dtype}")
        if params.shape != (self.num_params,):
            raise ValueError(f"{self.name}: params must be a flat vector of length "
                             f"{self.num_params}, got shape {params.shape}")

    def _check_input(self, params, x, check_values: bool = True) -> None:
        self._check_params(params)
        xp = get_xp(params)
        if not isinstance(x, xp.ndarray):
            raise TypeError(f"{self.name}: x must be an ndarray like params, got {type(x).__name__}")
        if x.ndim != 1 + len(self.input_shape) or x.shape[1:] != self.input_shape or not x.shape[0]:
            raise ValueError(f"{self.name}: x must have shape (N, {', '.join(map(str, self.input_shape))})"
                             f" with N >= 1, got {x.shape}")
        if x.dtype != params.dtype:
            raise TypeError(f"{self.name}: x has dtype {x.dtype} but params are {params.dtype}; "
                            f"convert explicitly (e.g. x.astype(params.dtype))")
        if check_values and not bool(xp.isfinite(x).all()):
            raise ValueError(f"{self.name}: x contains NaN or Inf")
