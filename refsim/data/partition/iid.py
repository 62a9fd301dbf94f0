"""Label-independent partitions: IID equal split (FedAvg) and log-normal quantity skew.

``iid`` is the IID MNIST split of McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017 (arXiv:1602.05629), Section 3: "the data is
shuffled, and then partitioned into 100 clients each receiving 600 examples".

``quantity_skew`` keeps labels IID but draws unequal client sizes, as the "quantity skew"
setting of Li, Diao, Chen & He, "Federated Learning on Non-IID Data Silos: An Experimental
Study" (NIID-Bench), ICDE 2022 (arXiv:2102.02079), Section 4.2. Deviation: NIID-Bench draws the
size proportions from Dir(beta); here they are log-normal (the size model of LEAF and of
FedProx's synthetic data), with sigma controlling the spread.
"""

from __future__ import annotations

import numpy as np

from refsim.data.partition._common import (as_labels, canonical, check_count,
                                           check_enough_examples, check_rng)

__all__ = ["iid", "quantity_skew"]


def iid(labels: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle all N examples, then cut the shuffled order into K contiguous equal blocks.

    Parameters
    ----------
    labels : ndarray, shape (N,)
        Only its length is used (labels play no role in an IID split).
    num_clients : int
        K, with 1 <= K <= N.
    rng : numpy.random.Generator
        Exactly one draw: ``perm = rng.permutation(N)``.

    Returns
    -------
    list of K int64 arrays (each sorted ascending)
        Client k gets ``perm[start_k:end_k]`` with the blocks of ``np.array_split``: the first
        ``N mod K`` clients get ``N // K + 1`` examples, the rest ``N // K``. Nothing is dropped.

    Equivalent to Flower's ``IidPartitioner`` (contiguous ``Dataset.shard``) applied to the
    dataset reordered by ``perm``.

    >>> [p.tolist() for p in iid(np.zeros(7, int), 3, np.random.default_rng(0))]
    [[2, 3, 4], [5, 6], [0, 1]]
    """
    n = len(as_labels(labels))
    k = check_count("num_clients", num_clients)
    check_enough_examples(n, k)
    perm = check_rng(rng).permutation(n)  # (N,)
    return canonical(np.array_split(perm, k))


def _largest_remainder_sizes(weights: np.ndarray, total: int, minimum: int) -> np.ndarray:
    """Integer sizes >= minimum summing to ``total``, proportional to ``weights`` (K,).

    Each client first gets ``minimum``; the other ``total - K*minimum`` examples are shared by
    the largest-remainder (Hamilton) method: ``floor(share)`` each, then one more to the clients
    with the largest fractional parts (ties to the lower client index).
    """
    spare = total - minimum * len(weights)
    share = spare * weights / weights.sum()  # (K,)
    sizes = np.floor(share).astype(np.int64)  # (K,)
    leftover = spare - int(sizes.sum())
    order = np.argsort(-(share - sizes), kind="stable")  # (K,) largest fraction first
    sizes[order[:leftover]] += 1
    return sizes + minimum


def quantity_skew(labels: np.ndarray, num_clients: int, rng: np.random.Generator,
                  sigma: float = 1.0, min_size: int = 1) -> list[np.ndarray]:
    """IID labels, log-normal client sizes.

    Algorithm (the rng draws, in this order):

    1. ``perm = rng.permutation(N)``
    2. ``w = rng.lognormal(mean=0.0, sigma=sigma, size=K)``
    3. sizes: every client gets ``min_size``; the remaining ``N - K*min_size`` examples are
       shared in proportion to ``w`` by the largest-remainder method (ties to the lower index).
    4. client k gets the k-th contiguous block of ``perm`` of length ``sizes[k]``.

    Parameters
    ----------
    labels : ndarray, shape (N,)   (only its length is used)
    num_clients : int   K
    sigma : float
        Standard deviation of log w; 0 gives equal sizes (up to one example).
    min_size : int
        Smallest client (>= 1); ValueError if ``K * min_size > N``.

    Returns
    -------
    list of K int64 arrays (sorted), sizes summing to N (nothing dropped).
    """
    n = len(as_labels(labels))
    k = check_count("num_clients", num_clients)
    m = check_count("min_size", min_size)
    if not (np.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be finite and >= 0, got {sigma}")
    if k * m > n:
        raise ValueError(f"num_clients * min_size = {k} * {m} = {k * m} > {n} examples")
    rng = check_rng(rng)
    perm = rng.permutation(n)  # (N,)
    w = rng.lognormal(mean=0.0, sigma=sigma, size=k)  # (K,)
    sizes = _largest_remainder_sizes(w, n, m)  # (K,)
    return canonical(np.split(perm, np.cumsum(sizes)[:-1]))
