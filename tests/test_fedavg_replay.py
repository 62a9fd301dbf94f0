"""Replay a ``trace/`` written by run_fedavg with an independent, minimal FedAvg in NumPy.

The replay below uses no refsim code for the algorithm: it reads the sampled clients, batch
orders and learning rates from the trace, writes softmax regression's gradient by hand, and
averages with sum(n_k * delta_k) / sum(n_k). It must reach the traced weights of every round.
"""

import json
import pathlib

import numpy as np

from refsim.data import load_mnist
from refsim.fedavg import DType, FedAvgConfig, from_images, run_fedavg
from refsim.nn import logistic

SIZES = [23, 9, 41, 17, 30, 12]


def _softmax_regression_grad(W, b, x, y):
    """Mean cross-entropy gradient of softmax(x W + b), by hand. x (n, 784), y (n,)."""
    z = x @ W + b                          # (n, 10)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)      # (n, 10)
    p[np.arange(len(y)), y] -= 1.0
    dz = p / len(y)                        # (n, 10)
    return x.T @ dz, dz.sum(axis=0)        # (784, 10), (10,)


def _replay(tdir: pathlib.Path, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    init = np.load(tdir / "init.npz")
    header = json.loads((tdir / "init.json").read_text())
    K = header["num_clients"]
    clients = [init[f"client_{k}"] for k in range(K)]
    w = init["weights"].copy()             # (7850,): fc.weight (784, 10) then fc.bias (10,)
    out = []
    t = 1
    while (tdir / f"round_{t:06d}.json").exists():
        rnd = json.loads((tdir / f"round_{t:06d}.json").read_text())
        B, lr = rnd["batch_size"], rnd["lr"]
        deltas, weights = [], []
        for k in rnd["clients"]:
            W, b = w[:7840].reshape(784, 10).copy(), w[7840:].copy()
            for order in rnd["batch_order"][str(k)]:        # one list per local epoch
                assert sorted(order) == clients[k].tolist()
                step = len(order) if B is None else B
                for s in range(0, len(order), step):
                    batch = np.array(order[s:s + step])
                    gW, gb = _softmax_regression_grad(W, b, x[batch], y[batch])
                    W, b = W - lr * gW, b - lr * gb
            deltas.append(np.concatenate([W.ravel(), b]) - w)
            weights.append(len(clients[k]))
        w = w + sum(n * d for n, d in zip(weights, deltas)) / sum(weights)
        out.append(w.copy())
        t += 1
    return out


def test_trace_replays_with_an_independent_numpy_fedavg(tmp_path):
    data = from_images(load_mnist(), np.float64, train_limit=sum(SIZES), test_limit=100)
    ends = np.cumsum(SIZES)
    # Interleaved, unequal clients so that indices and sizes both matter.
    perm = np.random.default_rng(123).permutation(sum(SIZES))
    parts = [np.sort(perm[e - n:e]) for n, e in zip(SIZES, ends)]
    cfg = FedAvgConfig(fraction=0.5, epochs=2, batch_size=7, lr=0.2, lr_decay=0.9, rounds=4,
                       seed=11, dtype=DType.FLOAT64)
    h = run_fedavg(cfg, logistic(), data, parts, run_dir=tmp_path, trace=True)
    tdir = tmp_path / "trace"
    x = data.x_train.reshape(len(data.x_train), -1)
    replayed = _replay(tdir, x, data.y_train)
    assert len(replayed) == 4
    for t, w in enumerate(replayed, start=1):
        traced = np.load(tdir / f"round_{t:06d}.npz")["weights"]
        np.testing.assert_allclose(traced, w, rtol=1e-12, atol=1e-14,
                                   err_msg=f"replayed weights after round {t}")
        rnd = json.loads((tdir / f"round_{t:06d}.json").read_text())
        assert rnd["clients"] == list(h.rounds[t - 1].clients)
    np.testing.assert_array_equal(np.load(tdir / f"round_{4:06d}.npz")["weights"], h.params)
    # Discriminating: the sampled clients differ in size, so the n_k weights matter.
    assert np.abs(h.params - replayed[-1]).max() < 1e-12
    assert len({len(parts[k]) for k in h.rounds[0].clients}) > 1


def test_trace_every_k_rounds_keeps_last(tmp_path):
    data = from_images(load_mnist(), np.float32, train_limit=60, test_limit=50)
    parts = [np.arange(0, 20), np.arange(20, 60)]
    cfg = FedAvgConfig(fraction=1.0, batch_size=10, rounds=3)
    run_fedavg(cfg, logistic(), data, parts, run_dir=tmp_path, trace=True, trace_every=2)
    has = [json.loads((tmp_path / "trace" / f"round_{t:06d}.json").read_text())["has_weights"]
           for t in (1, 2, 3)]
    assert has == [False, True, True]
    assert "weights" not in np.load(tmp_path / "trace" / "round_000001.npz").files
