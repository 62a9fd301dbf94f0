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
* The server broadcasts w_t, raw or through the downlink codec (``transport.py``); client k
  trains from what it decoded, w~_t, and sends delta_k = w^k_{t+1} - w~_t, raw or encoded with
  ``seed=quantize_key(seed, t, k)``; the server averages the decoded deltas.
* w_{t+1} = server_update(w_t, weighted_average(deltas, n_k)); SGD with lr 1 is the paper.
* Federated evaluation of w_{t+1} (not in Algorithm 1; Flower's ``fraction_evaluate``) runs on
  every client's held-out examples, or with ``fraction_evaluate`` < 1 on the m_eval =
  max(floor(fraction_evaluate * K), 1) clients ``sample_clients(..., Purpose.EVAL_SAMPLE)``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from refsim.backend import Purpose, get_xp, make_rng, to_numpy
from refsim.data.batching import batch_order
from refsim.fedavg.client import ClientHParams, report_update
from refsim.fedavg.client_opt import (ClientStatePolicy, client_state_like, join_client_states,
                                      split_client_states)
from refsim.fedavg.config import FedAvgConfig, clients_per_round
from refsim.fedavg.dataset import FedData, holdout_split
from refsim.fedavg.metrics import History, RoundMetrics, evaluate, federated_evaluate
from refsim.fedavg.server import aggregate_round, init_server_state
from refsim.fedavg.stacked import client_updates
from refsim.fedavg.transport import decode_broadcast, encode_broadcast
from refsim.fedavg.run_lock import lock_run_dir
from refsim.fedavg.storage import (FORMAT_VERSION, check_resumable, load_checkpoint,
                                   remove_partial_writes, save_checkpoint, write_json,
                                   write_npz)
from refsim.nn import Model

__all__ = ["sample_clients", "evaluation_clients", "run_round", "finish_round", "run_fedavg",
           "checkpoint_meta", "resume_point"]


def sample_clients(seed: int, round_: int, num_clients: int, m: int,
                   purpose: Purpose = Purpose.CLIENT_SAMPLE) -> np.ndarray:
    """S_t: m distinct client ids, ascending (m,) int64.

    ``np.sort(make_rng(seed, purpose, t).choice(K, size=m, replace=False))``; ``purpose`` is
    CLIENT_SAMPLE for the clients that train in round t, EVAL_SAMPLE for those that evaluate
    w_{t+1} (``FedAvgConfig.fraction_evaluate`` < 1).

    >>> sample_clients(0, 1, 10, 3).tolist() == sorted(
    ...     np.random.default_rng([0, 2, 1]).choice(10, size=3, replace=False).tolist())
    True
    """
    rng = make_rng(seed, purpose, round_)
    return np.sort(rng.choice(num_clients, size=m, replace=False)).astype(np.int64)


def run_round(params, state: dict, round_: int, config: FedAvgConfig, model: Model,
              data: FedData, partition: Sequence[np.ndarray]):
    """Round t of Algorithm 1. Returns (w_{t+1}, server state, per-round facts as a dict).

    Composed of the pieces a distributed deployment calls on its own machines
    (``refsim.flower`` does): ``sample_clients`` and ``encode_broadcast`` on the server,
    ``decode_broadcast`` and ``train_client`` (``client_update`` + ``report_update``) on each
    client, ``aggregate_round`` on the server.
    The dict holds clients, lr, broadcast_bits and the facts of ``aggregate_round`` (the loop
    adds test metrics and cumulative bits in ``finish_round``).
    """
    K = len(partition)
    m = clients_per_round(config.fraction, K)
    S_t = sample_clients(config.seed, round_, K, m)  # (m,)
    hp = ClientHParams(model, config.epochs, config.batch_size, config.client_lr(round_),
                       config.client_opt)
    xp = get_xp(params)
    payload, copy_bits = encode_broadcast(config.downlink, model, params, config.seed, round_)
    w_tilde = xp.asarray(decode_broadcast(payload, model, config.dtype.np))  # (P,) w~_t
    # Every client receives the same bytes; ClientUpdate never modifies w~_t. "In parallel" in
    # the paper: here one at a time in ascending id, or side by side (config.client_stack),
    # and several at once on threads (config.client_threads): the same results either way.
    parts = [partition[int(k)] for k in S_t]
    reports = [None] * m
    # ClientStatePolicy.KEEP: client k resumes its optimizer state from the last round it trained
    state, kept = split_client_states(state)
    keep = config.client_opt.state is ClientStatePolicy.KEEP
    starts = [kept.get(int(k)) for k in S_t] if keep else None
    for i, r in client_updates(w_tilde, data.x_train, data.y_train, parts, hp, config.seed,
                               round_, S_t, config.client_stack, starts,
                               config.client_threads):
        reports[i] = report_update(r, model, config.codec, config.seed, round_, int(S_t[i]))
        if keep:
            kept[int(S_t[i])] = r.opt_state
    params, state, facts = aggregate_round(params, state, round_, reports, config, model)
    state = join_client_states(state, kept)
    return params, state, {"clients": tuple(int(k) for k in S_t), "lr": hp.lr,
                           "broadcast_bits": m * copy_bits, **facts}


def evaluation_clients(config: FedAvgConfig, round_: int, num_clients: int) -> np.ndarray:
    """The clients that evaluate w_{t+1} in round t, ascending: all K, or with
    ``config.fraction_evaluate`` < 1 the m_eval = max(floor(fraction_evaluate * K), 1) clients
    of ``sample_clients(seed, t, K, m_eval, Purpose.EVAL_SAMPLE)`` (Flower's
    ``fraction_evaluate``; Flower also evaluates at least ``min_evaluate_clients`` = 2).

    >>> cfg = FedAvgConfig(fraction_evaluate=0.5)
    >>> len(evaluation_clients(cfg, 1, 10)), evaluation_clients(FedAvgConfig(), 1, 3).tolist()
    (5, [0, 1, 2])
    """
    if config.fraction_evaluate == 1.0 or num_clients == 0:
        return np.arange(num_clients, dtype=np.int64)
    m_eval = clients_per_round(config.fraction_evaluate, num_clients)
    return sample_clients(config.seed, round_, num_clients, m_eval, Purpose.EVAL_SAMPLE)


def finish_round(round_: int, params, facts: dict, previous: RoundMetrics | None,
                 config: FedAvgConfig, model: Model, data: FedData, eval_x, eval_y,
                 eval_parts) -> RoundMetrics:
    """The metrics row of round t: the facts of ``run_round``, cumulative bits, and at the
    evaluation cadence (t % eval_every == 0, and t = T) w_{t+1} on the test set and the
    federated evaluation on ``eval_parts`` (index arrays into eval_x / eval_y), of the clients
    ``evaluation_clients`` draws."""
    test_loss = test_acc = fed_loss = fed_acc = None
    if round_ % config.eval_every == 0 or round_ == config.rounds:
        test_loss, test_acc = evaluate(model, params, data.x_test, data.y_test)
        fed_loss, fed_acc = federated_evaluate(
            model, params, eval_x, eval_y,
            [eval_parts[k] for k in evaluation_clients(config, round_, len(eval_parts))])
    up_cum = (previous.uplink_bits_cum if previous else 0) + facts["uplink_bits"]
    down_cum = (previous.broadcast_bits_cum if previous else 0) + facts["broadcast_bits"]
    return RoundMetrics(round=round_, test_loss=test_loss, test_accuracy=test_acc,
                        fed_eval_loss=fed_loss, fed_eval_accuracy=fed_acc,
                        uplink_bits_cum=up_cum, broadcast_bits_cum=down_cum, **facts)


def run_fedavg(config: FedAvgConfig, model: Model, data: FedData,
               partition: Sequence[np.ndarray], *,
               eval_partition: Sequence[np.ndarray] | None = None,
               run_dir: str | os.PathLike | None = None, resume: bool = False,
               trace: bool = False, trace_every: int = 1,
               on_round: Callable[[RoundMetrics], None] | None = None) -> History:
    """Run T rounds of FedAvg and return the :class:`History`.

    partition : K index arrays into ``data.x_train`` (K = len(partition)). With
        ``config.eval_holdout`` > 0 each client first loses its held-out examples
        (``holdout_split``), and clients train on the rest.
    eval_partition : K index arrays into ``data.x_test``, client k's own test examples (e.g.
        FEMNIST's per-writer test sets); federated evaluation then runs on them instead of on
        held-out training examples (``eval_holdout`` must be 0).
    run_dir : where ``checkpoint.npz`` is written after every round (atomically), and
        ``trace/`` when ``trace`` (weights every ``trace_every`` rounds and at the last);
        None writes nothing. The run holds the directory's lock (``run_lock.lock_run_dir``)
        throughout: another run on it raises RunDirBusy, a ValueError naming its PID.
    resume : continue from ``run_dir/checkpoint.npz`` when it exists (same config, model and
        K, else ValueError). Every stream is keyed by (seed, round, ...), so no generator
        state is needed: the resumed run is bit-identical to an uninterrupted one.
    on_round : called with each round's metrics after its checkpoint is written.

    With ``config.backend == "cupy"`` the weights and the data live on the GPU; codecs, traces
    and checkpoints work on host copies.
    """
    with contextlib.ExitStack() as held:
        if run_dir is not None:
            held.enter_context(lock_run_dir(run_dir))
            remove_partial_writes(run_dir)  # what a run killed mid-write left
        return _run_fedavg(config, model, data, partition, eval_partition, run_dir, resume,
                           trace, trace_every, on_round)


def _run_fedavg(config, model, data, partition, eval_partition, run_dir, resume, trace,
                trace_every, on_round) -> History:
    """The body of :func:`run_fedavg` (its arguments, in order), with run_dir locked."""
    if data.x_train.dtype != config.dtype.np:
        raise TypeError(f"data is {data.x_train.dtype} but config.dtype is {config.dtype.np}")
    xp = get_xp(config.backend)  # ValueError when the backend is not available here
    K = len(partition)
    partition, held_out = holdout_split(partition, config.eval_holdout, config.seed)
    if eval_partition is not None:
        if config.eval_holdout > 0:
            raise ValueError("give eval_partition or config.eval_holdout > 0, not both")
        if len(eval_partition) != K:
            raise ValueError(f"eval_partition has {len(eval_partition)} clients, the "
                             f"partition {K}")
    meta = checkpoint_meta(config, model, K)
    ckpt = None if run_dir is None else os.path.join(os.fspath(run_dir), "checkpoint.npz")
    params = model.init(make_rng(config.seed, Purpose.INIT), config.init.value, config.dtype.np)
    w0 = params.copy()
    state, rows, start = init_server_state(config.server, params, config.aggregator), [], 1
    if resume and ckpt is not None and os.path.exists(ckpt):
        done, params, state, rows = resume_point(ckpt, config, model, K, w0)
        start = done + 1
    if trace:
        if run_dir is None:
            raise ValueError("trace=True needs a run_dir")
        _trace_init(os.path.join(os.fspath(run_dir), "trace"), config, model, partition, w0)
    if xp is not np:  # weights, optimizer state and data on the device
        params = xp.asarray(params)
        state = {k: xp.asarray(v) for k, v in state.items()}
        data = FedData(*(xp.asarray(a) for a in data))
    eval_x, eval_y, eval_parts = ((data.x_test, data.y_test, eval_partition)
                                  if eval_partition is not None
                                  else (data.x_train, data.y_train, held_out))
    for t in range(start, config.rounds + 1):
        params, state, facts = run_round(params, state, t, config, model, data, partition)
        row = finish_round(t, params, facts, rows[-1] if rows else None, config, model, data,
                           eval_x, eval_y, eval_parts)
        rows.append(row)
        if trace:
            keep = t % trace_every == 0 or t == config.rounds
            _trace_round(os.path.join(os.fspath(run_dir), "trace"), config, partition, row,
                         to_numpy(params) if keep else None)
        if ckpt is not None:
            save_checkpoint(ckpt, t, to_numpy(params), {k: to_numpy(v) for k, v in state.items()},
                            {**meta, "metrics": [x.to_dict() for x in rows]})
        if on_round is not None:
            on_round(row)
    return History(tuple(rows), to_numpy(params), w0)


def checkpoint_meta(config: FedAvgConfig, model: Model, num_clients: int) -> dict:
    """What a checkpoint records of its run (besides the metrics rows); a resumed run must
    have the same. ``client_threads`` is left out: it schedules the clients and changes no
    bit, so a run may resume with another value (and checkpoints from before the field fit)."""
    described = {k: v for k, v in config.to_dict().items() if k != "client_threads"}
    return {"config": described, "model": model.name, "num_clients": num_clients}


def resume_point(ckpt: str, config: FedAvgConfig, model: Model, num_clients: int, w0):
    """(d, w_{d+1}, run state, the d metrics rows) of checkpoint ``ckpt``, after checking
    that it was written by this run (config, model, K: ValueError otherwise) and that its
    arrays fit (``storage.check_resumable``; ``w0`` gives P and the dtype). The run state
    holds the server optimizer's arrays and the kept client states (``client<k>.<name>``).
    The Flower ServerApp resumes through this function too."""
    meta = checkpoint_meta(config, model, num_clients)
    done, params, state, saved = load_checkpoint(ckpt)
    if {k: saved.get(k) for k in meta} != json.loads(json.dumps(meta)):
        raise ValueError(f"{ckpt} was written by a different run (config, model or K differ)")
    like = {**init_server_state(config.server, w0, config.aggregator),
            **client_state_like(config.client_opt, w0, split_client_states(state)[1])}
    check_resumable(ckpt, done, params, state, saved, w0, like, config.rounds)
    return done, params, state, [RoundMetrics.from_dict(d) for d in saved["metrics"]]


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
