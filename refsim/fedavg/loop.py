"""FederatedAveraging, the whole algorithm on one screen.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017, arXiv:1602.05629, Algorithm 1:

    initialize w_0
    for each round t = 1, 2, ...:
        m <- max(C * K, 1)
        S_t <- (random set of m clients)
        for each client k in S_t in parallel:
            w^k_{t+1} <- ClientUpdate(k, w_t)
        w_{t+1} <- sum_k (n_k / n) w^k_{t+1}

refsim's exact choices (each stated where it is made below; all in ``docs/fedavg.md``):

* w_0 = ``model.init(make_rng(seed, Purpose.INIT), scheme, dtype)``.
* Rounds are numbered t = 1..T and t is the round key of every stream.
* S_t = ``np.sort(make_rng(seed, Purpose.CLIENT_SAMPLE, t).choice(K, size=m, replace=False))``:
  clients are processed, encoded and summed in ascending id order.
* Clients send updates delta_k = w^k_{t+1} - w_t; with a codec, the server averages
  ``codec.decode(codec.encode(per-tensor views of delta_k, seed=quantize_key(seed, t, k)))``.
* w_{t+1} = server_update(w_t, weighted_average(deltas, n_k)); SGD with lr 1 is the paper.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from refsim.backend import Purpose, make_rng
from refsim.compress import QSGDConfig, QuantizerConfig, quantize_key, report, tff_round_bits
from refsim.data.batching import batch_order, num_batches
from refsim.fedavg.client import ClientHParams, NonFiniteUpdateError, client_update
from refsim.fedavg.config import FedAvgConfig, NanPolicy, Weighting, clients_per_round
from refsim.fedavg.dataset import FedData, holdout_split
from refsim.fedavg.metrics import History, RoundMetrics, evaluate, federated_evaluate
from refsim.fedavg.server import init_server_state, server_update, weighted_average
from refsim.fedavg.storage import (FORMAT_VERSION, load_checkpoint, save_checkpoint, write_json,
                                   write_npz)
from refsim.nn import Model

__all__ = ["sample_clients", "encode_decode", "run_round", "run_fedavg"]


def sample_clients(seed: int, round_: int, num_clients: int, m: int) -> np.ndarray:
    """S_t: m distinct client ids, ascending (m,) int64.

    ``np.sort(make_rng(seed, Purpose.CLIENT_SAMPLE, t).choice(K, size=m, replace=False))``.

    >>> sample_clients(0, 1, 10, 3).tolist() == sorted(
    ...     np.random.default_rng([0, 2, 1]).choice(10, size=3, replace=False).tolist())
    True
    """
    rng = make_rng(seed, Purpose.CLIENT_SAMPLE, round_)
    return np.sort(rng.choice(num_clients, size=m, replace=False)).astype(np.int64)


def encode_decode(config: FedAvgConfig, model: Model, delta: np.ndarray, round_: int,
                  client: int) -> tuple[np.ndarray, int, float | None]:
    """What the server receives from client k, the exact uplink bits, and their entropy bound.

    No codec: delta itself, 8 * itemsize * P bits. With a codec: the update is split into the
    model's tensors (``model.layout`` order, each reshaped), encoded with
    ``seed = quantize_key(config.seed, t, k)``, and decoded; bits = 8 * len(bytes). For
    quantize / QSGD codecs the third value is ``report(bytes).entropy_bound_bits`` (sum over
    tensors of n * H of the coded symbols); None otherwise.
    """
    if config.codec is None:
        return delta, 8 * delta.itemsize * delta.size, None
    tensors = [delta[s.offset:s.offset + s.size].reshape(s.shape) for s in model.layout]
    data = config.codec.encode(tensors, seed=quantize_key(config.seed, round_, client))
    decoded = np.concatenate([t.ravel() for t in config.codec.decode(data)])  # (P,)
    entropy = (report(data).entropy_bound_bits
               if isinstance(config.codec.method, (QuantizerConfig, QSGDConfig)) else None)
    return decoded.astype(delta.dtype, copy=False), 8 * len(data), entropy


def _tff_bits(config: FedAvgConfig, model: Model, reporting: int) -> int | None:
    """TFF's count for this round (see ``refsim.compress.tff_bits``), where it is comparable."""
    codec = config.codec
    if config.dtype.np != np.float32:
        return None
    sizes = [s.size for s in model.layout]
    if codec is None or codec.method is None:
        return tff_round_bits(sizes, reporting, None)
    if isinstance(codec.method, QuantizerConfig) and not codec.huffman and codec.block == 1:
        return tff_round_bits(sizes, reporting, codec.method.bits, codec.threshold)
    return None


