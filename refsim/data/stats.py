"""Statistics of a partition: client sizes, the client-by-label count matrix, label distances.

Distances between a client's label distribution p_k and the global one q (both over the L
distinct labels, in ascending label order):

* ``emd``: the 1-D earth mover's (Wasserstein-1) distance with the labels placed on a line at
  unit spacing, ``sum_{j<L-1} |P_k(j) - Q(j)|`` where P, Q are the cumulative sums. This equals
  ``scipy.stats.wasserstein_distance(range(L), range(L), p_k, q)``. It depends on the label
  order, which is arbitrary for classes.
* ``l1``: ``sum_j |p_k(j) - q(j)|``, the quantity that Zhao et al., "Federated Learning with
  Non-IID Data" (arXiv:1806.00582, 2018), Section 3, call EMD. It ignores the label order
  (it is twice the total-variation distance).

The PNG heat map needs the ``plot`` extra (matplotlib), imported only when it is asked for.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np

__all__ = ["PartitionStats", "partition_stats", "summary", "label_matrix_png"]


@dataclasses.dataclass(frozen=True)
class PartitionStats:
    """What :func:`partition_stats` measures (K clients, L distinct labels).

    sizes : ndarray, shape (K,) int64             examples per client
    classes : ndarray, shape (L,) int64           the distinct labels, ascending (columns)
    counts : ndarray, shape (K, L) int64          counts[k, j] = examples of classes[j] on k
    labels_per_client : ndarray, shape (K,) int64 distinct labels on each client
    mean_labels_per_client : float
    emd : ndarray, shape (K,) float64             1-D earth mover's distance to the global mix
    l1 : ndarray, shape (K,) float64              L1 distance to the global mix (Zhao et al.)
    num_examples : int                            N, the length of ``labels``
    covered : int                                 distinct indices that some client holds
    """

    sizes: np.ndarray
    classes: np.ndarray
    counts: np.ndarray
    labels_per_client: np.ndarray
    mean_labels_per_client: float
    emd: np.ndarray
    l1: np.ndarray
    num_examples: int
    covered: int


def partition_stats(parts: list[np.ndarray], labels: np.ndarray) -> PartitionStats:
    """Measure a partition.

    Parameters
    ----------
    parts : list of K int arrays
        Dataset indices of each client (as returned by ``refsim.data.partition``).
    labels : ndarray, shape (N,) of integers

    Returns
    -------
    PartitionStats. An empty client has ``emd = l1 = nan``.

    >>> s = partition_stats([np.array([0, 1]), np.array([2, 3])], np.array([0, 0, 1, 1]))
    >>> s.counts.tolist(), s.labels_per_client.tolist(), s.emd.tolist(), s.l1.tolist()
    ([[2, 0], [0, 2]], [1, 1], [0.5, 0.5], [1.0, 1.0])
    """
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise ValueError(f"labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    n = len(y)
    if len(parts) == 0:
        raise ValueError("parts is empty: a partition needs at least one client")
    checked = []
    for k, p in enumerate(map(np.asarray, parts)):
        if p.ndim != 1 or (p.size and p.dtype.kind not in "iu"):
            raise ValueError(f"client {k}: indices must be a 1-D integer array, "
                             f"got {p.dtype} {p.shape}")
        if p.size and (p.min() < 0 or p.max() >= n):
            raise ValueError(f"client {k}: index out of range [0, {n})")
        checked.append(p.astype(np.int64))
    parts = checked
    classes, column = np.unique(y, return_inverse=True)  # (L,), (N,)
    num_classes = len(classes)
    counts = np.stack([np.bincount(column[p], minlength=num_classes)
                       for p in parts]).astype(np.int64)  # (K, L)
    sizes = counts.sum(axis=1)  # (K,)
    q = np.bincount(column, minlength=num_classes) / max(n, 1)  # (L,) global distribution
    emd = np.full(len(parts), np.nan)  # (K,)
    l1 = np.full(len(parts), np.nan)  # (K,)
    nonempty = sizes > 0
    p_k = counts[nonempty] / sizes[nonempty, None]  # (K', L)
    cdf_gap = np.cumsum(p_k - q, axis=1)[:, :-1]  # (K', L-1)
    emd[nonempty] = np.abs(cdf_gap).sum(axis=1)
    l1[nonempty] = np.abs(p_k - q).sum(axis=1)
    labels_per_client = (counts > 0).sum(axis=1)  # (K,)
    covered = len(np.unique(np.concatenate(parts)))
    return PartitionStats(
        sizes=sizes, classes=classes.astype(np.int64), counts=counts,
        labels_per_client=labels_per_client,
        mean_labels_per_client=float(labels_per_client.mean()),
        emd=emd, l1=l1, num_examples=n, covered=covered)


def summary(stats: PartitionStats, max_rows: int = 10) -> str:
    """A printable report: sizes, the labels-per-client histogram, distances, the first rows."""
    k = len(stats.sizes)
    total = int(stats.sizes.sum())
    hist = np.bincount(stats.labels_per_client, minlength=len(stats.classes) + 1)
    lines = [
        f"{k} clients, {total} assignments of {stats.num_examples} examples "
        f"({stats.covered} distinct indices covered)",
        f"client sizes: min {stats.sizes.min()}, median {np.median(stats.sizes):g}, "
        f"max {stats.sizes.max()}, mean {stats.sizes.mean():.1f}",
        "labels per client: " + ", ".join(f"{c} labels: {n} clients"
                                          for c, n in enumerate(hist) if n)
        + f" (mean {stats.mean_labels_per_client:.2f})",
        (f"EMD to global (1-D, labels on a line): mean {np.nanmean(stats.emd):.4f}, "
         f"max {np.nanmax(stats.emd):.4f}; L1: mean {np.nanmean(stats.l1):.4f}"
         if (stats.sizes > 0).any() else "EMD/L1: every client is empty"),
        "client  size  counts per label " + str(stats.classes.tolist()),
    ]
    for i in range(min(k, max_rows)):
        lines.append(f"{i:6d} {stats.sizes[i]:5d}  {stats.counts[i].tolist()}")
    if k > max_rows:
        lines.append(f"... {k - max_rows} more clients")
    return "\n".join(lines)


def label_matrix_png(stats: PartitionStats, title: str = "examples per client and label") -> bytes:
    """The client-by-label count matrix as a PNG heat map (bytes; the caller writes the file).

    Needs matplotlib: ``pip install 'refsim[plot]'``.
    """
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("label_matrix_png needs matplotlib: pip install 'refsim[plot]'") from err
    fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * len(stats.classes) + 2), 6))
    image = ax.imshow(stats.counts, aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("label")
    ax.set_ylabel("client")
    ax.set_xticks(range(len(stats.classes)), [str(c) for c in stats.classes])
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="examples")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
