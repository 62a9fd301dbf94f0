"""partition_stats: counts, label distances (checked against SciPy), summary, PNG heat map."""

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import wasserstein_distance

from refsim.data.stats import label_matrix_png, partition_stats, summary


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 200), num_labels=st.integers(1, 8),
       k=st.integers(1, 6))
def test_stats_against_direct_computation(seed, n, num_labels, k):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_labels, n) * 3 + 1  # non-contiguous label values
    owner = rng.integers(0, k, n)
    parts = [np.flatnonzero(owner == i) for i in range(k)]
    s = partition_stats(parts, labels)
    classes = np.unique(labels)
    np.testing.assert_array_equal(s.classes, classes)
    q = np.array([np.mean(labels == c) for c in classes])
    for i, p in enumerate(parts):
        expected = [np.count_nonzero(labels[p] == c) for c in classes]
        assert s.counts[i].tolist() == expected and s.sizes[i] == len(p)
        assert s.labels_per_client[i] == len(np.unique(labels[p]))
        if len(p) == 0:
            assert np.isnan(s.emd[i]) and np.isnan(s.l1[i])
            continue
        pk = np.array(expected) / len(p)
        positions = np.arange(len(classes))
        ref = wasserstein_distance(positions, positions, pk, q)
        np.testing.assert_allclose(s.emd[i], ref, atol=1e-12, err_msg=f"client {i}")
        np.testing.assert_allclose(s.l1[i], np.abs(pk - q).sum(), atol=1e-12)
    assert s.covered == n and s.num_examples == n
    assert s.mean_labels_per_client == pytest.approx(s.labels_per_client.mean())


def test_emd_depends_on_label_order_but_l1_does_not():
    labels = np.array([0, 1, 2, 0, 1, 2])  # global mix q = (1/3, 1/3, 1/3)
    adjacent = partition_stats([np.array([0, 1]), np.array([2, 3, 4, 5])], labels)  # (1/2, 1/2, 0)
    apart = partition_stats([np.array([0, 2]), np.array([1, 3, 4, 5])], labels)  # (1/2, 0, 1/2)
    # CDF gaps: |1/2 - 1/3| + |1 - 2/3| = 1/2 versus |1/2 - 1/3| + |1/2 - 2/3| = 1/3
    assert adjacent.emd[0] == pytest.approx(0.5) and apart.emd[0] == pytest.approx(1 / 3)
    assert adjacent.l1[0] == pytest.approx(2 / 3) and apart.l1[0] == pytest.approx(2 / 3)


def test_coverage_reports_missing_and_bad_indices():
    s = partition_stats([np.array([0, 1]), np.array([1]), np.array([])], np.array([0, 1, 1]))
    assert s.covered == 2 and s.sizes.tolist() == [2, 1, 0]  # index 2 is held by no client
    assert np.isnan(s.emd[2]) and s.labels_per_client[2] == 0
    with pytest.raises(ValueError, match=r"client 1: index out of range \[0, 3\)"):
        partition_stats([np.array([0]), np.array([3])], np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="parts is empty"):
        partition_stats([], np.array([0, 1]))
    empty = partition_stats([np.zeros(0, np.int64)], np.array([0, 1]))
    assert "every client is empty" in summary(empty) and empty.covered == 0
    with pytest.raises(ValueError, match="client 0: indices must be a 1-D integer"):
        partition_stats([np.array([0.5])], np.array([0, 1]))


def test_summary_text():
    labels = np.repeat(np.arange(3), 4)
    parts = [np.array([0, 1, 4, 5]), np.array([2, 3, 6, 7]), np.array([8, 9, 10, 11])]
    text = summary(partition_stats(parts, labels), max_rows=2)
    assert "3 clients, 12 assignments of 12 examples" in text
    assert "1 labels: 1 clients, 2 labels: 2 clients" in text
    assert "... 1 more clients" in text and "[2, 2, 0]" in text


def test_png_needs_matplotlib_and_says_how_to_get_it(monkeypatch):
    s = partition_stats([np.array([0]), np.array([1])], np.array([0, 1]))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'refsim\[plot\]'"):
        label_matrix_png(s)


def test_png_heat_map():
    pytest.importorskip("matplotlib")
    s = partition_stats([np.array([0, 2]), np.array([1])], np.array([0, 1, 1]))
    png = label_matrix_png(s)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
