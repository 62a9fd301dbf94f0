"""Golden vectors of the FedAvg server and of whole rounds (``docs/golden.md``, "FedAvg").

* ``aggregation.npz``: ``weighted_average`` of three client updates with unequal sizes
  n = (5, 1, 12), beside the unweighted mean of the same updates, so that an implementation
  that weights wrongly (or not at all) fails; float64 and float32 updates.
* ``server_optimizers.npz``: three consecutive ``server_update`` steps (rounds t = 1, 2, 3) of
  every server optimizer (SGD, FedAvgM, FedAdam with and without Flower's bias correction,
  FedYogi, FedAdagrad; ``docs/fedavg.md``, "Server step"), with the state after each step.
* ``fedavg.npz``: three rounds of FederatedAveraging (``docs/fedavg.md``) on
  :func:`golden_models.golden_mlp` (123 parameters, 30 training examples over 4 clients of
  unequal size, 2 clients a round, E = 2, B = 4 so that a client's last batch is partial),
  float64, once as the paper's FedAvg and once with an 8-bit stochastic quantization + Huffman
  uplink and server momentum. Computed by :func:`oracle_run`, the steps of ``run_fedavg`` with
  the loop-oracle gradients (no BLAS, so the bytes are the same on every machine);
  ``run_fedavg`` itself agrees with it to the tolerance of ``docs/golden.md``.

McMahan et al., AISTATS 2017, arXiv:1602.05629, Algorithm 1; Reddi et al., ICLR 2021,
arXiv:2003.00295, Algorithm 2; Hsu et al. 2019, arXiv:1909.06335.
"""

from __future__ import annotations

import numpy as np

from refsim.backend import Purpose, make_rng
from refsim.compress import Codec, QuantizerConfig
from refsim.data import client_batches
from refsim.data.partition import quantity_skew
from refsim.fedavg import (DType, FedAvgConfig, FedData, InitScheme, ServerOpt, ServerOptConfig,
                           Weighting, clients_per_round, decode_broadcast, decode_tensors,
                           encode_broadcast, encode_update, init_server_state, sample_clients,
                           server_update, weighted_average)
from refsim.nn import Model, sgd_step
from refsim.validation.golden_inputs import fixed_integers, fixed_uniform
from refsim.validation.golden_models import golden_mlp
from refsim.validation.oracle_model import oracle_loss_and_grad

__all__ = ["aggregation_vectors", "server_optimizer_vectors", "fedavg_vectors", "oracle_run",
           "fedavg_partition", "fedavg_data"]

CLIENT_SIZES = (5, 1, 12)
SERVER_OPTIMIZERS = {
    "sgd": ServerOptConfig(),                                   # lr 1: FedAvg itself
    "momentum": ServerOptConfig(ServerOpt.MOMENTUM, lr=1.0, momentum=0.9),
    "fedadam": ServerOptConfig.fedadam(),                       # Flower's, bias correction on
    "adam": ServerOptConfig(ServerOpt.ADAM, lr=0.1),            # the paper: no bias correction
    "fedyogi": ServerOptConfig.fedyogi(),
    "fedadagrad": ServerOptConfig.fedadagrad(),
}
SERVER_ROUNDS = 3

FEDAVG_SEED = 5
FEDAVG_RUNS = {
    "fedavg": FedAvgConfig(fraction=0.5, epochs=2, batch_size=4, lr=0.3, rounds=3,
                           seed=FEDAVG_SEED, dtype=DType.FLOAT64, init=InitScheme.KERAS),
    "quant8_momentum": FedAvgConfig(
        fraction=0.5, epochs=2, batch_size=4, lr=0.3, rounds=3, seed=FEDAVG_SEED,
        dtype=DType.FLOAT64, init=InitScheme.KERAS,
        server=ServerOptConfig(ServerOpt.MOMENTUM, lr=1.0, momentum=0.9),
        codec=Codec(QuantizerConfig(8, stochastic=True), huffman=True)),
}
NUM_CLIENTS = 4


def aggregation_vectors() -> dict[str, np.ndarray]:
    """weights (3,) = n_k; per dtype d: d.updates (3, 7), d.mean = sum(n_k u_k) / sum(n_k),
    d.uniform_mean (all weights 1)."""
    out = {"weights": np.array(CLIENT_SIZES, np.int64)}
    for dtype, key in ((np.float64, 901), (np.float32, 902)):
        d = np.dtype(dtype).name
        updates = fixed_uniform(key, (len(CLIENT_SIZES), 7)).astype(dtype)  # (M, P)
        out.update({
            f"{d}.updates": updates,
            f"{d}.mean": weighted_average(list(updates), CLIENT_SIZES),  # (P,)
            f"{d}.uniform_mean": weighted_average(list(updates), [1] * len(updates)),  # (P,)
        })
    return out


