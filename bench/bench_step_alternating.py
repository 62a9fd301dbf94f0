"""One training step of the MNIST CNN, refsim beside PyTorch 2.13 (CPU), timed in alternation.

McMahan et al., AISTATS 2017 (arXiv:1602.05629), Sec. 3 CNN, float32, plain SGD (lr 0.05) on
consecutive real MNIST minibatches of B examples, as ClientUpdate runs them: refsim's step is
``Model.loss_grad_and_logits(..., check_values=False)`` then ``sgd_step(..., out=w)`` (the loop
of ``refsim.fedavg.client.client_update``); PyTorch's is ``zero_grad``, ``cross_entropy``,
``backward``, ``SGD.step``. Each repetition times ``steps`` refsim steps, then ``steps``
PyTorch steps, in the same process (so both see the same machine load), and reports the ratio
of the medians; the result is the median over repetitions. Threads: torch.set_num_threads(T)
with OMP/OpenBLAS/MKL limited to T by the environment (set them before Python starts, as the
command below does).

With a fifth argument L > 0 refsim's step also runs with ``threads=ChunkThreads(L)`` (the
convolutions' batch chunks on L lanes, the caller and L - 1 threads, ``refsim.nn.chunk_threads``): each repetition
then times refsim without it, refsim with it and PyTorch, in turn, checks that both refsim
runs end on the same weights, bit for bit, and reports both ratios. Give the chunk threads
the cores and OpenBLAS one thread (PyTorch keeps T through torch.set_num_threads):

    for B in 10 50; do OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=2 \
      NUMBA_NUM_THREADS=1 PYTHONPATH=. python bench/bench_step_alternating.py $B 2 5 30 2; done

Before timing, refsim's first step is checked against PyTorch's on the same weights and batch
(float32, rtol 1e-4), so a fast wrong answer is never timed.

    T=2; for B in 10 50; do OMP_NUM_THREADS=$T OPENBLAS_NUM_THREADS=$T MKL_NUM_THREADS=$T \\
      NUMBA_NUM_THREADS=$T PYTHONPATH=. python bench/bench_step_alternating.py $B $T 5 30; done

Under pytest (CI: ``pytest bench/``) the test runs the oracle check and two tiny repetitions,
in a few seconds, and asserts nothing about time.
"""

import inspect
import sys
import time
from collections import OrderedDict

import numpy as np

from refsim.data import load_mnist
from refsim.fedavg import DType, from_images
from refsim.blas import describe_blas
from refsim.nn import ChunkThreads, cnn_mnist, from_torch_state_dict, sgd_step, to_torch_state_dict

LR = 0.05
IN_PLACE = "out" in inspect.signature(sgd_step).parameters


def _setup(batch: int, steps: int):
    import torch
    from torch_fedavg import torch_net
    data = from_images(load_mnist(), DType.FLOAT32.np, train_limit=batch * steps, test_limit=10)
    model = cnn_mnist()
    params = model.init(np.random.default_rng(0), "torch", np.float32)
    net = torch_net("cnn_mnist")
    net.load_state_dict(OrderedDict((k, torch.from_numpy(v.copy()))
                                    for k, v in to_torch_state_dict(model, params).items()))
    return model, params, data.x_train, data.y_train, net


def check_first_step(model, params, x, y, net) -> None:
    """The oracle check: refsim's SGD step equals PyTorch's on the same weights and batch."""
    import torch
    import torch.nn.functional as F
    state = OrderedDict((k, v.clone()) for k, v in net.state_dict().items())
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    opt.zero_grad()
    F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    opt.step()
    expected = from_torch_state_dict(model, net.state_dict())
    net.load_state_dict(state)
    got = sgd_step(params, model.loss_and_grad(params, x, y)[1], LR)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6,
                               err_msg="refsim's CNN step differs from PyTorch's")


def _time_refsim(model, w, x, y, batch, steps, lanes=None):
    times = []
    for s in range(steps):
        xb, yb = x[s * batch:(s + 1) * batch], y[s * batch:(s + 1) * batch]
        t = time.perf_counter()
        if lanes is None:  # also a refsim from before threads= (for before/after runs)
            _, grad, _ = model.loss_grad_and_logits(w, xb, yb, check_values=False)
        else:
            _, grad, _ = model.loss_grad_and_logits(w, xb, yb, check_values=False,
                                                    threads=lanes)
        if IN_PLACE:
            sgd_step(w, grad, LR, out=w)
        else:  # a refsim from before sgd_step(..., out=) (for before/after runs)
            w[...] = sgd_step(w, grad, LR)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _time_torch(net, opt, xt, yt, batch, steps):
    import torch.nn.functional as F
    times = []
    for s in range(steps):
        xb, yb = xt[s * batch:(s + 1) * batch], yt[s * batch:(s + 1) * batch]
        t = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(net(xb), yb).backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def measure(batch: int, threads: int, reps: int, steps: int):
    """[(refsim median s, torch median s, ratio)] for each repetition, alternating."""
    return [(row["refsim"], row["torch"], row["refsim"] / row["torch"])
            for row in measure_with_chunk_threads(batch, threads, reps, steps, 0)]


