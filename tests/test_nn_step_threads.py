"""The convolution's batch chunks on lanes of threads (``threads=ChunkThreads(L)``): the serial
bits, for any number of lanes; and ChunkThreads itself.

The serial chunk loop is the oracle (itself pinned to the loop-level convolution in
tests/test_nn_conv.py); on lanes the same chunks run side by side and must give
the same bits: forward output, kept im2col blocks, dx, dw, db, and a whole training step.
"""

import threading

import numpy as np
import pytest

import refsim.nn.chunk_threads as chunk_threads
import refsim.nn.conv as conv
from refsim.nn import (ChunkThreads, Conv2D, Dense, Flatten, MaxPool2D, Model, ReLU, cnn_mnist,
                       sgd_step)
from refsim.nn.conv import conv2d_backward, conv2d_forward, map_chunks
from refsim.nn.fused import conv_relu_pool_backward, conv_relu_pool_forward

THREADS = (1, 2, 3)


@pytest.fixture(scope="module")
def pools():
    made = {t: ChunkThreads(t) for t in THREADS}
    yield made
    for lanes in made.values():
        lanes.close()


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few examples, so that small batches have many (and a ragged last one)."""
    def use(chunk_bytes: int, keep_bytes: int = conv.KEEP_COLS_BYTES) -> None:
        monkeypatch.setattr(conv, "CHUNK_BYTES", chunk_bytes)
        monkeypatch.setattr(conv, "KEEP_COLS_BYTES", keep_bytes)
    return use


def test_chunk_k_runs_on_lane_k_mod_L_and_results_come_in_order(pools):
    me = threading.current_thread().name
    for lanes in THREADS:
        ran_on = {}

        def work(k):
            ran_on[k] = threading.current_thread().name
            return k * k
        assert pools[lanes].map(work, 7) == [k * k for k in range(7)]
        assert ran_on == {k: me if k % lanes == 0 else f"refsim-chunks-{k % lanes}"
                          for k in range(7)}, lanes
        assert pools[lanes].map(work, 0) == []
        assert pools[lanes].map(work, 1) == [0]


def test_map_chunks_serial_runs_each_chunk_when_asked(pools):
    started = []
    chunks = map_chunks(lambda k: started.append(k) or k, 3, None)
    assert started == []
    assert next(iter(chunks)) == 0 and started == [0]
    assert map_chunks(lambda k: -k, 3, pools[2]) == [0, -1, -2]


def test_the_first_failing_chunk_is_raised_after_every_lane_finished(pools):
    finished = []

    def work(k):
        if k in (4, 2):
            raise ValueError(f"chunk {k} is bad")
        threading.Event().wait(0.005)
        finished.append(k)
        return k
    with pytest.raises(ValueError, match="chunk 2 is bad"):
        pools[3].map(work, 9)
    # lane 2 (chunks 2, 5, 8) stopped at chunk 2, lane 1 (1, 4, 7) at chunk 4; lane 0 ran on
    assert sorted(finished) == [0, 1, 3, 6]
    assert pools[3].map(lambda k: k, 4) == [0, 1, 2, 3]  # the lanes still serve


def test_several_callers_share_the_lanes(pools):
    got = {}

    def caller(c):
        got[c] = [pools[2].map(lambda k: (c, k), 5) for _ in range(20)]
    callers = [threading.Thread(target=caller, args=(c,)) for c in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(timeout=60)
    assert got == {c: [[(c, k) for k in range(5)]] * 20 for c in range(3)}


def test_lanes_are_checked_closed_and_not_inherited(monkeypatch):
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="lanes must be an int >= 1"):
            ChunkThreads(bad)
    with ChunkThreads(2) as lanes:
        assert lanes.map(lambda k: k, 3) == [0, 1, 2] and repr(lanes) == "ChunkThreads(2)"
        workers = list(lanes._workers)
    assert not any(w.is_alive() for w in workers) and repr(lanes) == "ChunkThreads(2, closed)"
    with pytest.raises(RuntimeError, match="map after close"):
        lanes.map(lambda k: k, 3)
    lanes.close()  # a second close does nothing
    other = ChunkThreads(2)
    try:
        real = chunk_threads.os.getpid()
        monkeypatch.setattr(chunk_threads.os, "getpid", lambda: real + 1)  # as in a forked child
        with pytest.raises(RuntimeError, match="forked child"):
            other.map(lambda k: k, 3)
    finally:
        monkeypatch.undo()
        other.close()


# (N, C, O, H, W, K, padding, chunk bytes): 1 to 9 chunks, ragged last chunks, 1x1 outputs.
CASES = [
    (7, 3, 4, 9, 8, 3, "same", 3 * 9 * 72 * 8 * 2),
    (5, 2, 3, 6, 6, 5, "valid", 1),
    (9, 4, 2, 7, 7, 4, "same", 4 * 16 * 49 * 8 * 4),
    (1, 3, 2, 5, 5, 3, 1, 1),
    (6, 1, 5, 4, 9, 2, 0, 1),
    (4, 2, 2, 5, 5, 5, "valid", 1),
    (8, 5, 3, 3, 3, 3, "same", 5 * 9 * 9 * 8 * 3),
    (3, 2, 6, 10, 4, 3, 2, 1),
    (11, 1, 1, 2, 2, 1, "valid", 4 * 4 * 8),
    (2, 6, 4, 8, 8, 5, "same", 10**9),
]


@pytest.mark.parametrize("keep", [True, False], ids=["kept-blocks", "rebuilt-blocks"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index", range(len(CASES)))
def test_conv2d_on_threads_gives_the_serial_bits(pools, small_chunks, index, dtype, keep):
    N, C, O, H, W, K, padding, chunk_bytes = CASES[index]
    small_chunks(chunk_bytes, conv.KEEP_COLS_BYTES if keep else 0)
    rng = np.random.default_rng(index)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((O, C, K, K)).astype(dtype)
    b = rng.standard_normal(O).astype(dtype)
    y_ref, cache_ref = conv2d_forward(x, w, b, padding)
    dy = rng.standard_normal(y_ref.shape).astype(dtype)
    grads_ref = conv2d_backward(dy, cache_ref)
    for threads, pool in pools.items():
        what = f"case {CASES[index]} {np.dtype(dtype).name} keep={keep} threads={threads}"
        y, cache = conv2d_forward(x, w, b, padding, pool)
        np.testing.assert_array_equal(y, y_ref, err_msg=f"{what}: y")
        assert (cache.cols is None) == (cache_ref.cols is None), what
        for got, want in zip(cache.cols or (), cache_ref.cols or ()):
            np.testing.assert_array_equal(got, want, err_msg=f"{what}: kept im2col block")
        for name, got, want in zip(("dx", "dw", "db"), conv2d_backward(dy, cache, True, pool),
                                   grads_ref):
            assert got.dtype == want.dtype, f"{what}: {name}"
            np.testing.assert_array_equal(got, want, err_msg=f"{what}: {name}")
        dx, dw, _ = conv2d_backward(dy, cache, False, pool)
        assert dx is None
        np.testing.assert_array_equal(dw, grads_ref[1], err_msg=f"{what}: dw without dx")


def test_fused_block_on_threads_gives_the_serial_bits(pools, small_chunks):
    small_chunks(2 * 25 * 64 * 4)  # 2 examples a chunk: 5 chunks of a 9-image batch
    rng = np.random.default_rng(7)
    x = rng.standard_normal((9, 2, 8, 8)).astype(np.float32)
    w = rng.standard_normal((3, 2, 5, 5)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    y_ref, cache_ref = conv_relu_pool_forward(x, w, b, "same", "valid")
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    grads_ref = conv_relu_pool_backward(dy, cache_ref)
    y, cache = conv_relu_pool_forward(x, w, b, "same", "valid", pools[2])
    np.testing.assert_array_equal(y, y_ref)
    for got, want in zip(conv_relu_pool_backward(dy, cache, True, pools[2]), grads_ref):
        np.testing.assert_array_equal(got, want)


def _small_cnn() -> Model:
    """A convolution without a ReLU and pool after it (the unfused path) beside the fused
    block, so that both reach the lanes."""
    return Model("threads_cnn", (2, 10, 10), (
        Conv2D("conv1", 2, 4, 3, "same"), ReLU(), MaxPool2D("valid"),  # (4, 5, 5)
        Conv2D("conv2", 4, 3, 3, "valid"),  # (3, 3, 3)
        Flatten(), Dense("fc", 27, 5)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_steps_on_threads_give_the_serial_bits(pools, small_chunks, dtype):
    """Five SGD steps, the loop of ``client_update``: weights, losses and logits equal."""
    for model, chunk_bytes, batch in ((cnn_mnist(), 2 * 32 * 25 * 196 * 4, 5),
                                      (_small_cnn(), 1, 7)):
        small_chunks(chunk_bytes)
        rng = np.random.default_rng(3)
        x = rng.standard_normal((5 * batch,) + model.input_shape).astype(dtype)
        y = rng.integers(0, model.num_classes, 5 * batch)
        w0 = model.init(np.random.default_rng(0), "torch", dtype)
        runs = {}
        for threads in (None,) + THREADS:
            w, seen = w0.copy(), []
            for s in range(5):
                rows = slice(s * batch, (s + 1) * batch)
                loss, grad, logits = model.loss_grad_and_logits(
                    w, x[rows], y[rows], threads=None if threads is None else pools[threads])
                sgd_step(w, grad, 0.05, out=w)
                seen += [np.asarray(loss).tobytes(), logits.tobytes()]
            runs[threads] = (w.tobytes(), seen,
                             model.forward(w, x[:batch], threads=pools[2]).tobytes())
        assert all(run == runs[None] for run in runs.values()), model.name
