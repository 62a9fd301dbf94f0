"""sgd_step (one compiled pass) against sgd_step_naive (the NumPy expression), bit for bit."""

import numpy as np
import pytest

from refsim.backend import to_numpy
from refsim.nn.sgd import sgd_step, sgd_step_naive


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 7, 100, 1_663_370])
def test_sgd_step_equals_the_expression(n, dtype):
    rng = np.random.default_rng(n)
    p = rng.standard_normal(n).astype(dtype)
    g = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n)).astype(dtype)
    g[::3] = -0.0
    for lr in (0.05, 0.1, 1e-3, 0.0):
        expected = sgd_step_naive(p, g, lr)
        got = sgd_step(p, g, lr)
        np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8),
                                      err_msg=f"lr={lr}")
        w = p.copy()
        assert sgd_step(w, g, lr, out=w) is w
        np.testing.assert_array_equal(w.view(np.uint8), expected.view(np.uint8),
                                      err_msg=f"in place lr={lr}")


def test_sgd_step_on_other_array_modules(xp):
    p = np.linspace(-1, 1, 11, dtype=np.float32)
    g = np.linspace(3, -2, 11, dtype=np.float32)
    got = sgd_step(xp.asarray(p), xp.asarray(g), 0.1)
    np.testing.assert_array_equal(to_numpy(got), sgd_step_naive(p, g, 0.1))
    w = xp.asarray(p.copy())
    assert sgd_step(w, xp.asarray(g), 0.1, out=w) is w
    np.testing.assert_array_equal(to_numpy(w), sgd_step_naive(p, g, 0.1))


def test_sgd_step_rejects_mismatches():
    with pytest.raises(ValueError, match="differ"):
        sgd_step(np.zeros(3, np.float32), np.zeros(3, np.float64), 0.1)
    with pytest.raises(ValueError, match="out must be"):
        sgd_step(np.zeros(3), np.zeros(3), 0.1, out=np.zeros(4))
