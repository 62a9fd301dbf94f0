"""Golden vectors of the data side: every partitioner, and a client's batch order.

* ``partitions.npz``: each partitioner of ``refsim.data.partition`` applied to one fixed label
  vector of N = 60 examples over 5 classes of unequal size (and, for ``by_group``, a fixed
  writer-id vector), K = 6 clients, each call with a fresh generator
  ``make_rng(PARTITION_SEED, Purpose.PARTITION)`` = ``numpy.random.default_rng([7, 1])``.
  A partition is stored in compressed-row form: client k holds
  ``indices[offsets[k]:offsets[k+1]]`` (sorted ascending, the canonical form).
* ``batch_order.npz``: ``refsim.data.batch_order`` for three (seed, round, client) keys and
  E = 3 epochs: row e of ``order`` is ``indices[default_rng([seed, 3, round, client,
  e]).permutation(n)]`` (``docs/determinism.md``); batches are consecutive slices of it.

Both are exact outputs of NumPy's ``SeedSequence``/``PCG64`` and ``Generator`` methods; an
implementation without them checks the deterministic steps by replaying these index arrays.
"""

from __future__ import annotations

import numpy as np

from refsim.backend import Purpose, make_rng
from refsim.data import batch_order
from refsim.data.partition import (Remainder, by_group, classes_per_client, dirichlet, iid,
                                   quantity_skew, shards)
from refsim.validation.golden_inputs import fixed_integers

__all__ = ["partition_vectors", "batch_order_vectors", "PARTITION_SEED"]

PARTITION_SEED = 7
NUM_CLIENTS = 6
NUM_EXAMPLES = 60
# case -> (seed, round, client, indices of the client's examples); E = BATCH_EPOCHS
BATCH_CASES = {
    "case0": (0, 1, 0, np.arange(10, dtype=np.int64)),
    "case1": (12345, 7, 42, np.flatnonzero(fixed_integers(1201, (40,), 0, 3) == 0)),
    "case2": (2**32 - 1, 3, 5, np.arange(25, dtype=np.int64) * 3 + 1),
}
BATCH_EPOCHS = 3


def _csr(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(indices (N,), offsets (K+1,)): client k is indices[offsets[k]:offsets[k+1]]."""
    offsets = np.cumsum([0] + [len(p) for p in parts]).astype(np.int64)  # (K+1,)
    return np.concatenate(parts).astype(np.int64), offsets


def partition_vectors() -> dict[str, np.ndarray]:
    """labels (60,), groups (60,), seed, num_clients, and per partitioner p: p.indices (60,),
    p.offsets (7,)."""
    labels = fixed_integers(1101, (NUM_EXAMPLES,), 0, 5)  # (N,) 5 classes, unequal counts
    groups = fixed_integers(1102, (NUM_EXAMPLES,), 0, 7) * 3 + 10  # (N,) writer ids 10..28
    k = NUM_CLIENTS

    def rng() -> np.random.Generator:  # a fresh PARTITION stream for each call
        return make_rng(PARTITION_SEED, Purpose.PARTITION)

    cases = {
        "iid": iid(labels, k, rng()),
        "shards": shards(labels, k, 2, rng()),  # 12 shards of 5
        "shards_remainder": shards(labels, k, 2, rng(), shard_size=4,
                                   remainder=Remainder.TO_LAST_SHARD),  # 12 of 4, +12 to the last
        "dirichlet": dirichlet(labels, k, 0.5, rng(), min_size=2),
        "dirichlet_self_balancing": dirichlet(labels, k, 0.5, rng(), min_size=2,
                                              self_balancing=True),
        "classes_per_client": classes_per_client(labels, k, 2, rng()),
        "quantity_skew": quantity_skew(labels, k, rng(), sigma=1.0, min_size=2),
        "by_group": by_group(groups),  # 7 clients, one per writer id, ascending
    }
    out = {"labels": labels, "groups": groups, "seed": np.int64(PARTITION_SEED),
           "num_clients": np.int64(k)}
    for name, parts in cases.items():
        out[f"{name}.indices"], out[f"{name}.offsets"] = _csr(parts)
    return out


def batch_order_vectors() -> dict[str, np.ndarray]:
    """epochs, and per case c: c.seed, c.round, c.client, c.indices (n,), c.order (3, n)."""
    out = {"epochs": np.int64(BATCH_EPOCHS)}
    for case, (seed, round_, client, indices) in BATCH_CASES.items():
        out.update({f"{case}.seed": np.int64(seed), f"{case}.round": np.int64(round_),
                    f"{case}.client": np.int64(client), f"{case}.indices": indices,
                    f"{case}.order": batch_order(indices, BATCH_EPOCHS, seed, round_, client)})
    return out
