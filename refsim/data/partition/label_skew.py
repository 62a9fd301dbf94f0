"""Label-skew partitions: Dirichlet class proportions and a fixed number of classes per client.

``dirichlet``: Hsu, Qi & Brown, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification", arXiv:1909.06335 (2019), in the per-class form that most code
uses (Yurochkin et al., ICML 2019; NIID-Bench; Flower's ``DirichletPartitioner``): for each class
c, the proportions of class c held by the K clients are p_c ~ Dir_K(alpha).

``classes_per_client``: the "#C=k" quantity-based label imbalance of Li, Diao, Chen & He,
"Federated Learning on Non-IID Data Silos: An Experimental Study" (NIID-Bench), ICDE 2022
(arXiv:2102.02079), Section 4.1: each client holds exactly c distinct labels, and the examples
of a label are split evenly among the clients that hold it.
"""

from __future__ import annotations

import numpy as np

from refsim.data.partition._common import (as_labels, canonical, check_count,
                                           check_enough_examples, check_rng)

__all__ = ["dirichlet", "classes_per_client"]


def _dirichlet_attempt(y: np.ndarray, classes: np.ndarray, k: int, alpha: float,
                       rng: np.random.Generator, self_balancing: bool) -> list[np.ndarray]:
    """One draw of the per-class Dirichlet split (see :func:`dirichlet`, steps a-d)."""
    n = len(y)
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    sizes = np.zeros(k, dtype=np.int64)  # (K,)
    for c in classes:
        idx = np.flatnonzero(y == c)  # (n_c,) ascending
        idx = idx[rng.permutation(len(idx))]  # (a) shuffle class c
        p = rng.dirichlet(np.full(k, alpha))  # (b) (K,) proportions of class c
        if self_balancing:  # (NIID-Bench code) clients at or above N/K take no more
            masked = p * (sizes < n / k)  # (K,)
            p = masked / masked.sum() if masked.sum() > 0 else p
        cuts = (np.cumsum(p) * len(idx)).astype(np.int64)[:-1]  # (c) (K-1,) floor
        for client, piece in enumerate(np.split(idx, cuts)):  # (d)
            parts[client].append(piece)
            sizes[client] += len(piece)
    return [np.concatenate(p) if p else np.zeros(0, np.int64) for p in parts]


