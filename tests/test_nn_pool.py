"""maxpool2d: the strided-view version against the loop oracle, ties, and finite differences."""

import numpy as np
import pytest

from checks import check_grad
from refsim.backend import to_numpy
from refsim.nn.pool import (maxpool2d_backward, maxpool2d_backward_naive,
                            maxpool2d_backward_views, maxpool2d_forward, maxpool2d_forward_naive,
                            maxpool2d_forward_views)

# (forward, backward) pairs checked against the plain-Python loop oracle: the front end
# (Numba kernel on NumPy arrays, strided views on CuPy) and the strided views on any array.
IMPLEMENTATIONS = {"front end": (maxpool2d_forward, maxpool2d_backward),
                   "views": (maxpool2d_forward_views, maxpool2d_backward_views)}

# (N, C, H, W, padding): odd sizes, size 2 and 3, batch 1, channel 1.
SHAPES = [
    (1, 1, 2, 2, "valid"), (1, 1, 3, 3, "same"), (1, 1, 3, 3, "valid"), (2, 3, 5, 7, "same"),
    (2, 3, 5, 7, "valid"), (3, 1, 8, 8, "valid"), (1, 4, 9, 4, "same"), (2, 2, 6, 5, "same"),
    (1, 2, 28, 28, "valid"), (4, 3, 2, 9, "same"), (1, 1, 1, 4, "same"),
]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_maxpool2d_matches_naive(xp, index, dtype, impl):
    forward, backward = IMPLEMENTATIONS[impl]
    N, C, H, W, padding = SHAPES[index]
    rng = np.random.default_rng(index)
    # Integers make ties common, so the first-maximum rule is exercised.
    x = rng.integers(-3, 4, size=(N, C, H, W)).astype(dtype)
    what = f"maxpool2d shape={SHAPES[index]} dtype={np.dtype(dtype).name}"
    y_ref, cache_ref = maxpool2d_forward_naive(x, padding)
    y, cache = forward(xp.asarray(x), padding)
    assert y.dtype == dtype, what
    np.testing.assert_array_equal(to_numpy(y), y_ref, err_msg=what)
    np.testing.assert_array_equal(to_numpy(cache.argmax), cache_ref.argmax, err_msg=what)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    dx = backward(xp.asarray(dy), cache)
    dx_ref = maxpool2d_backward_naive(dy, cache_ref)
    assert dx.shape == (N, C, H, W) and dx.dtype == dtype, what
    np.testing.assert_array_equal(to_numpy(dx), dx_ref, err_msg=what)


def test_ties_go_to_the_first_maximum_in_row_major_order():
    x = np.array([[[[1.0, 2.0], [2.0, 2.0]]]])  # maximum 2 at (0, 1), (1, 0), (1, 1)
    for forward, backward in IMPLEMENTATIONS.values():
        y, cache = forward(x)
        dx = backward(np.ones_like(y), cache)
        np.testing.assert_array_equal(dx[0, 0], [[0.0, 1.0], [0.0, 0.0]])


def test_same_padding_never_selects_the_padding():
    x = -np.ones((1, 1, 3, 3)) * np.arange(1, 10).reshape(1, 1, 3, 3)  # all negative
    for forward, _ in IMPLEMENTATIONS.values():
        y, _ = forward(x, "same")
        np.testing.assert_array_equal(y[0, 0], [[-1.0, -3.0], [-7.0, -9.0]])


@pytest.mark.parametrize("index", [3, 4, 7])
def test_maxpool2d_gradient_matches_central_differences(index):
    N, C, H, W, padding = SHAPES[index]
    rng = np.random.default_rng(index)
    x = rng.permutation(N * C * H * W).reshape(N, C, H, W) / 10.0  # distinct: no ties
    y, cache = maxpool2d_forward(x, padding)
    r = rng.standard_normal(y.shape)
    dx = maxpool2d_backward(r, cache)
    check_grad(lambda: float(np.sum(r * maxpool2d_forward(x, padding)[0])), x, dx,
               f"maxpool2d {SHAPES[index]} d/dx", rng, eps=1e-4)


@pytest.mark.parametrize("forward", [maxpool2d_forward, maxpool2d_forward_views,
                                     maxpool2d_forward_naive])
def test_maxpool2d_rejects_bad_arguments(forward):
    with pytest.raises(ValueError, match="padding must be"):
        forward(np.zeros((1, 1, 4, 4)), "full")
    with pytest.raises(ValueError, match="size >= 2"):
        forward(np.zeros((1, 1, 1, 4)), "valid")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        forward(np.zeros((4, 4)))
