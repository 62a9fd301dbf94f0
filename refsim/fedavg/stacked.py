"""ClientUpdate for several clients side by side (``FedAvgConfig.client_stack``).

Algorithm 1 of McMahan et al. (AISTATS 2017, arXiv:1602.05629) runs the sampled clients "in
parallel". refsim's reference path trains them one at a time (``client.client_update``). With
``client_stack = S > 1`` the sampled clients that hold the same number of examples n_k, taken
in ascending id order, are cut into groups of at most S, and each group takes its local SGD
steps together: step j of every client in the group is one pass of
``refsim.nn.stacked.stacked_loss_grad_and_logits`` over the clients' j-th minibatches, stacked.
Equal n_k means equal batch sizes at every step (E * ceil(n_k / B) steps each), so no client
waits or pads.

Each client's batch order, learning rate, SGD step, update and training metrics are those of
``client_update``; only the summation order inside the matrix products differs, so the two
paths agree to float rounding, not bit for bit (``tests/test_fedavg_stacked.py``). A run with a
given ``client_stack`` is repeatable bit for bit like any other. The point is speed on a GPU,
where a B = 10 step of one client is bound by kernel launches; memory grows with S * B.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np

from refsim.backend import get_xp, to_numpy
from refsim.data.batching import batch_order, batch_slices
from refsim.fedavg.client import ClientHParams, ClientResult, check_client_data, client_update
from refsim.fedavg.client_threads import in_order
from refsim.nn import sgd_step
from refsim.nn.stacked import stacked_loss_grad_and_logits

__all__ = ["client_groups", "stacked_client_update", "client_updates"]


def client_groups(sizes: Sequence[int], stack: int) -> list[list[int]]:
    """Positions 0..m-1 grouped for training: equal sizes together, ascending, at most
    ``stack`` per group; groups ordered by their first position.

    >>> client_groups([600, 300, 600, 600, 300], 2)
    [[0, 2], [1, 4], [3]]
    >>> client_groups([5, 5, 5], 1)
    [[0], [1], [2]]
    """
    by_size: dict[int, list[int]] = {}
    for pos, n in enumerate(sizes):
        by_size.setdefault(int(n), []).append(pos)
    groups = [same[i:i + stack] for same in by_size.values() for i in range(0, len(same), stack)]
    return sorted(groups, key=lambda g: g[0])


def stacked_client_update(params, x, y, parts: Sequence[np.ndarray], hparams: ClientHParams,
                          seed: int, round_: int, clients: Sequence[int]) -> list[ClientResult]:
    """ClientUpdate(k, w) for the clients ``clients`` (ids, keys of their batch orders), whose
    index arrays ``parts`` all have the same length, trained side by side. Returns their
    :class:`ClientResult` in the order given; arguments as in ``client.client_update``."""
    xp = get_xp(params)
    n = len(parts[0])
    if any(len(p) != n for p in parts):
        raise ValueError(f"clients trained side by side need equal n_k, got "
                         f"{[len(p) for p in parts]}")
    for p in parts:
        check_client_data(hparams.model, x, y, p)
    M = len(parts)
    W = xp.tile(params, (M, 1))  # (M, P): every client starts from the broadcast weights
    orders = xp.asarray(np.stack([batch_order(p, hparams.epochs, seed, round_, int(k))
                                  for p, k in zip(parts, clients)]))  # (M, E, n), copied once
    loss_sum = xp.zeros(M, dtype=np.float64)  # (M,) as client_update, per client
    correct = xp.zeros(M, dtype=np.int64)  # (M,)
    steps = seen = 0
    for e in range(hparams.epochs):  # step j of every client; equal n_k: equal batch sizes
        for start, stop in batch_slices(n, hparams.batch_size):
            rows = orders[:, e, start:stop]  # (M, b)
            yb = y[rows]  # (M, b)
            losses, G, logits = stacked_loss_grad_and_logits(hparams.model, W, x[rows], yb)
            W = sgd_step(W, G, hparams.lr)  # (M, P): w_i <- w_i - lr * g_i, row by row
            loss_sum += (stop - start) * losses
            correct += (logits.argmax(axis=2) == yb).sum(axis=1)
            seen += stop - start
            steps += 1
    deltas = W - params  # (M, P)
    loss_sum, correct = to_numpy(loss_sum), to_numpy(correct)
    return [ClientResult(deltas[i], n, steps, float(loss_sum[i]), int(correct[i]), seen)
            for i in range(M)]


def client_updates(params, x, y, parts: Sequence[np.ndarray], hparams: ClientHParams, seed: int,
                   round_: int, clients: Sequence[int], stack: int = 1,
                   opt_states: Sequence[dict | None] | None = None, threads: int = 1):
    """Yield (position, ClientResult) for every client, trained one at a time (``stack`` 1, the
    reference path, in ascending position) or in the groups of :func:`client_groups`; with
    ``threads`` > 1 up to that many clients (or groups) train at once on threads
    (``refsim.fedavg.client_threads``: the same results, bit for bit).
    ``opt_states[i]`` is client i's optimizer state to start from (None: a fresh one); side by
    side, clients train with plain SGD only (``FedAvgConfig`` refuses the rest)."""
    def train(group: list[int]) -> list[tuple[int, ClientResult]]:
        if len(group) == 1:
            i = group[0]
            return [(i, client_update(params, x, y, parts[i], hparams, seed, round_,
                                      int(clients[i]),
                                      None if opt_states is None else opt_states[i]))]
        return list(zip(group, stacked_client_update(params, x, y, [parts[i] for i in group],
                                                     hparams, seed, round_,
                                                     [clients[i] for i in group])))

    tasks = [partial(train, g) for g in client_groups([len(p) for p in parts], stack)]
    for results in in_order(tasks, threads):  # the groups in order, whatever the threads
        yield from results