def run_round(params: np.ndarray, state: dict, round_: int, config: FedAvgConfig, model: Model,
              data: FedData, partition: Sequence[np.ndarray]):
    """Round t of Algorithm 1. Returns (w_{t+1}, server state, per-round facts as a dict).

    The dict holds clients, dropped, lr, examples, batches, train_loss, train_accuracy,
    uplink_bits, tff_uplink_bits, uplink_entropy_bits (the loop adds test metrics and
    cumulative bits).
    """
    K = len(partition)
    m = clients_per_round(config.fraction, K)
    S_t = sample_clients(config.seed, round_, K, m)  # (m,)
    hp = ClientHParams(model, config.epochs, config.batch_size, config.client_lr(round_))
    deltas, weights, dropped = [], [], []
    n_total, loss_sum, acc_sum, batches, uplink_bits, entropy_bits = 0, 0.0, 0.0, 0, 0, 0.0
    for k in S_t:
        k = int(k)
        idx = partition[k]
        # Training metrics: the broadcast w_t on client k's examples (metrics.py, deviation note).
        loss_k, acc_k = evaluate(model, params, data.x_train[idx], data.y_train[idx])
        delta, n_k = client_update(params, data.x_train, data.y_train, idx, hp,
                                   config.seed, round_, k)  # ClientUpdate(k, w_t)
        n_total += n_k
        loss_sum += n_k * loss_k
        acc_sum += n_k * acc_k
        batches += config.epochs * num_batches(n_k, config.batch_size)
        if not np.isfinite(delta).all():  # never averaged in silently
            if config.nan_policy is NanPolicy.RAISE:
                raise NonFiniteUpdateError(f"round {round_}: the update of client {k} contains "
                                           f"NaN or Inf (nan_policy=NanPolicy.DROP drops it)")
            dropped.append(k)
            continue
        received, bits, entropy = encode_decode(config, model, delta, round_, k)
        uplink_bits += bits
        entropy_bits = None if entropy is None else entropy_bits + entropy
        deltas.append(received)
        weights.append(n_k if config.weighting is Weighting.EXAMPLES else 1)
    if not deltas:
        raise ValueError(f"round {round_}: every sampled client was dropped {dropped}; "
                         f"the total weight sum(n_k) is 0")
    mean_delta = weighted_average(deltas, weights)  # sum(n_k delta_k) / sum(n_k), (P,)
    params, state = server_update(params, mean_delta, state, config.server, round_)
    return params, state, {
        "clients": tuple(int(k) for k in S_t), "dropped": tuple(dropped), "lr": hp.lr,
        "examples": n_total, "batches": batches, "train_loss": loss_sum / n_total,
        "train_accuracy": acc_sum / n_total, "uplink_bits": uplink_bits,
        "tff_uplink_bits": _tff_bits(config, model, len(deltas)),
        "uplink_entropy_bits": entropy_bits,
    }


