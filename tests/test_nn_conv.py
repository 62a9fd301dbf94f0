"""conv2d: the im2col version against the loop oracle, and both against finite differences."""

import numpy as np
import pytest

from checks import assert_close, check_grad
from refsim.backend import to_numpy
from refsim.nn.conv import (conv2d_backward, conv2d_backward_naive, conv2d_forward,
                            conv2d_forward_naive, conv_output_size, conv_padding)

# (N, C, O, H, W, K, padding): odd sizes, size 1, batch 1, channel 1, even kernels.
SHAPES = [
    (1, 1, 1, 1, 1, 1, "valid"),
    (1, 1, 1, 5, 5, 5, "same"),
    (2, 3, 4, 7, 5, 3, "same"),
    (3, 2, 5, 6, 6, 4, "same"),
    (1, 1, 2, 9, 7, 5, "valid"),
    (2, 4, 1, 5, 8, 2, "valid"),
    (2, 2, 3, 4, 4, 3, 1),
    (1, 3, 2, 1, 6, 3, 1),
    (4, 1, 3, 8, 3, 3, 0),
    (2, 2, 2, 3, 3, 5, 2),
    (1, 5, 3, 10, 9, 5, "same"),
    (3, 1, 1, 2, 2, 2, "same"),
]


def _args(shape, dtype, seed):
    N, C, O, H, W, K, padding = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C, K, K)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    return x, w, b, padding


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("index", range(len(SHAPES)))
def test_conv2d_matches_naive(xp, index, dtype):
    x, w, b, padding = _args(SHAPES[index], dtype, seed=index)
    what = f"conv2d shape={SHAPES[index]} dtype={np.dtype(dtype).name}"
    y_ref, cache_ref = conv2d_forward_naive(x, w, b, padding)
    y, cache = conv2d_forward(xp.asarray(x), xp.asarray(w), xp.asarray(b), padding)
    assert y.shape == y_ref.shape and y.dtype == dtype, what
    assert_close(to_numpy(y), y_ref, f"{what}: y")
    dy = np.random.default_rng(100 + index).standard_normal(y_ref.shape).astype(dtype)
    grads_ref = conv2d_backward_naive(dy, cache_ref)
    grads = conv2d_backward(xp.asarray(dy), cache)
    for name, g, g_ref in zip(("dx", "dw", "db"), grads, grads_ref):
        assert g.shape == g_ref.shape and g.dtype == dtype, f"{what}: {name}"
        assert_close(to_numpy(g), g_ref, f"{what}: {name}")


def test_conv2d_backward_can_skip_dx():
    x, w, b, padding = _args(SHAPES[2], np.float64, seed=0)
    y, cache = conv2d_forward(x, w, b, padding)
    dx, dw, db = conv2d_backward(np.ones_like(y), cache, need_dx=False)
    _, dw_full, db_full = conv2d_backward(np.ones_like(y), cache)
    assert dx is None
    np.testing.assert_array_equal(dw, dw_full)
    np.testing.assert_array_equal(db, db_full)


@pytest.mark.parametrize("index", [1, 2, 3, 6, 10])
def test_conv2d_gradients_match_central_differences(index):
    x, w, b, padding = _args(SHAPES[index], np.float64, seed=index)
    rng = np.random.default_rng(1000 + index)
    y, cache = conv2d_forward(x, w, b, padding)
    r = rng.standard_normal(y.shape)  # L = sum(r * y), so dL/dy = r
    dx, dw, db = conv2d_backward(r, cache)

    def loss():
        return float(np.sum(r * conv2d_forward(x, w, b, padding)[0]))

    for name, arr, grad in (("x", x, dx), ("w", w, dw), ("b", b, db)):
        check_grad(loss, arr, grad, f"conv2d {SHAPES[index]} d/d{name}", rng)


def test_same_padding_follows_keras_for_even_kernels():
    assert conv_padding(4, "same") == (1, 2)  # TensorFlow puts the extra row after
    assert conv_output_size(7, 4, "same") == 7
    assert conv_output_size(7, 4, "valid") == 4


