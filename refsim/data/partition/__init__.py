"""Partitioners: pure functions ``(labels or groups, ..., rng) -> list of K index arrays``.

Every partitioner returns one int64 array per client, holding dataset indices **sorted
ascending** (the canonical form, ``_common.py``), disjoint and covering every example exactly
once; none drops data. Randomness comes only from the ``rng`` argument, and each docstring lists
its rng calls in order so another NumPy implementation can replay them; refsim's FedAvg loop
passes ``refsim.backend.make_rng(seed, Purpose.PARTITION)``.

Reading order: ``iid.py`` (iid, quantity_skew), ``shards.py``, ``label_skew.py`` (dirichlet,
classes_per_client), ``groups.py`` (by_group). Papers, algorithms and the comparison with
Flower's partitioners: ``docs/data.md``.
"""

from refsim.data.partition.groups import by_group
from refsim.data.partition.iid import iid, quantity_skew
from refsim.data.partition.label_skew import classes_per_client, dirichlet
from refsim.data.partition.shards import Remainder, shards

__all__ = ["iid", "shards", "Remainder", "dirichlet", "classes_per_client", "quantity_skew",
           "by_group"]
