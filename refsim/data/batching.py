"""A client's minibatches for E local epochs, replayable from (seed, round, client, epoch).

FedAvg's ClientUpdate (McMahan et al., AISTATS 2017, arXiv:1602.05629, Algorithm 1):
"B <- split P_k into batches of size B; for each local epoch i from 1 to E: for batch b in B".
The paper's B = infinity (the whole client dataset as one batch) is ``batch_size=None`` here.

The order rule (refsim's rng rule, ``refsim.backend.make_rng``): in epoch e (0-based) of round r,
client k visits its examples in the order

    perm_e = make_rng(seed, Purpose.BATCH_ORDER, r, k, e).permutation(n_k)
           = numpy.random.default_rng([seed, 3, r, k, e]).permutation(n_k)
    order_e = indices[perm_e]

and its batches are consecutive slices ``order_e[i*B:(i+1)*B]``. The last, partial batch is
kept (like PyTorch's ``DataLoader(drop_last=False)`` default and TFF's ``Dataset.batch``), so an
epoch has ceil(n_k / B) batches. With ``batch_size=None`` the permutation is still drawn (a
whole-batch gradient does not depend on it, but the examples arrive in the same order as in the
minibatch case). ``batch_order`` returns every ``order_e`` so another implementation can replay
the exact sequence (e.g. ``np.savez(path, order=batch_order(...))`` or ``.tolist()`` for JSON).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from refsim.backend import Purpose, make_rng

__all__ = ["batch_order", "batch_slices", "client_batches", "num_batches"]


def _as_indices(indices: np.ndarray | int) -> np.ndarray:
    if isinstance(indices, (int, np.integer)) and not isinstance(indices, bool):
        if indices < 1:
            raise ValueError(f"a client needs at least one example, got {indices}")
        return np.arange(int(indices), dtype=np.int64)
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise TypeError("indices must be an int or a 1-D integer array, "
                        f"got {idx.dtype} {idx.shape}")
    if idx.size == 0:
        raise ValueError("a client needs at least one example, got an empty index array")
    return idx.astype(np.int64)


def _check_batch_size(batch_size: int | None) -> None:
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None (whole client), got {batch_size}")


def batch_order(indices: np.ndarray | int, epochs: int, seed: int, round: int,
                client: int) -> np.ndarray:
    """The order in which a client visits its examples, epoch by epoch.

    Parameters
    ----------
    indices : ndarray, shape (n,) of dataset indices, or an int n (then positions 0..n-1)
    epochs : int   E >= 1
    seed, round, client : int   the keys of the rng rule (each in [0, 2**32))

    Returns
    -------
    ndarray, shape (E, n) int64
        Row e is ``indices[make_rng(seed, Purpose.BATCH_ORDER, round, client, e).permutation(n)]``.

    >>> batch_order(4, epochs=1, seed=0, round=0, client=0).tolist() == [
    ...     np.random.default_rng([0, 3, 0, 0, 0]).permutation(4).tolist()]
    True
    """
    idx = _as_indices(indices)
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    rows = [idx[make_rng(seed, Purpose.BATCH_ORDER, round, client, e).permutation(len(idx))]
            for e in range(int(epochs))]
    return np.stack(rows)  # (E, n)


def num_batches(num_examples: int, batch_size: int | None) -> int:
    """Batches per epoch: ceil(n / B), or 1 when ``batch_size`` is None."""
    _check_batch_size(batch_size)
    return 1 if batch_size is None else -(-int(num_examples) // int(batch_size))


def client_batches(indices: np.ndarray | int, batch_size: int | None, epochs: int, seed: int,
                   round: int, client: int) -> Iterator[np.ndarray]:
    """Yield the dataset indices of each minibatch, for E epochs (see the module docstring).

    Yields
    ------
    ndarray, shape (b,) int64
        b = ``batch_size`` except the last batch of an epoch, which holds the n mod B left over
        (kept, not dropped); with ``batch_size=None`` one batch of all n per epoch.

    >>> [b.tolist() for b in client_batches(np.array([10, 11, 12]), 2, 1, 0, 0, 0)]
    [[11, 10], [12]]
    """
    order = batch_order(indices, epochs, seed, round, client)  # (E, n)
    slices = batch_slices(order.shape[1], batch_size)
    for row in order:
        for start, stop in slices:
            yield row[start:stop]


def batch_slices(num_examples: int, batch_size: int | None) -> list[tuple[int, int]]:
    """The (start, stop) of each batch within one epoch's order: consecutive slices of
    ``batch_size``, the last one partial; one slice of all n when ``batch_size`` is None.

    >>> batch_slices(5, 2), batch_slices(5, None)
    ([(0, 2), (2, 4), (4, 5)], [(0, 5)])
    """
    _check_batch_size(batch_size)
    n = int(num_examples)
    step = n if batch_size is None else int(batch_size)
    return [(start, min(start + step, n)) for start in range(0, n, step)]
