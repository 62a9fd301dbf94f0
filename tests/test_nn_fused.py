"""The fused bias + ReLU + max-pool pass (refsim.nn.fused) against the unfused layers, bit for
bit."""

import numpy as np
import pytest

from refsim.nn.activation import relu_backward_naive, relu_forward_naive
from refsim.nn.conv import conv2d_backward, conv2d_forward
from refsim.nn.fused import (bias_relu_maxpool_backward, bias_relu_maxpool_backward_naive,
                             bias_relu_maxpool_forward, bias_relu_maxpool_forward_naive,
                             conv_relu_pool_backward, conv_relu_pool_forward)
from refsim.nn.pool import maxpool2d_backward_naive, maxpool2d_forward_naive

# (O, N, H, W, pool padding): odd sizes, size 2 and 3, one plane, the MNIST CNN's two blocks.
SHAPES = [(1, 1, 2, 2, "valid"), (1, 1, 3, 3, "same"), (1, 1, 3, 3, "valid"), (3, 2, 5, 7, "same"),
          (3, 2, 5, 7, "valid"), (2, 3, 8, 8, "valid"), (4, 1, 9, 4, "same"), (2, 2, 6, 5, "same"),
          (2, 2, 2, 9, "same"), (5, 3, 7, 2, "valid"), (32, 2, 28, 28, "valid"),
          (64, 3, 14, 14, "valid")]


def _bits_equal(a, b, what):
    """Equal bit patterns: NaN where NaN, and the sign of every zero."""
    assert a.shape == b.shape and a.dtype == b.dtype, what
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_fused_pass_equals_the_layers(index, dtype):
    O, N, H, W, padding = SHAPES[index]
    rng = np.random.default_rng(index)
    what = f"bias_relu_maxpool {SHAPES[index]} {np.dtype(dtype).name}"
    # Small integers: many ties inside windows (the first maximum must win), many exact
    # zeros after the bias; -0.0 and NaN planted among them.
    z = rng.integers(-3, 4, size=(O, N, H, W)).astype(dtype)
    b = rng.integers(-1, 2, size=O).astype(dtype)
    z[rng.random(z.shape) < 0.1] = -0.0
    z[rng.random(z.shape) < 0.02] = np.nan
    y, cache = bias_relu_maxpool_forward(z, b, padding)
    y_ref, cache_ref = bias_relu_maxpool_forward_naive(z, b, padding)
    _bits_equal(y, y_ref, what + " y")
    np.testing.assert_array_equal(cache.argmax, cache_ref.pool.argmax, err_msg=what + " argmax")
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy[rng.random(dy.shape) < 0.1] = -0.0
    dz = bias_relu_maxpool_backward(dy, cache)
    assert dz.flags.c_contiguous, what
    _bits_equal(dz, bias_relu_maxpool_backward_naive(dy, cache_ref), what + " dz")


@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_fused_pass_equals_the_plain_loop_oracles_on_finite_input(index):
    """Against relu_forward_naive / maxpool2d_*_naive (element loops) too, where they agree
    with numpy.maximum (finite input)."""
    O, N, H, W, padding = SHAPES[index]
    rng = np.random.default_rng(100 + index)
    z = rng.integers(-2, 3, size=(O, N, H, W)).astype(np.float64)
    b = rng.integers(-1, 2, size=O).astype(np.float64)
    y, cache = bias_relu_maxpool_forward(z, b, padding)
    r, mask = relu_forward_naive((z + b[:, None, None, None]).transpose(1, 0, 2, 3).copy())
    y_ref, pool = maxpool2d_forward_naive(r, padding)
    np.testing.assert_array_equal(y, y_ref)
    dy = rng.standard_normal(y.shape)
    dz_ref = relu_backward_naive(maxpool2d_backward_naive(dy, pool), mask).transpose(1, 0, 2, 3)
    np.testing.assert_array_equal(bias_relu_maxpool_backward(dy, cache), dz_ref)


