"""The server side of FederatedAveraging: the weighted mean of the updates and the server step.

McMahan et al., AISTATS 2017, arXiv:1602.05629, Algorithm 1, server loop:

    w_{t+1} <- sum_{k in S_t} (n_k / n) w^k_{t+1},   n = sum_{k in S_t} n_k

Written with updates delta_k = w^k_{t+1} - w_t this is w_{t+1} = w_t + sum(n_k delta_k) / n,
i.e. a server SGD step with learning rate 1 on the pseudo-gradient g = -mean delta
(Reddi et al., "Adaptive Federated Optimization", ICLR 2021, arXiv:2003.00295, Algorithm 1).
``server_update`` generalises the step to ``w <- w - server_opt(g)`` with Flower's formulas
(below) or TFF's (``server_tff.py``, ``ServerSemantics.TFF``); ``aggregate_round`` is the whole
server side of a round (decode, NaN policy, weighted mean or TFF's robust aggregator
(``robust.py``), server step, the round's training metrics and bits).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from refsim.backend import get_xp
from refsim.fedavg.client import ClientReport, NonFiniteUpdateError
from refsim.fedavg.config import (FedAvgConfig, NanPolicy, ServerOpt, ServerOptConfig,
                                  ServerSemantics, Weighting)
from refsim.fedavg.robust import RobustAggregator, init_robust_state, robust_mean
from refsim.fedavg.server_tff import init_tff_server_state, tff_server_update
from refsim.fedavg.transport import decode_tensors, tff_uplink_bits
from refsim.nn import Model

__all__ = ["weighted_average", "init_server_state", "server_update", "aggregate_round"]


def weighted_average(updates: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """sum(n_k * x_k) / sum(n_k), accumulated in float64 in list order, cast to the updates' dtype.

    Parameters
    ----------
    updates : sequence of ndarray, each shape (P,), one dtype
    weights : sequence of non-negative numbers n_k, one per update

    Returns
    -------
    ndarray, shape (P,), dtype of the updates

    Raises ValueError when the lists are empty or differ in length, a weight is negative or
    not finite, or sum(n_k) == 0 (no silent 0/0: a round where nobody reported is an error).
    The sum is formed in float64 one client at a time, in the order given (the loop passes
    clients in ascending id), then divided once, then cast; another implementation that sums
    in float64 in the same order gets the same bits.

    >>> weighted_average([np.array([1.0, 0.0]), np.array([4.0, 3.0])], [1, 2])
    array([3., 2.])
    """
    if len(updates) == 0 or len(updates) != len(weights):
        raise ValueError(f"weighted_average needs one weight per update and at least one update, "
                         f"got {len(updates)} updates and {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)  # (M,)
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"weights must be finite and >= 0, got {w.tolist()}")
    total_weight = float(w.sum())
    if total_weight == 0.0:
        raise ValueError("weighted_average: the total weight sum(n_k) is 0")
    dtype = updates[0].dtype
    xp = get_xp(updates[0])
    total = xp.zeros(updates[0].shape, dtype=np.float64)  # (P,)
    for n_k, x_k in zip(w, updates):
        if x_k.shape != total.shape or x_k.dtype != dtype:
            raise ValueError(f"updates differ in shape or dtype: {x_k.shape} {x_k.dtype} vs "
                             f"{total.shape} {dtype}")
        total += n_k * x_k.astype(np.float64)  # (P,)
    return (total / total_weight).astype(dtype)  # (P,)


def init_server_state(opt: ServerOptConfig, params: np.ndarray,
                      aggregator: RobustAggregator | None = None) -> dict[str, np.ndarray]:
    """The server state before round 1: the optimizer's, plus the robust aggregator's estimates
    (``robust.init_robust_state``, keys ``robust_*``) when ``aggregator`` is given.

    Flower semantics: {} for SGD, {"v": 0} for momentum, {"m": 0, "v": 0} (each (P,), dtype of
    params) for ADAM / YOGI / ADAGRAD. Zero moments are Flower's choice; Reddi et al.
    (Algorithm 2) allow v_{-1} >= tau^2. TFF semantics: ``server_tff.init_tff_server_state``.
    """
    state = {} if aggregator is None else init_robust_state(aggregator)
    if opt.semantics is ServerSemantics.TFF:
        return {**init_tff_server_state(opt, params), **state}
    if opt.kind is ServerOpt.MOMENTUM:
        return {"v": np.zeros_like(params), **state}
    if opt.kind in (ServerOpt.ADAM, ServerOpt.YOGI, ServerOpt.ADAGRAD):
        return {"m": np.zeros_like(params), "v": np.zeros_like(params), **state}
    return state


def server_update(params: np.ndarray, mean_delta: np.ndarray, state: dict[str, np.ndarray],
                  opt: ServerOptConfig, round_: int = 1
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One server step on the pseudo-gradient g = -mean_delta: returns (w_{t+1}, new state).

    SGD:       w <- w - lr * g            (lr = 1 gives w + mean_delta: FedAvg exactly)
    MOMENTUM:  v <- momentum * v + g;  w <- w - lr * v   (Flower ``FedAvgM``; TFF's
               ``build_sgdm(learning_rate, momentum)`` server optimizer gives the same iterates
               for a constant learning rate)

    Adaptive (Reddi et al. 2021, Algorithm 2), with Delta = mean_delta = -g and t = ``round_``:
        m <- beta1 * m + (1 - beta1) * Delta
        ADAM:     v <- beta2 * v + (1 - beta2) * Delta^2
        YOGI:     v <- v - (1 - beta2) * Delta^2 * sign(v - Delta^2)
        ADAGRAD:  v <- v + Delta^2
        w <- w + eta_t * m / (sqrt(v) + tau)
    with eta_t = lr, except ADAM with ``bias_correction``: eta_t = lr * sqrt(1 - beta2^(t+1)) /
    (1 - beta1^(t+1)), exactly Flower's ``FedAdam`` (its exponent is server_round + 1, one more
    than Kingma & Ba's, with server_round starting at 1). These are the formulas of Flower's
    ``FedAdam`` / ``FedYogi`` / ``FedAdagrad``. With ``opt.semantics`` TFF the step is TFF's
    (``server_tff.tff_server_update``, t = ``round_``).

    Arithmetic is in the dtype of params (scalars cast to it); inputs are not modified.
    """
    if opt.semantics is ServerSemantics.TFF:
        return tff_server_update(params, mean_delta, state, opt, round_)
    dt = params.dtype.type
    xp = get_xp(params)
    g = -mean_delta  # (P,)
    if opt.kind is ServerOpt.SGD:
        return params - dt(opt.lr) * g, {}
    if opt.kind is ServerOpt.MOMENTUM:
        v = dt(opt.momentum) * state["v"] + g  # (P,)
        return params - dt(opt.lr) * v, {"v": v}
    d = mean_delta  # (P,) Reddi et al.'s Delta_t
    b1, b2 = dt(opt.beta1), dt(opt.beta2)
    m = b1 * state["m"] + (dt(1) - b1) * d  # (P,)
    d2 = d * d  # (P,)
    if opt.kind is ServerOpt.ADAM:
        v = b2 * state["v"] + (dt(1) - b2) * d2
    elif opt.kind is ServerOpt.YOGI:
        v = state["v"] - (dt(1) - b2) * d2 * xp.sign(state["v"] - d2)
    else:
        v = state["v"] + d2
    eta = opt.lr
    if opt.bias_correction:
        eta = opt.lr * np.sqrt(1 - opt.beta2 ** (round_ + 1.0)) / (1 - opt.beta1 ** (round_ + 1.0))
    return params + dt(eta) * m / (xp.sqrt(v) + dt(opt.tau)), {"m": m, "v": v}