def server_optimizer_vectors() -> dict[str, np.ndarray]:
    """Per optimizer o: its hyperparameters (o.lr, o.momentum, o.beta1, o.beta2, o.tau,
    o.bias_correction); per dtype d: d.params0 (P,), d.mean_deltas (3, P) and, for each o,
    d.o.params (3, P) = w_t after round t = 1..3, and its state d.o.v / d.o.m (3, P)."""
    out = {}
    for name, opt in SERVER_OPTIMIZERS.items():
        out.update({f"{name}.lr": np.float64(opt.lr), f"{name}.momentum": np.float64(opt.momentum),
                    f"{name}.beta1": np.float64(opt.beta1), f"{name}.beta2": np.float64(opt.beta2),
                    f"{name}.tau": np.float64(opt.tau),
                    f"{name}.bias_correction": np.bool_(opt.bias_correction)})
    for dtype in (np.float64, np.float32):
        d = np.dtype(dtype).name
        params0 = fixed_uniform(1001, (6,)).astype(dtype)  # (P,)
        deltas = fixed_uniform(1002, (SERVER_ROUNDS, 6), -0.1, 0.1).astype(dtype)  # (T, P)
        out.update({f"{d}.params0": params0, f"{d}.mean_deltas": deltas})
        for name, opt in SERVER_OPTIMIZERS.items():
            params, state = params0, init_server_state(opt, params0)
            steps: dict[str, list[np.ndarray]] = {"params": []}
            for t in range(1, SERVER_ROUNDS + 1):
                params, state = server_update(params, deltas[t - 1], state, opt, t)
                steps["params"].append(params)
                for k, v in state.items():
                    steps.setdefault(k, []).append(v)
            out.update({f"{d}.{name}.{k}": np.stack(v) for k, v in steps.items()})  # (T, P)
    return out


def fedavg_data() -> FedData:
    """30 training examples (N, 1, 4, 4) in [0, 1) with labels in {0, 1, 2}. They double as
    the test set: ``run_fedavg`` evaluates one, and evaluation never changes the weights."""
    model = golden_mlp()
    x = fixed_uniform(1601, (30, *model.input_shape), 0.0, 1.0)  # (N, 1, 4, 4)
    y = fixed_integers(1602, (30,), 0, model.num_classes)  # (N,)
    return FedData(x, y, x, y)


def oracle_run(config: FedAvgConfig, model: Model, data: FedData, partition: list[np.ndarray]):
    """``run_fedavg`` (no hold-out, NaN policy RAISE) with the loop-oracle gradients.

    The steps of ``refsim/fedavg/loop.py::run_round`` (broadcast, ClientUpdate as in
    ``client.py::client_update``, uplink, ``weighted_average``, ``server_update``) in their
    order, from their public parts (``docs/fedavg.md``, "One run, step by step"); only the
    gradient is ``oracle_loss_and_grad`` instead of ``Model.loss_and_grad``, so that nothing
    depends on BLAS. Returns (w0 (P,), weights (T, P) = w_t after round t, clients (T, m),
    uplink_bits (T,)).
    """
    seed, K, dtype = config.seed, len(partition), config.dtype.np
    m = clients_per_round(config.fraction, K)
    params = model.init(make_rng(seed, Purpose.INIT), config.init.value, dtype)  # (P,) w_0
    w0, state = params, init_server_state(config.server, params)
    weights, clients, bits = [], [], []
    for t in range(1, config.rounds + 1):
        S_t = sample_clients(seed, t, K, m)  # (m,) ascending
        broadcast, _ = encode_broadcast(config.downlink, model, params, seed, t)
        deltas, n, uplink = [], [], 0
        for k in map(int, S_t):
            start = decode_broadcast(broadcast, model, dtype)  # (P,) w~_t
            w = start  # ClientUpdate(k, w~_t)
            batches = client_batches(partition[k], config.batch_size, config.epochs, seed, t, k)
            for batch in batches:
                x, y = data.x_train[batch], data.y_train[batch]
                _, _, grad = oracle_loss_and_grad(model, w, x, y)  # (P,)
                w = sgd_step(w, grad, config.client_lr(t))
            delta = w - start  # (P,)
            if not np.isfinite(delta).all():
                raise ValueError(f"oracle_run: round {t}: the update of client {k} is not finite")
            payload, b, _ = encode_update(config.codec, model, delta, seed, t, k)
            deltas.append(decode_tensors(payload, model, dtype))  # (P,) what the server gets
            n.append(len(partition[k]) if config.weighting is Weighting.EXAMPLES else 1)
            uplink += b
        params, state = server_update(params, weighted_average(deltas, n), state, config.server, t)
        weights.append(params)
        clients.append(S_t)
        bits.append(uplink)
    return w0, np.stack(weights), np.stack(clients), np.array(bits, np.int64)


def fedavg_partition(data: FedData) -> list[np.ndarray]:
    """The 4 clients of unequal size: ``quantity_skew`` with ``default_rng([5, 1])``."""
    return quantity_skew(data.y_train, NUM_CLIENTS, make_rng(FEDAVG_SEED, Purpose.PARTITION),
                         sigma=1.0, min_size=3)


def fedavg_vectors() -> dict[str, np.ndarray]:
    """Data, partition, config scalars and w0, then per run r: r.clients (T, m), r.weights
    (T, P) = w_t after round t and r.uplink_bits (T,) int64."""
    model, data = golden_mlp(), fedavg_data()
    partition = fedavg_partition(data)
    base = FEDAVG_RUNS["fedavg"]
    out = {
        "x_train": data.x_train, "y_train": data.y_train,
        "partition_indices": np.concatenate(partition),
        "partition_offsets": np.cumsum([0] + [len(p) for p in partition]).astype(np.int64),
        "seed": np.int64(base.seed), "fraction": np.float64(base.fraction),
        "epochs": np.int64(base.epochs), "batch_size": np.int64(base.batch_size),
        "lr": np.float64(base.lr), "rounds": np.int64(base.rounds),
    }
    for run, config in FEDAVG_RUNS.items():
        w0, weights, clients, bits = oracle_run(config, model, data, partition)
        out.update({"w0": w0, f"{run}.weights": weights, f"{run}.clients": clients,
                    f"{run}.uplink_bits": bits})
    return out
