"""Dense, ReLU, flatten and softmax cross-entropy against their loop oracles and finite differences."""

import numpy as np
import pytest

from checks import assert_close, check_grad
from refsim.backend import to_numpy
from refsim.nn.activation import relu_backward, relu_backward_naive, relu_forward, relu_forward_naive
from refsim.nn.dense import linear_backward, linear_backward_naive, linear_forward, linear_forward_naive
from refsim.nn.flatten import flatten_backward, flatten_forward, flatten_forward_naive
from refsim.nn.loss import softmax_cross_entropy, softmax_cross_entropy_naive

# (N, I, O) for dense; the same tuples give (N, K) = (N, O) logits for the loss.
DENSE_SHAPES = [(1, 1, 1), (1, 5, 3), (3, 1, 4), (2, 7, 1), (5, 4, 6), (4, 13, 10), (1, 30, 2),
                (7, 3, 3), (2, 2, 9), (6, 11, 5)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", DENSE_SHAPES)
def test_linear_matches_naive(xp, shape, dtype):
    N, I, O = shape
    rng = np.random.default_rng(sum(shape))
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in ((N, I), (I, O), (O,)))
    dy = rng.standard_normal((N, O)).astype(dtype)
    y_ref, cache_ref = linear_forward_naive(x, w, b)
    y, cache = linear_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b))
    assert_close(to_numpy(y), y_ref, f"linear {shape}: y")
    for name, g, g_ref in zip(("dx", "dw", "db"), linear_backward(xp.asarray(dy), cache),
                              linear_backward_naive(dy, cache_ref)):
        assert g.dtype == dtype
        assert_close(to_numpy(g), g_ref, f"linear {shape}: {name}")


@pytest.mark.parametrize("shape", DENSE_SHAPES[1:6])
def test_linear_gradients_match_central_differences(shape):
    N, I, O = shape
    rng = np.random.default_rng(sum(shape))
    x, w, b = (rng.standard_normal(s) for s in ((N, I), (I, O), (O,)))
    r = rng.standard_normal((N, O))
    dx, dw, db = linear_backward(r, linear_forward(x, w, b)[1])
    loss = lambda: float(np.sum(r * linear_forward(x, w, b)[0]))  # noqa: E731
    for name, arr, grad in (("x", x, dx), ("w", w, dw), ("b", b, db)):
        check_grad(loss, arr, grad, f"linear {shape} d/d{name}", rng)


@pytest.mark.parametrize("shape", [(1,), (3, 4), (2, 3, 5, 5), (1, 1, 1, 1), (4, 7, 2, 3), (10,),
                                   (2, 2), (5, 1, 3), (3, 3, 3), (1, 2, 3, 4, 5)])
def test_relu_matches_naive(xp, shape):
    rng = np.random.default_rng(len(shape))
    x = rng.integers(-2, 3, size=shape).astype(np.float32)  # exact zeros: derivative 0 there
    dy = rng.standard_normal(shape).astype(np.float32)
    y_ref, mask_ref = relu_forward_naive(x)
    y, mask = relu_forward(xp.asarray(x))
    np.testing.assert_array_equal(to_numpy(y), y_ref)
    np.testing.assert_array_equal(to_numpy(relu_backward(xp.asarray(dy), mask)),
                                  relu_backward_naive(dy, mask_ref))


def test_relu_gradient_matches_central_differences():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7))
    x[np.abs(x) < 1e-3] = 0.5  # stay away from the kink
    r = rng.standard_normal(x.shape)
    check_grad(lambda: float(np.sum(r * relu_forward(x)[0])), x, relu_backward(r, relu_forward(x)[1]),
               "relu d/dx", rng)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 4, 5), (3, 1, 7, 2), (1, 64, 7, 7)])
def test_flatten_is_c_order_and_invertible(shape):
    x = np.random.default_rng(0).standard_normal(shape)
    y, x_shape = flatten_forward(x)
    np.testing.assert_array_equal(y, flatten_forward_naive(x)[0])
    np.testing.assert_array_equal(flatten_backward(y, x_shape), x)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", DENSE_SHAPES)
def test_softmax_cross_entropy_matches_naive(xp, shape, dtype):
    N, _, K = shape
    rng = np.random.default_rng(sum(shape))
    z = (5 * rng.standard_normal((N, K))).astype(dtype)
    y = rng.integers(0, K, size=N)
    loss_ref, dz_ref = softmax_cross_entropy_naive(z, y)
    loss, dz = softmax_cross_entropy(xp.asarray(z), xp.asarray(y))
    assert_close(float(loss), loss_ref, f"loss {shape}", dtype)  # a 0-d array on CuPy
    assert dz.dtype == dtype
    assert_close(to_numpy(dz), dz_ref, f"dloss/dz {shape}", dtype)


def test_softmax_cross_entropy_is_stable_and_matches_central_differences():
    z = np.array([[1000.0, -1000.0, 0.0], [-5e3, -5e3 + 1, -5e3 - 2]])
    y = np.array([1, 0])
    loss, dz = softmax_cross_entropy(z, y)
    assert np.isfinite(loss) and np.isfinite(dz).all()
    assert_close(loss, softmax_cross_entropy_naive(z, y)[0], "extreme logits")
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4, 6))
    y = rng.integers(0, 6, 4)
    check_grad(lambda: softmax_cross_entropy(z, y)[0], z, softmax_cross_entropy(z, y)[1],
               "softmax_cross_entropy d/dz", rng)


@pytest.mark.parametrize("labels, error, message", [
    (np.array([0, 3]), ValueError, r"in \[0, 3\)"),
    (np.array([-1, 0]), ValueError, r"in \[0, 3\)"),
    (np.array([0.0, 1.0]), TypeError, "integer"),
    (np.array([0, 1, 2]), ValueError, r"shape \(2,\)"),
])
def test_softmax_cross_entropy_rejects_bad_labels(labels, error, message):
    with pytest.raises(error, match=message):
        softmax_cross_entropy(np.zeros((2, 3)), labels)


def test_linear_rejects_bad_shapes():
    with pytest.raises(ValueError, match="w must have shape"):
        linear_forward(np.zeros((2, 3)), np.zeros((4, 5)), np.zeros(5))
    with pytest.raises(ValueError, match="b must have shape"):
        linear_forward(np.zeros((2, 3)), np.zeros((3, 5)), np.zeros(4))