def aggregate_round(params, state: dict, round_: int, reports: Sequence[ClientReport],
                    config: FedAvgConfig, model: Model):
    """The server side of round t, given the sampled clients' reports in ascending id order.

    1. A report without payload (its update had NaN/Inf): ``NanPolicy.RAISE`` raises
       :class:`NonFiniteUpdateError` naming round and client; ``DROP`` records the client in
       ``dropped`` and leaves it out of everything below but ``examples`` / ``batches``.
    2. Each payload is decoded (``transport.decode_tensors``; a corrupt one raises ValueError).
    3. mean = ``weighted_average`` with v_k = n_k (``Weighting.EXAMPLES``) or 1; with
       ``config.aggregator``, ``robust.robust_mean`` of the same (its estimates in ``state``).
    4. (w_{t+1}, state) = ``server_update(w_t, mean, state, config.server, t)``.

    Returns (w_{t+1}, state, facts) with facts: dropped, examples, batches (over all sampled
    clients), train_loss = sum loss_sum / sum num_seen and train_accuracy = sum num_correct /
    sum num_seen over the reporting clients (TFF's example-weighted training metrics),
    uplink_bits, tff_uplink_bits, uplink_entropy_bits, and the robust aggregator's zeroing_norm,
    clipping_norm, zeroed_clients, clipped_clients (None / () without one). With the
    aggregator's codec (TFF's compression aggregator) the uplink bits are those of the
    encoded w_k z_k.
    """
    xp = get_xp(params)
    deltas, weights, dropped, kept = [], [], [], []
    for r in reports:
        if r.payload is None:  # never averaged in silently
            if config.nan_policy is NanPolicy.RAISE:
                raise NonFiniteUpdateError(f"round {round_}: the update of client {r.client} "
                                           f"contains NaN or Inf (nan_policy=NanPolicy.DROP "
                                           f"drops it)")
            dropped.append(r.client)
            continue
        delta = decode_tensors(r.payload, model, config.dtype.np)  # (P,)
        deltas.append(xp.asarray(delta))
        weights.append(r.num_examples if config.weighting is Weighting.EXAMPLES else 1)
        kept.append(r)
    if not deltas:
        raise ValueError(f"round {round_}: every sampled client was dropped {dropped}; "
                         f"the total weight sum(n_k) is 0")
    agg, robust = config.aggregator, {}
    opt_state = {k: v for k, v in state.items() if not k.startswith("robust_")}
    if agg is None:
        mean_delta = weighted_average(deltas, weights)  # sum(n_k delta_k) / sum(n_k), (P,)
    else:
        mean_delta, robust, agg_facts = robust_mean(deltas, weights, state, agg, model,
                                                    config.seed, round_, [r.client for r in kept])
    params, opt_state = server_update(params, mean_delta, opt_state, config.server, round_)
    seen = sum(r.num_seen for r in kept)
    entropy = [r.entropy_bits for r in kept]
    facts = {
        "dropped": tuple(dropped),
        "examples": sum(r.num_examples for r in reports),
        "batches": sum(r.num_batches for r in reports),
        "train_loss": sum(r.loss_sum for r in kept) / seen,
        "train_accuracy": sum(r.num_correct for r in kept) / seen,
        "uplink_bits": sum(r.uplink_bits for r in kept),
        "tff_uplink_bits": tff_uplink_bits(config.codec, model, config.dtype.np, len(kept)),
        "uplink_entropy_bits": None if None in entropy else sum(entropy),
        "zeroing_norm": None, "clipping_norm": None, "zeroed_clients": (), "clipped_clients": (),
    }
    if agg is not None:
        ids = [r.client for r in kept]
        facts.update(zeroing_norm=agg_facts["zeroing_norm"],
                     clipping_norm=agg_facts["clipping_norm"],
                     zeroed_clients=tuple(ids[i] for i in agg_facts["zeroed"]),
                     clipped_clients=tuple(ids[i] for i in agg_facts["clipped"]))
        if agg.codec is not None:  # the compressed w_k z_k travel instead of the raw updates
            facts.update(uplink_bits=agg_facts["uplink_bits"],
                         uplink_entropy_bits=agg_facts["uplink_entropy_bits"],
                         tff_uplink_bits=tff_uplink_bits(agg.codec, model, config.dtype.np,
                                                         len(kept)))
    return params, {**opt_state, **robust}, facts
