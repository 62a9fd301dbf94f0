"""Natural partitions: one client per writer (or any other group id).

This is the federated setting of LEAF (Caldas et al., "LEAF: A Benchmark for Federated
Settings", arXiv:1812.01097), where FEMNIST is split by the writer of each character, and of
TFF's ``emnist.load_data``. For MNIST the writer of each digit is known from QMNIST (Yadav &
Bottou, NeurIPS 2019, arXiv:1905.10498): ``refsim.data.load_mnist().groups_train``.
"""

from __future__ import annotations

import numpy as np

from refsim.data.partition._common import as_labels, canonical

__all__ = ["by_group"]


def by_group(groups: np.ndarray) -> list[np.ndarray]:
    """One client per distinct group id; deterministic (no rng).

    Parameters
    ----------
    groups : ndarray, shape (N,) of integers
        The group (writer) of each example.

    Returns
    -------
    list of G int64 arrays (sorted)
        Client g holds the examples whose group is ``np.unique(groups)[g]``: clients are in
        ascending group-id order, and every example belongs to exactly one client.

    >>> [p.tolist() for p in by_group(np.array([7, 3, 7, 3, 5]))]
    [[1, 3], [4], [0, 2]]
    """
    g = as_labels(groups, "groups")
    if g.size == 0:
        raise ValueError("groups is empty: there are no examples to partition")
    ids, inverse = np.unique(g, return_inverse=True)  # (G,), (N,)
    order = np.argsort(inverse, kind="stable")  # (N,) examples grouped, ascending within
    bounds = np.cumsum(np.bincount(inverse, minlength=len(ids)))[:-1]  # (G-1,)
    return canonical(np.split(order, bounds))