@pytest.mark.parametrize("bad, message", [
    (dict(x=np.zeros((2, 3, 5))), "x must have shape"),
    (dict(w=np.zeros((4, 2, 3, 3))), "channels"),
    (dict(b=np.zeros(3)), "b must have shape"),
    (dict(padding="full"), "padding must be"),
    (dict(padding=-1), "padding must be"),
    (dict(w=np.zeros((4, 3, 9, 9)), padding="valid"), "does not fit"),
])
def test_conv2d_rejects_bad_arguments(bad, message):
    args = dict(x=np.zeros((2, 3, 5, 5)), w=np.zeros((4, 3, 3, 3)), b=np.zeros(4), padding="same")
    args.update(bad)
    for forward in (conv2d_forward, conv2d_forward_naive):
        with pytest.raises(ValueError, match=message):
            forward(args["x"], args["w"], args["b"], args["padding"])


@pytest.mark.parametrize("chunk_bytes", [1, 500, 10**9])
def test_conv2d_is_the_same_in_any_number_of_batch_chunks(monkeypatch, chunk_bytes):
    """CHUNK_BYTES = 1 gives one example per im2col block; 10**9 one block for the batch."""
    import refsim.nn.conv as conv

    monkeypatch.setattr(conv, "CHUNK_BYTES", chunk_bytes)
    x, w, b, padding = _args((5, 2, 3, 6, 7, 3, "same"), np.float64, seed=3)
    y_ref, cache_ref = conv2d_forward_naive(x, w, b, padding)
    y, cache = conv2d_forward(x, w, b, padding)
    assert_close(y, y_ref, f"chunks of {chunk_bytes} bytes: y")
    dy = np.random.default_rng(4).standard_normal(y.shape)
    for name, g, g_ref in zip(("dx", "dw", "db"), conv2d_backward(dy, cache),
                              conv2d_backward_naive(dy, cache_ref)):
        assert_close(g, g_ref, f"chunks of {chunk_bytes} bytes: {name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("chunk_bytes", [1, 2000, 10**9])
def test_kept_and_rebuilt_im2col_blocks_give_the_same_bits(monkeypatch, chunk_bytes, dtype):
    """The backward pass either reuses the forward's im2col blocks (KEEP_COLS_BYTES large) or
    rebuilds them from x (KEEP_COLS_BYTES = 0): the same blocks, so the same bits."""
    import refsim.nn.conv as conv

    monkeypatch.setattr(conv, "CHUNK_BYTES", chunk_bytes)
    x, w, b, padding = _args((5, 3, 4, 9, 9, 5, "same"), dtype, seed=5)
    dy = np.random.default_rng(6).standard_normal((5, 4, 9, 9)).astype(dtype)
    results = {}
    for keep in (0, 10**9):
        monkeypatch.setattr(conv, "KEEP_COLS_BYTES", keep)
        y, cache = conv2d_forward(x, w, b, padding)
        assert (cache.cols is not None) == (keep > 0)
        results[keep] = (y, *conv2d_backward(dy, cache))
    for name, kept, rebuilt in zip(("y", "dx", "dw", "db"), results[10**9], results[0]):
        np.testing.assert_array_equal(kept, rebuilt, err_msg=f"{name}, chunks of {chunk_bytes} bytes")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, chunk_bytes", [((50, 32, 64, 14, 14, 5, "same"), 4 * 2**20),
                                                ((7, 3, 5, 9, 8, 3, "valid"), 700),
                                                ((3, 1, 32, 28, 28, 5, "same"), 10**9)])
def test_the_forward_gemm_written_in_place_is_the_product_of_each_chunk(monkeypatch, shape,
                                                                        chunk_bytes, dtype):
    """conv2d_gemm_forward writes each chunk's w_mat @ cols into z's columns; the bits are
    those of the product computed on its own (what the docs claim for the in-place write)."""
    import refsim.nn.conv as conv
    from refsim.nn.im2col import im2col_slices

    monkeypatch.setattr(conv, "CHUNK_BYTES", chunk_bytes)
    x, w, _, padding = _args(shape, dtype, seed=7)
    N, C, O, H, W, K, _ = shape
    before = conv_padding(K, padding)[0]
    Ho, Wo = conv_output_size(H, K, padding), conv_output_size(W, K, padding)
    z, _ = conv.conv2d_gemm_forward(x, w, padding)
    step = conv._chunk_size(x, C, K, Ho, Wo)
    for n0 in range(0, N, step):
        n1 = min(N, n0 + step)
        cols = im2col_slices(x[n0:n1], K, before, Ho, Wo).reshape(C * K * K, -1)
        expected = (w.reshape(O, -1) @ cols).reshape(O, n1 - n0, Ho, Wo)
        np.testing.assert_array_equal(z[:, n0:n1], expected, err_msg=f"chunk {n0}:{n1}")
