"""The Numba im2col/col2im kernels against their xp-generic slice oracles, bit for bit."""

import numpy as np
import pytest

from refsim.backend import to_numpy
from refsim.nn.conv import conv_output_size, conv_padding
from refsim.nn.im2col import col2im_numba, col2im_slices, im2col_numba, im2col_slices

# (N, C, H, W, K, padding): odd sizes, size 1, batch 1, channel 1, even kernels, big pads.
CASES = [(1, 1, 1, 1, 1, "valid"), (1, 1, 5, 5, 5, "same"), (2, 3, 7, 5, 3, "same"),
         (3, 2, 6, 6, 4, "same"), (1, 1, 9, 7, 5, "valid"), (2, 4, 5, 8, 2, "valid"),
         (2, 2, 4, 4, 3, 1), (1, 3, 1, 6, 3, 1), (4, 1, 8, 3, 3, 0), (2, 2, 3, 3, 5, 3),
         (5, 32, 14, 14, 5, "same"), (3, 3, 32, 32, 5, "valid")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES)
def test_numba_kernels_equal_the_slice_oracles(case, dtype):
    N, C, H, W, K, padding = case
    before = conv_padding(K, padding)[0]
    Ho, Wo = conv_output_size(H, K, padding), conv_output_size(W, K, padding)
    rng = np.random.default_rng(C * 100 + H)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    cols = im2col_numba(x, K, before, Ho, Wo)
    assert cols.shape == (C, K, K, N, Ho, Wo) and cols.dtype == dtype
    np.testing.assert_array_equal(cols, im2col_slices(x, K, before, Ho, Wo), err_msg=f"im2col {case}")
    np.testing.assert_array_equal(im2col_numba(x.transpose(0, 1, 3, 2).copy().transpose(0, 1, 3, 2),
                                               K, before, Ho, Wo), cols, err_msg=f"strided x {case}")
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    dx = col2im_numba(dcols, x.shape, before)
    assert dx.shape == x.shape and dx.dtype == dtype
    np.testing.assert_array_equal(dx, col2im_slices(dcols, x.shape, before), err_msg=f"col2im {case}")


def test_col2im_is_the_adjoint_of_im2col():
    """<im2col(x), c> == <x, col2im(c)> for all x, c: the defining property of the adjoint."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 7))
    cols = im2col_numba(x, 3, 1, 6, 7)
    c = rng.standard_normal(cols.shape)
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * col2im_numba(c, x.shape, 1)), rtol=1e-12)


def test_slice_versions_run_on_the_array_module_given(xp):
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    cols = im2col_slices(xp.asarray(x), 3, 1, 5, 5)
    np.testing.assert_array_equal(to_numpy(cols), im2col_numba(x, 3, 1, 5, 5))
    np.testing.assert_array_equal(to_numpy(col2im_slices(cols, x.shape, 1)),
                                  col2im_numba(to_numpy(cols), x.shape, 1))


def test_numba_kernels_equal_the_slice_oracles_on_random_shapes():
    """Seeded random shapes and paddings, pads up to K - 1 and inputs smaller than the kernel
    included, so each tap's in-bounds run is sometimes the whole row, part of it or empty."""
    rng = np.random.default_rng(16)
    for _ in range(60):
        N, C = (int(v) for v in rng.integers(1, 4, size=2))
        H, W = (int(v) for v in rng.integers(1, 12, size=2))
        K = int(rng.integers(1, 7))
        padding = ["valid", "same", int(rng.integers(0, K))][int(rng.integers(3))]
        if min(H, W) + sum(conv_padding(K, padding)) < K:
            padding = K - 1  # the kernel must fit the padded input; a pad of K - 1 always does
        before = conv_padding(K, padding)[0]
        Ho, Wo = conv_output_size(H, K, padding), conv_output_size(W, K, padding)
        case = (N, C, H, W, K, padding)
        x = rng.standard_normal((N, C, H, W)).astype(np.float32)
        cols = im2col_numba(x, K, before, Ho, Wo)
        np.testing.assert_array_equal(cols, im2col_slices(x, K, before, Ho, Wo), err_msg=f"im2col {case}")
        dcols = rng.standard_normal(cols.shape).astype(np.float32)
        np.testing.assert_array_equal(col2im_numba(dcols, x.shape, before),
                                      col2im_slices(dcols, x.shape, before), err_msg=f"col2im {case}")
