"""The pathological non-IID "shards" split of the FedAvg paper.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017 (arXiv:1602.05629), Section 3: "we sort the data by digit label, divide it into
200 shards of size 300, and assign each of 100 clients 2 shards. This is a pathological non-IID
partition of the data, as most clients will only have examples of two digits."

Paper gaps filled here, each stated where it is decided: the sort is NumPy's *stable* sort
(ties keep dataset order, so the shards are a pure function of the labels); shards are dealt
by one ``rng.permutation``; a remainder (N not a multiple of the shard size) is never dropped
silently (see :class:`Remainder`).
"""

from __future__ import annotations

import enum

import numpy as np

from refsim.data.partition._common import (as_labels, canonical, check_count,
                                           check_enough_examples, check_rng)

__all__ = ["Remainder", "shards"]


class Remainder(enum.Enum):
    """What ``shards`` does with the ``N - num_shards * shard_size`` examples left over.

    RAISE          ValueError (the default): the caller chooses sizes that divide N.
    TO_LAST_SHARD  the leftover examples (the last ones in label-sorted order, so the highest
                   labels) are appended to the last shard, which is therefore larger; its
                   client gets ``shard_size + remainder`` more examples than a full shard.
    """

    RAISE = "raise"
    TO_LAST_SHARD = "to_last_shard"


def shards(labels: np.ndarray, num_clients: int, shards_per_client: int,
           rng: np.random.Generator, shard_size: int | None = None,
           remainder: Remainder = Remainder.RAISE) -> list[np.ndarray]:
    """Sort by label, cut into equal shards, deal ``shards_per_client`` random shards per client.

    Algorithm (S = num_clients * shards_per_client shards of size z):

    1. ``order = np.argsort(labels, kind="stable")``   (N,) label-sorted dataset indices
    2. z = ``shard_size``, or ``N // S`` when None; shard j = ``order[j*z:(j+1)*z]``
       (and, with ``Remainder.TO_LAST_SHARD``, shard S-1 also takes ``order[S*z:]``)
    3. ``deal = rng.permutation(S)`` (the only rng draw); client k gets shards
       ``deal[k*shards_per_client:(k+1)*shards_per_client]``.

    Parameters
    ----------
    labels : ndarray, shape (N,) of integers
    num_clients : int   K
    shards_per_client : int   (paper: 2)
    rng : numpy.random.Generator
    shard_size : int or None   (paper: 300; None means N // S)
    remainder : Remainder
        Used when ``S * shard_size < N``; ``S * shard_size > N`` is always a ValueError.

    Returns
    -------
    list of K int64 arrays (sorted); covers all N indices exactly once.

    With N = 60000, K = 100, shards_per_client = 2: 200 shards of 300, clients of 600.

    Compared with Flower's ``ShardPartitioner(num_partitions=K, num_shards_per_node=s)``: Flower
    sorts a dataset that ``FederatedDataset`` has shuffled first (so ties are in shuffled order),
    deals shards with ``rng.permutation`` as here, by default *drops* the leftover
    ``N - S*z`` examples (``keep_incomplete_shard=False``), and shuffles each client's indices.

    >>> y = np.array([1, 0, 1, 0, 2, 2, 0, 1])
    >>> [p.tolist() for p in shards(y, 2, 2, np.random.default_rng(0))]
    [[1, 2, 3, 7], [0, 4, 5, 6]]
    """
    y = as_labels(labels)
    n = len(y)
    k = check_count("num_clients", num_clients)
    s = check_count("shards_per_client", shards_per_client)
    if not isinstance(remainder, Remainder):
        raise TypeError(f"remainder must be a Remainder, got {remainder!r}")
    num_shards = k * s
    check_enough_examples(n, num_shards)  # every shard non-empty, so no client is empty
    z = n // num_shards if shard_size is None else check_count("shard_size", shard_size)
    used = num_shards * z
    if used > n:
        raise ValueError(f"{num_shards} shards of {z} need {used} examples, only {n} given")
    if used < n and remainder is Remainder.RAISE:
        raise ValueError(
            f"{n} examples do not fill {num_shards} shards of {z}: {n - used} would be left "
            "over; choose sizes that divide N or pass remainder=Remainder.TO_LAST_SHARD")
    order = np.argsort(y, kind="stable")  # (N,)
    starts = np.arange(num_shards) * z  # (S,)
    ends = starts + z  # (S,)
    ends[-1] = n  # the last shard takes the remainder (empty when used == n)
    deal = check_rng(rng).permutation(num_shards)  # (S,)
    parts = []
    for client in range(k):
        mine = deal[client * s:(client + 1) * s]  # (s,) this client's shard ids
        parts.append(np.concatenate([order[starts[j]:ends[j]] for j in mine]))
    return canonical(parts)