def measure_with_chunk_threads(batch: int, threads: int, reps: int, steps: int,
                               chunk_threads: int):
    """[{"refsim": s, "torch": s, and with chunk_threads > 0 "chunks": s}] medians for each
    repetition, alternating; "chunks" is refsim with ChunkThreads(chunk_threads), and
    its weights after each repetition equal refsim's without it, bit for bit."""
    import torch
    torch.set_num_threads(threads)
    model, params, x, y, net = _setup(batch, steps)
    check_first_step(model, params, x[:batch], y[:batch], net)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    pool = ChunkThreads(chunk_threads) if chunk_threads > 0 else None
    try:
        w, w_chunks = params.copy(), params.copy()
        _time_refsim(model, w, x, y, batch, 2)  # warm-up (Numba's cache, BLAS buffers)
        if pool is not None:
            _time_refsim(model, w_chunks, x, y, batch, 2, pool)
        _time_torch(net, opt, xt, yt, batch, 2)
        rows = []
        for _ in range(reps):
            w[...] = params  # every repetition trains from the same weights
            row = {"refsim": _time_refsim(model, w, x, y, batch, steps)}
            if pool is not None:
                w_chunks[...] = params
                row["chunks"] = _time_refsim(model, w_chunks, x, y, batch, steps, pool)
                if w_chunks.tobytes() != w.tobytes():
                    raise AssertionError("refsim's steps on chunk threads changed the bits")
            row["torch"] = _time_torch(net, opt, xt, yt, batch, steps)
            rows.append(row)
        return rows
    finally:
        if pool is not None:
            pool.close()


def test_alternating_step_checks_and_runs():
    import pytest
    pytest.importorskip("torch", reason="the PyTorch baseline needs torch==2.13.0 (CPU)")
    rows = measure(batch=10, threads=1, reps=2, steps=2)
    assert len(rows) == 2 and all(r > 0 and t > 0 for r, t, _ in rows)
    rows = measure_with_chunk_threads(batch=10, threads=1, reps=1, steps=2, chunk_threads=2)
    assert len(rows) == 1 and set(rows[0]) == {"refsim", "chunks", "torch"}


def main(argv) -> int:
    if len(argv) not in (5, 6):
        print(__doc__)
        return 2
    batch, threads, reps, steps = map(int, argv[1:5])
    chunk_threads = int(argv[5]) if len(argv) == 6 else 0
    print(f"OpenBLAS: {describe_blas()}")
    rows = measure_with_chunk_threads(batch, threads, reps, steps, chunk_threads)
    for i, row in enumerate(rows):
        line = f"rep {i}: refsim {row['refsim'] * 1e3:.2f} ms"
        if chunk_threads:
            line += f"  on {chunk_threads} chunk lanes {row['chunks'] * 1e3:.2f} ms"
        print(f"{line}  torch {row['torch'] * 1e3:.2f} ms  ratio {row['refsim'] / row['torch']:.3f}"
              + (f"  chunks/torch {row['chunks'] / row['torch']:.3f}"
                 f"  chunks/refsim {row['chunks'] / row['refsim']:.3f}" if chunk_threads else ""))

    def median(f):
        return float(np.median([f(row) for row in rows]))
    print(f"B={batch} threads={threads} median of {reps}: refsim {median(lambda r: r['refsim']) * 1e3:.2f} "
          f"ms  torch {median(lambda r: r['torch']) * 1e3:.2f} ms  "
          f"ratio {median(lambda r: r['refsim'] / r['torch']):.3f}")
    if chunk_threads:
        print(f"  on {chunk_threads} chunk lanes: {median(lambda r: r['chunks']) * 1e3:.2f} ms  "
              f"ratio to torch {median(lambda r: r['chunks'] / r['torch']):.3f}  "
              f"to refsim serial {median(lambda r: r['chunks'] / r['refsim']):.3f} (same bits)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])  # torch_fedavg beside this file
    raise SystemExit(main(sys.argv))
