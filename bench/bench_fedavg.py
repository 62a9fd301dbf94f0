"""One FedAvg round of the paper's MNIST setting beside a plain PyTorch FedAvg loop (CPU).

McMahan et al., AISTATS 2017, arXiv:1602.05629, Algorithm 1: 10 clients x 600 examples, B = 10,
E = 1, C = 1 (all ten train), for the 2NN and the CNN. Issue goal: refsim within 1.5x of PyTorch.

Run:  python -m pytest bench/bench_fedavg.py --benchmark-enable --benchmark-json=fedavg.json
      python bench/ratios.py fedavg.json

Before timing, the refsim round is checked against the PyTorch loop on the same initial weights
and the same batch order (``refsim.data.batching.batch_order``), on two of the clients cut to
60 and 37 examples (same code path, less time, unequal n_k), in float64 (so that the tolerance can be tight: in float32, 60 SGD steps
of the CNN amplify rounding differences to ~1e-3). Timings are float32. The PyTorch loop is what a user would write:
load the global state, SGD over the client's batches, then sum(n_k * w_k) / sum(n_k).
"""

import os
from dataclasses import replace

import numpy as np
import pytest

from refsim.backend import Purpose, make_rng
from refsim.data import load_mnist, partition
from refsim.fedavg import DType, FedAvgConfig, from_images, run_round
from refsim.nn import cnn_mnist, from_torch_state_dict, mlp_2nn
from torch_fedavg import torch_round

torch = pytest.importorskip("torch", reason="the PyTorch baseline needs torch==2.13.0 (CPU)")

THREADS = len(os.sched_getaffinity(0))
LR, B, SEED, K = 0.05, 10, 0, 10
MODELS = {"mlp_2nn": mlp_2nn, "cnn_mnist": cnn_mnist}
_DATA = {}


def _setup(name, num_clients, dtype=DType.FLOAT32, sizes=None, stack=1, client_threads=1):
    if dtype not in _DATA:
        _DATA[dtype] = from_images(load_mnist(), dtype.np, train_limit=K * 600, test_limit=10)
    data = _DATA[dtype]
    parts = partition.iid(data.y_train, K, make_rng(SEED, Purpose.PARTITION))[:num_clients]
    if sizes is not None:  # the oracle check: fewer examples per client, unequal n_k
        parts = [p[:n] for p, n in zip(parts, sizes)]
    model = MODELS[name]()
    params = model.init(make_rng(SEED, Purpose.INIT), "torch", dtype.np)
    cfg = FedAvgConfig(fraction=1.0, epochs=1, batch_size=B, lr=LR, rounds=1, seed=SEED,
                       dtype=dtype, client_stack=stack, client_threads=client_threads)
    return model, params, data, parts, cfg


def _torch_round(name, model, params, data, parts):
    return torch_round(name, model, params, data, parts, LR, B, SEED)


@pytest.mark.parametrize("stack", [1, 10], ids=["one-at-a-time", "side-by-side"])
@pytest.mark.parametrize("name", list(MODELS))
def test_refsim_round(benchmark, name, stack):
    """client_stack 1 (the reference path) and 10 (the GPU-oriented side-by-side path)."""
    sizes = (60, 37) if stack == 1 else (60, 60)  # side by side needs equal n_k
    model, params, data, parts, cfg = _setup(name, 2, DType.FLOAT64, sizes, stack)
    torch.set_num_threads(THREADS)
    expected = from_torch_state_dict(model, _torch_round(name, model, params, data, parts))
    got, _, _ = run_round(params, {}, 1, cfg, model, data, parts)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-11,
                               err_msg=f"refsim round vs PyTorch loop (float64), {name}")
    model, params, data, parts, cfg = _setup(name, K, stack=stack)
    benchmark.group = f"fedavg round {name} 10x600 B=10"
    benchmark.extra_info.update(threads=THREADS, role="candidate", client_stack=stack)
    benchmark.pedantic(run_round, args=(params, {}, 1, cfg, model, data, parts),
                       rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("name", list(MODELS))
def test_refsim_round_on_client_threads(benchmark, name):
    """client_threads = the cores (FedAvgConfig.client_threads; run with
    OPENBLAS_NUM_THREADS=1, as the command at the end of this file): first the bits of the
    round against one client at a time in this process, then the time."""
    model, params, data, parts, cfg = _setup(name, 3, sizes=(60, 37, 44), client_threads=THREADS)
    one, _, _ = run_round(params, {}, 1, replace(cfg, client_threads=1), model, data, parts)
    got, _, _ = run_round(params, {}, 1, cfg, model, data, parts)
    assert got.tobytes() == one.tobytes(), "client_threads changed the round's bits"
    model, params, data, parts, cfg = _setup(name, K, client_threads=THREADS)
    benchmark.group = f"fedavg round {name} 10x600 B=10"
    benchmark.extra_info.update(threads=THREADS, role="candidate", client_threads=THREADS)
    benchmark.pedantic(run_round, args=(params, {}, 1, cfg, model, data, parts),
                       rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_round(benchmark, name):
    torch.set_num_threads(THREADS)
    model, params, data, parts, _ = _setup(name, K)
    benchmark.group = f"fedavg round {name} 10x600 B=10"
    benchmark.extra_info.update(threads=THREADS, role="baseline")
    benchmark.pedantic(_torch_round, args=(name, model, params, data, parts),
                       rounds=3, iterations=1, warmup_rounds=1)


def alternate(name: str, reps: int, num_clients: int = K, sizes=None, client_threads: int = 1):
    """[(refsim s, PyTorch s, ratio)] of ``reps`` rounds timed in alternation (refsim, then
    PyTorch, in each repetition), after one warm-up round of each; client_stack 1."""
    import time
    torch.set_num_threads(THREADS)
    model, params, data, parts, cfg = _setup(name, num_clients, sizes=sizes,
                                             client_threads=client_threads)
    run_round(params, {}, 1, cfg, model, data, parts)
    _torch_round(name, model, params, data, parts)
    rows = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run_round(params, {}, 1, cfg, model, data, parts)
        t1 = time.perf_counter()
        _torch_round(name, model, params, data, parts)
        t2 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, (t1 - t0) / (t2 - t1)))
    return rows


def test_alternate_runs():
    """The alternating timer of ``python bench/bench_fedavg.py`` runs (CI: two small clients;
    the oracle check of the round is test_refsim_round's)."""
    assert len(alternate("cnn_mnist", 1, num_clients=2, sizes=(20, 13))) == 1
    assert len(alternate("cnn_mnist", 1, num_clients=2, sizes=(20, 13), client_threads=2)) == 1


if __name__ == "__main__":
    # python bench/bench_fedavg.py cnn_mnist 3 [client_threads]: rounds timed in alternation,
    # median ratio. With client_threads > 1 start it as
    #   OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 python bench/bench_fedavg.py cnn_mnist 3 2
    # (refsim's clients on 2 threads, each with a 1-thread BLAS; PyTorch on 2 threads).
    import sys
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    rows = alternate(sys.argv[1], int(sys.argv[2]), client_threads=threads)
    for r, t, q in rows:
        print(f"refsim {r:.3f} s  torch {t:.3f} s  ratio {q:.3f}")
    print(f"{sys.argv[1]} threads={THREADS} client_threads={threads} median of {len(rows)}: refsim "
          f"{np.median([r[0] for r in rows]):.3f} s  torch {np.median([r[1] for r in rows]):.3f} s"
          f"  ratio {np.median([r[2] for r in rows]):.3f}")