def test_ties_go_to_the_first_maximum_and_dead_windows_pass_nothing():
    z = np.array([[[[1.0, 2.0], [2.0, 2.0]]], [[[-1.0, -2.0], [-0.0, -3.0]]]])  # (O=2, N=1, 2, 2)
    y, cache = bias_relu_maxpool_forward(z, np.zeros(2))
    np.testing.assert_array_equal(cache.argmax[0, :, 0, 0], [1, 0])  # tie at 2: (0, 1) first
    assert y[0, 1, 0, 0] == 0 and not np.signbit(y[0, 1, 0, 0])  # max(-0.0, 0) is +0.0
    dz = bias_relu_maxpool_backward(np.full((1, 2, 1, 1), 5.0), cache)
    np.testing.assert_array_equal(dz[0, 0], [[0.0, 5.0], [0.0, 0.0]])
    np.testing.assert_array_equal(dz[1, 0], np.zeros((2, 2)))  # the ReLU blocks it


@pytest.mark.parametrize("conv_padding, pool_padding, shape", [
    ("same", "valid", (3, 1, 28, 28)), ("valid", "valid", (2, 3, 11, 9)), (1, "same", (2, 2, 7, 6)),
    ("same", "same", (1, 4, 5, 5))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_block_equals_conv_relu_pool_layer_by_layer(conv_padding, pool_padding, shape, dtype):
    """conv_relu_pool_* (the model's entry points) against conv2d_forward/backward, ReLU and
    pool run one after the other: the same bits (the convolution's GEMMs are shared)."""
    from refsim.nn.activation import relu_backward, relu_forward
    from refsim.nn.pool import maxpool2d_backward, maxpool2d_forward
    rng = np.random.default_rng(7)
    N, C, H, W = shape
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((6, C, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    y, cache = conv_relu_pool_forward(x, w, b, conv_padding, pool_padding)
    h, conv = conv2d_forward(x, w, b, conv_padding)
    r, mask = relu_forward(h)
    y_ref, pool = maxpool2d_forward(r, pool_padding)
    _bits_equal(y, y_ref, "block forward")
    dy = rng.standard_normal(y.shape).astype(dtype)
    got = conv_relu_pool_backward(dy, cache)
    ref = conv2d_backward(relu_backward(maxpool2d_backward(dy, pool), mask), conv)
    for g, e, name in zip(got, ref, ("dx", "dw", "db")):
        _bits_equal(g, e, f"block backward {name}")
    assert conv_relu_pool_backward(dy, cache, need_dx=False)[0] is None


def test_fused_pass_equals_the_layers_on_random_shapes():
    """Seeded random sizes (odd and even, 1 to 11) and both pool paddings, float32, ties, -0.0,
    NaN and inf planted; every other z in Fortran order (not C-contiguous, so it is copied)."""
    rng = np.random.default_rng(17)
    for case in range(40):
        O, N = (int(v) for v in rng.integers(1, 5, size=2))
        H, W = (int(v) for v in rng.integers(1, 12, size=2))
        padding = "same" if rng.random() < 0.5 or min(H, W) < 2 else "valid"
        what = f"random case {case}: {(O, N, H, W, padding)}"
        z = rng.integers(-3, 4, size=(O, N, H, W)).astype(np.float32)
        z[rng.random(z.shape) < 0.1] = -0.0
        z[rng.random(z.shape) < 0.03] = np.nan
        z[rng.random(z.shape) < 0.03] = np.inf
        if case % 2:
            z = np.asfortranarray(z)  # the same values, another layout
        b = rng.integers(-1, 2, size=O).astype(np.float32)
        y, cache = bias_relu_maxpool_forward(z, b, padding)
        y_ref, cache_ref = bias_relu_maxpool_forward_naive(z, b, padding)
        _bits_equal(y, y_ref, what + " y")
        np.testing.assert_array_equal(cache.argmax, cache_ref.pool.argmax, err_msg=what + " argmax")
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dy[rng.random(dy.shape) < 0.1] = -0.0
        _bits_equal(bias_relu_maxpool_backward(dy, cache), bias_relu_maxpool_backward_naive(dy, cache_ref),
                    what + " dz")