def dirichlet(labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator,
              min_size: int = 1, max_draws: int = 100,
              self_balancing: bool = False) -> list[np.ndarray]:
    """Per-class proportions over clients ~ Dir(alpha), redrawn until every client is big enough.

    Algorithm. Repeat, at most ``max_draws`` times (the rng continues between attempts):
    for each class c in ascending order of value,

    (a) ``idx = flatnonzero(labels == c)[rng.permutation(n_c)]``
    (b) ``p = rng.dirichlet(np.full(K, alpha))``
    (c) ``cuts = (cumsum(p) * n_c).astype(int)[:-1]``  (floor; the last client takes the rest)
    (d) client k appends ``np.split(idx, cuts)[k]``.

    Accept the attempt when every client has >= ``min_size`` examples; otherwise draw again.
    After ``max_draws`` failed attempts raise ValueError (with the best smallest size seen).

    Parameters
    ----------
    labels : ndarray, shape (N,) of integers
    num_clients : int   K
    alpha : float
        Concentration (> 0). Small alpha: each class lives on few clients; alpha -> inf: every
        client holds each class in proportion n_c / K.
    min_size : int   (>= 0; Flower's ``min_partition_size``, 10 by default there)
    max_draws : int   bounded redraws (Flower stops after 10)
    self_balancing : bool
        Off by default (the paper has no such step). On: before step (c), clients holding at
        least N/K examples get proportion 0 and p is renormalised (NIID-Bench's code; Flower's
        ``self_balancing=True`` uses ``>`` instead of ``>=``). If every client with p > 0 is full,
        p is used unmasked.

    Returns
    -------
    list of K int64 arrays (sorted); covers all N indices exactly once.

    Differences from Flower's ``DirichletPartitioner``: Flower allows a vector alpha, warns and
    redraws at most 10 times, and shuffles each client's indices at the end.
    """
    y = as_labels(labels)
    k = check_count("num_clients", num_clients)
    m = check_count("min_size", min_size, minimum=0)
    draws = check_count("max_draws", max_draws)
    if not (np.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be finite and > 0, got {alpha}")
    if k * m > len(y):
        raise ValueError(f"num_clients * min_size = {k * m} > {len(y)} examples: "
                         "min_size can never be met")
    rng = check_rng(rng)
    classes = np.unique(y)  # (L,)
    best = -1
    for _ in range(draws):
        parts = _dirichlet_attempt(y, classes, k, float(alpha), rng, self_balancing)
        smallest = min(len(p) for p in parts)
        if smallest >= m:
            return canonical(parts)
        best = max(best, smallest)
    raise ValueError(f"dirichlet: no draw gave every client >= min_size={m} examples in "
                     f"{draws} draws (best smallest client: {best}); raise alpha, lower "
                     "min_size or num_clients, or allow more draws")


def classes_per_client(labels: np.ndarray, num_clients: int, num_classes: int,
                       rng: np.random.Generator) -> list[np.ndarray]:
    """Each client holds exactly ``num_classes`` distinct labels (NIID-Bench "#C=k").

    Algorithm (L = the distinct label values, ascending; c = ``num_classes``):

    1. for client i = 0..K-1: its first label is ``L[i % len(L)]``; the other c - 1 are
       ``rng.choice(others, size=c-1, replace=False)`` where ``others`` is L without that label
       (one rng call per client, in client order).
    2. for each label l in ascending order: ``idx = flatnonzero(labels == l)``,
       ``idx = idx[rng.permutation(len(idx))]``, then ``np.array_split(idx, h_l)`` over the h_l
       clients holding l, in ascending client order.

    Raises ValueError when a label would be held by no client (its examples would be dropped;
    NIID-Bench drops them) or by more clients than it has examples (some client would then hold
    fewer than c labels). With K >= len(L), step 1 gives every label to at least one client.

    Deviation: NIID-Bench picks the extra labels by rejection sampling with Python's ``random``;
    ``rng.choice(..., replace=False)`` draws from the same distribution (uniform subsets).

    Returns
    -------
    list of K int64 arrays (sorted); covers all N indices exactly once.
    """
    y = as_labels(labels)
    k = check_count("num_clients", num_clients)
    c = check_count("num_classes", num_classes)
    check_enough_examples(len(y), k)
    rng = check_rng(rng)
    classes = np.unique(y)  # (L,)
    if c > len(classes):
        raise ValueError(f"num_classes={c} > {len(classes)} distinct labels in the data")
    holds = np.zeros((k, len(classes)), dtype=bool)  # (K, L) client i holds label j
    for i in range(k):
        first = i % len(classes)
        others = np.delete(np.arange(len(classes)), first)  # (L-1,)
        holds[i, first] = True
        holds[i, rng.choice(others, size=c - 1, replace=False)] = True
    holders = holds.sum(axis=0)  # (L,)
    counts = np.array([np.count_nonzero(y == v) for v in classes])  # (L,)
    if (holders == 0).any():
        raise ValueError(f"labels {classes[holders == 0].tolist()} are held by no client "
                         f"(num_clients={k}, num_classes={c}); their examples would be dropped")
    short = holders > counts
    if short.any():
        j = int(np.flatnonzero(short)[0])
        raise ValueError(f"label {classes[j]} has {counts[j]} examples but {holders[j]} "
                         "clients hold it: some client would get none of it")
    parts: list[list[np.ndarray]] = [[] for _ in range(k)]
    for j, v in enumerate(classes):
        idx = np.flatnonzero(y == v)  # (n_l,)
        idx = idx[rng.permutation(len(idx))]
        owners = np.flatnonzero(holds[:, j])  # (h_l,) ascending client ids
        for client, piece in zip(owners, np.array_split(idx, len(owners))):
            parts[client].append(piece)
    return canonical([np.concatenate(p) for p in parts])