def run_fedavg(config: FedAvgConfig, model: Model, data: FedData,
               partition: Sequence[np.ndarray], *, run_dir: str | os.PathLike | None = None,
               resume: bool = False, trace: bool = False, trace_every: int = 1,
               on_round: Callable[[RoundMetrics], None] | None = None) -> History:
    """Run T rounds of FedAvg and return the :class:`History`.

    partition : K index arrays into ``data.x_train`` (K = len(partition)). With
        ``config.eval_holdout`` > 0 each client first loses its held-out examples
        (``holdout_split``), and clients train on the rest.
    run_dir : where ``checkpoint.npz`` is written after every round (atomically), and
        ``trace/`` when ``trace`` (weights every ``trace_every`` rounds and at the last);
        None writes nothing.
    resume : continue from ``run_dir/checkpoint.npz`` when it exists (same config, model and
        K, else ValueError). Every stream is keyed by (seed, round, ...), so no generator
        state is needed: the resumed run is bit-identical to an uninterrupted one.
    on_round : called with each round's metrics after its checkpoint is written.
    """
    if data.x_train.dtype != config.dtype.np:
        raise TypeError(f"data is {data.x_train.dtype} but config.dtype is {config.dtype.np}")
    K = len(partition)
    partition, held_out = holdout_split(partition, config.eval_holdout, config.seed)
    meta = {"config": config.to_dict(), "model": model.name, "num_clients": K}
    ckpt = None if run_dir is None else os.path.join(os.fspath(run_dir), "checkpoint.npz")
    params = model.init(make_rng(config.seed, Purpose.INIT), config.init.value, config.dtype.np)
    w0 = params.copy()
    state, rows, start = init_server_state(config.server, params), [], 1
    if resume and ckpt is not None and os.path.exists(ckpt):
        done, params, state, saved = load_checkpoint(ckpt)
        if {k: saved.get(k) for k in meta} != json.loads(json.dumps(meta)):
            raise ValueError(f"{ckpt} was written by a different run (config, model or K differ)")
        rows, start = [RoundMetrics.from_dict(d) for d in saved["metrics"]], done + 1
    if trace:
        if run_dir is None:
            raise ValueError("trace=True needs a run_dir")
        _trace_init(os.path.join(os.fspath(run_dir), "trace"), config, model, partition, w0)
    up_cum = rows[-1].uplink_bits_cum if rows else 0
    down_cum = rows[-1].broadcast_bits_cum if rows else 0
    m = clients_per_round(config.fraction, K)
    for t in range(start, config.rounds + 1):
        params, state, r = run_round(params, state, t, config, model, data, partition)
        test_loss = test_acc = fed_loss = fed_acc = None
        if t % config.eval_every == 0 or t == config.rounds:
            test_loss, test_acc = evaluate(model, params, data.x_test, data.y_test)
            fed_loss, fed_acc = federated_evaluate(model, params, data.x_train, data.y_train,
                                                   held_out)
        down = m * 8 * params.itemsize * params.size
        up_cum, down_cum = up_cum + r["uplink_bits"], down_cum + down
        row = RoundMetrics(round=t, test_loss=test_loss, test_accuracy=test_acc,
                           fed_eval_loss=fed_loss, fed_eval_accuracy=fed_acc,
                           uplink_bits_cum=up_cum, broadcast_bits=down,
                           broadcast_bits_cum=down_cum, **r)
        rows.append(row)
        if trace:
            keep = t % trace_every == 0 or t == config.rounds
            _trace_round(os.path.join(os.fspath(run_dir), "trace"), config, partition, row,
                         params if keep else None)
        if ckpt is not None:
            save_checkpoint(ckpt, t, params, state,
                            {**meta, "metrics": [x.to_dict() for x in rows]})
        if on_round is not None:
            on_round(row)
    return History(tuple(rows), params, w0)


def _trace_init(tdir: str, config: FedAvgConfig, model: Model, partition, w0) -> None:
    write_npz(os.path.join(tdir, "init.npz"),
              {"weights": w0, **{f"client_{k}": np.asarray(p) for k, p in enumerate(partition)}})
    write_json(os.path.join(tdir, "init.json"), {
        "format_version": FORMAT_VERSION, "config": config.to_dict(), "model": model.name,
        "layout": [[s.name, list(s.shape), s.offset] for s in model.layout],
        "num_clients": len(partition),
        "clients_per_round": clients_per_round(config.fraction, len(partition)),
        "rules": {"round": "t = 1..T",
                  "clients": "sort(default_rng([seed, 2, t]).choice(K, m, replace=False))",
                  "batch_order": "client_k[default_rng([seed, 3, t, k, e]).permutation(n_k)]",
                  "aggregate": "w + sum(n_k * delta_k) / sum(n_k) (float64 sum, ascending k)"}})


def _trace_round(tdir: str, config: FedAvgConfig, partition, row: RoundMetrics,
                 params) -> None:
    t = row.round
    orders = {k: batch_order(partition[k], config.epochs, config.seed, t, k)
              for k in row.clients}  # k -> (E, n_k)
    arrays = {"clients": np.array(row.clients, np.int64),
              **{f"order_{k}": o for k, o in orders.items()}}
    if params is not None:
        arrays["weights"] = params
    write_npz(os.path.join(tdir, f"round_{t:06d}.npz"), arrays)
    write_json(os.path.join(tdir, f"round_{t:06d}.json"), {
        "round": t, "lr": row.lr, "clients": list(row.clients), "dropped": list(row.dropped),
        "epochs": config.epochs, "batch_size": config.batch_size,
        "has_weights": params is not None,
        "batch_order": {str(k): o.tolist() for k, o in orders.items()}})
