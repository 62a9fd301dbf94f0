"""Partitioners: property tests (disjoint, complete, sizes, label structure, reproducible),
replays of the documented rng draws, edge cases, and the FedAvg paper's MNIST splits."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsim.backend import Purpose, make_rng
from refsim.data import load_mnist, partition_stats
from refsim.data.partition import (Remainder, by_group, classes_per_client, dirichlet, iid,
                                   quantity_skew, shards)

SETTINGS = settings(max_examples=40, deadline=None)


def assert_partition(parts, n, k):
    """K sorted int64 arrays, pairwise disjoint, covering 0..n-1 exactly once."""
    assert len(parts) == k
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert (np.diff(p) > 0).all(), "each client's indices are sorted and unique"
    allidx = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))


def assert_same(a, b):
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@st.composite
def labelled(draw, min_n=1, max_n=300, max_labels=10):
    n = draw(st.integers(min_n, max_n))
    num_labels = draw(st.integers(1, max_labels))
    seed = draw(st.integers(0, 2**32 - 1))
    labels = np.random.default_rng(seed).integers(0, num_labels, n)
    return labels, seed


@SETTINGS
@given(data=labelled(), frac=st.floats(0, 1))
def test_iid_properties(data, frac):
    labels, seed = data
    n = len(labels)
    k = 1 + int(frac * (n - 1))
    parts = iid(labels, k, np.random.default_rng(seed))
    assert_partition(parts, n, k)
    sizes = [len(p) for p in parts]
    assert sizes == [n // k + (i < n % k) for i in range(k)]
    assert_same(parts, iid(labels, k, np.random.default_rng(seed)))


def test_iid_replay_of_documented_draws():
    labels = np.zeros(1000, int)
    perm = np.random.default_rng([5, 1]).permutation(1000)
    expected = [np.sort(perm[i * 100:(i + 1) * 100]) for i in range(10)]
    assert_same(iid(labels, 10, make_rng(5, Purpose.PARTITION)), expected)


@SETTINGS
@given(data=labelled(min_n=2), k=st.integers(1, 10), s=st.integers(1, 4),
       to_last=st.booleans())
def test_shards_properties(data, k, s, to_last):
    labels, seed = data
    n = len(labels)
    if k * s > n:
        with pytest.raises(ValueError, match="some clients would be empty"):
            shards(labels, k, s, np.random.default_rng(seed))
        return
    z = n // (k * s)
    rem = n - k * s * z
    mode = Remainder.TO_LAST_SHARD if to_last else Remainder.RAISE
    if rem and not to_last:
        with pytest.raises(ValueError, match=f"{rem} would be left over"):
            shards(labels, k, s, np.random.default_rng(seed), remainder=mode)
        return
    parts = shards(labels, k, s, np.random.default_rng(seed), remainder=mode)
    assert_partition(parts, n, k)
    order = np.argsort(labels, kind="stable")
    sizes = sorted(len(p) for p in parts)
    assert sizes == [s * z] * (k - 1) + [s * z + rem]
    for p in parts:  # each client is s whole shards of the label-sorted order
        pos = np.sort(np.argsort(order)[p])
        shard_ids = np.minimum(pos // z, k * s - 1)
        assert len(np.unique(shard_ids)) == s
        # labels of a client: at most one more than its shards per label boundary crossed
        assert len(np.unique(labels[p])) <= s + len(np.unique(labels)) - 1
    assert_same(parts, shards(labels, k, s, np.random.default_rng(seed), remainder=mode))


def test_shards_replay_and_stable_sort():
    labels = np.array([2, 0, 1, 0, 2, 1, 1, 0, 2, 0, 1, 2])
    order = np.argsort(labels, kind="stable")  # ties in dataset order
    assert order.tolist() == [1, 3, 7, 9, 2, 5, 6, 10, 0, 4, 8, 11]
    deal = np.random.default_rng(3).permutation(6)
    expected = [np.sort(np.concatenate([order[2 * j:2 * j + 2] for j in deal[c * 2:c * 2 + 2]]))
                for c in range(3)]
    assert_same(shards(labels, 3, 2, np.random.default_rng(3)), expected)


def test_shards_explicit_size_and_remainder():
    labels = np.arange(10) % 3
    with pytest.raises(ValueError, match="need 12 examples, only 10"):
        shards(labels, 2, 2, np.random.default_rng(0), shard_size=3)
    with pytest.raises(ValueError, match="2 would be left over"):
        shards(labels, 2, 2, np.random.default_rng(0), shard_size=2)
    parts = shards(labels, 2, 2, np.random.default_rng(0), shard_size=2,
                   remainder=Remainder.TO_LAST_SHARD)
    assert_partition(parts, 10, 2)
    assert sorted(len(p) for p in parts) == [4, 6]
    with pytest.raises(TypeError, match="Remainder"):
        shards(labels, 2, 2, np.random.default_rng(0), remainder="to_last_shard")


@SETTINGS
@given(data=labelled(), k=st.integers(1, 12), log_alpha=st.floats(-3, 3),
       min_size=st.integers(0, 3))
def test_dirichlet_properties(data, k, log_alpha, min_size):
    labels, seed = data
    n = len(labels)
    alpha = 10.0 ** log_alpha
    try:
        parts = dirichlet(labels, k, alpha, np.random.default_rng(seed), min_size=min_size,
                          max_draws=20)
    except ValueError as err:
        assert "min_size" in str(err)
        return
    assert_partition(parts, n, k)
    assert min(len(p) for p in parts) >= min_size
    assert_same(parts, dirichlet(labels, k, alpha, np.random.default_rng(seed),
                                 min_size=min_size, max_draws=20))


def test_dirichlet_replay_of_documented_draws():
    labels = np.array([1, 0, 1, 1, 0, 2, 2, 1, 0, 0, 1, 2])
    rng = np.random.default_rng(9)
    pieces = [[] for _ in range(3)]
    for c in (0, 1, 2):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        p = rng.dirichlet([0.7, 0.7, 0.7])
        for j, piece in enumerate(np.split(idx, (np.cumsum(p) * len(idx)).astype(int)[:-1])):
            pieces[j].append(piece)
    expected = [np.sort(np.concatenate(p)) for p in pieces]
    assert_same(dirichlet(labels, 3, 0.7, np.random.default_rng(9), min_size=0), expected)


def test_dirichlet_extremes():
    labels = np.repeat(np.arange(10), 100)
    flat = dirichlet(labels, 10, 1e6, np.random.default_rng(0))
    counts = partition_stats(flat, labels).counts
    assert np.abs(counts - 10).max() <= 1  # alpha -> inf: every client 1/K of every class
    sparse = dirichlet(labels, 10, 1e-3, np.random.default_rng(0), min_size=0)
    stats = partition_stats(sparse, labels)
    assert_partition(sparse, 1000, 10)
    assert (stats.counts.max(axis=0) >= 99).mean() >= 0.8  # each class lives on ~one client
    with pytest.raises(ValueError, match="no draw gave every client >= min_size=50"):
        dirichlet(labels, 10, 1e-3, np.random.default_rng(0), min_size=50, max_draws=5)
    with pytest.raises(ValueError, match="min_size can never be met"):
        dirichlet(labels, 2000, 1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        dirichlet(labels, 5, 0.0, np.random.default_rng(0))


def test_dirichlet_self_balancing_caps_growth():
    labels = np.repeat(np.arange(10), 200)
    plain = dirichlet(labels, 10, 0.1, np.random.default_rng(1), min_size=0)
    balanced = dirichlet(labels, 10, 0.1, np.random.default_rng(1), min_size=0,
                         self_balancing=True)
    assert_partition(balanced, 2000, 10)
    assert max(map(len, balanced)) < max(map(len, plain))


@SETTINGS
@given(data=labelled(min_n=20), k=st.integers(1, 12), c=st.integers(1, 10))
def test_classes_per_client_properties(data, k, c):
    labels, seed = data
    num_labels = len(np.unique(labels))
    try:
        parts = classes_per_client(labels, k, c, np.random.default_rng(seed))
    except ValueError as err:
        reasons = ["held by no client", "some client would get none", "would be empty"]
        assert (c > num_labels and "distinct labels" in str(err)) or \
            any(r in str(err) for r in reasons), str(err)
        return
    assert_partition(parts, len(labels), k)
    assert all(len(np.unique(labels[p])) == c for p in parts)
    assert_same(parts, classes_per_client(labels, k, c, np.random.default_rng(seed)))


def test_classes_per_client_even_split_and_errors():
    labels = np.repeat(np.arange(4), 30)
    parts = classes_per_client(labels, 8, 2, np.random.default_rng(0))
    stats = partition_stats(parts, labels)
    assert (stats.labels_per_client == 2).all()
    for j in range(4):  # a label's examples are split evenly among its holders
        held = stats.counts[:, j][stats.counts[:, j] > 0]
        assert held.max() - held.min() <= 1
    with pytest.raises(ValueError, match="held by no client"):
        classes_per_client(labels, 2, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_classes=5 > 4 distinct labels"):
        classes_per_client(labels, 8, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="label 0 has 2 examples but 3 clients"):
        classes_per_client(np.array([0, 0, 1, 1, 1, 1]), 3, 2, np.random.default_rng(0))


@SETTINGS
@given(data=labelled(), k=st.integers(1, 20), sigma=st.floats(0, 3), min_size=st.integers(1, 5))
def test_quantity_skew_properties(data, k, sigma, min_size):
    labels, seed = data
    n = len(labels)
    if k * min_size > n:
        with pytest.raises(ValueError, match="num_clients \\* min_size"):
            quantity_skew(labels, k, np.random.default_rng(seed), sigma, min_size)
        return
    parts = quantity_skew(labels, k, np.random.default_rng(seed), sigma, min_size)
    assert_partition(parts, n, k)
    assert min(map(len, parts)) >= min_size
    if sigma == 0:
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert_same(parts, quantity_skew(labels, k, np.random.default_rng(seed), sigma, min_size))


def test_quantity_skew_replay_of_documented_draws():
    rng = np.random.default_rng(4)
    perm = rng.permutation(100)
    w = rng.lognormal(0.0, 1.5, 4)
    share = (100 - 4 * 2) * w / w.sum()
    sizes = np.floor(share).astype(int)
    sizes[np.argsort(-(share - sizes), kind="stable")[:100 - 4 * 2 - sizes.sum()]] += 1
    sizes += 2
    expected = [np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])]
    assert_same(quantity_skew(np.zeros(100, int), 4, np.random.default_rng(4), 1.5, 2), expected)


@SETTINGS
@given(data=labelled(max_labels=30))
def test_by_group_properties(data):
    groups, _ = data
    parts = by_group(groups * 7 + 3)  # arbitrary, non-contiguous group ids
    ids = np.unique(groups)
    assert_partition(parts, len(groups), len(ids))
    for g, p in zip(ids, parts):
        assert (groups[p] == g).all() and len(p) == np.count_nonzero(groups == g)


@pytest.mark.parametrize("call", [
    lambda y, r: iid(y, 6, r),
    lambda y, r: shards(y, 3, 2, r),
    lambda y, r: classes_per_client(y, 6, 1, r),
    lambda y, r: quantity_skew(y, 6, r),
])
def test_more_clients_than_examples(call):
    with pytest.raises(ValueError, match="examples"):
        call(np.zeros(5, int), np.random.default_rng(0))


@pytest.mark.parametrize("call", [
    lambda y, r: iid(y, 3, r), lambda y, r: shards(y, 3, 2, r, remainder=Remainder.TO_LAST_SHARD),
    lambda y, r: dirichlet(y, 3, 0.5, r), lambda y, r: classes_per_client(y, 3, 1, r),
    lambda y, r: quantity_skew(y, 3, r), lambda y, r: by_group(y),
])
def test_one_class(call):
    labels = np.full(31, 4)
    parts = call(labels, np.random.default_rng(0))
    assert_partition(parts, 31, len(parts))


def test_argument_errors():
    y = np.zeros(10, int)
    with pytest.raises(TypeError, match="Generator"):
        iid(y, 2, 0)
    with pytest.raises(TypeError, match="num_clients must be an integer"):
        iid(y, 2.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_clients must be >= 1"):
        iid(y, 0, np.random.default_rng(0))
    with pytest.raises(TypeError, match="labels must be integers"):
        iid(np.zeros(10), 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="1-D"):
        shards(np.zeros((2, 5), int), 1, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="groups is empty"):
        by_group(np.zeros(0, int))


@pytest.fixture(scope="module")
def mnist_labels():
    return load_mnist().y_train


def test_paper_pathological_non_iid_mnist(mnist_labels):
    """McMahan et al. 2017: 200 shards of 300, 2 per client -> 100 clients of 600."""
    parts = shards(mnist_labels, 100, 2, make_rng(0, Purpose.PARTITION), shard_size=300)
    assert_partition(parts, 60000, 100)
    stats = partition_stats(parts, mnist_labels)
    assert (stats.sizes == 600).all()
    hist = np.bincount(stats.labels_per_client, minlength=5)
    assert hist[2] > 50 and stats.labels_per_client.max() <= 4
    # 20 shards per label on average, 9 label boundaries: at most 9 shards hold two labels, so
    # at most 9 clients have more than 2 labels.
    assert hist[3:].sum() <= 9
    # regression figure for seed 0 (PCG64 permutation stream): 13 / 80 / 7 clients with 1/2/3
    assert hist[1:4].tolist() == [13, 80, 7]


def test_paper_iid_mnist(mnist_labels):
    parts = iid(mnist_labels, 100, make_rng(0, Purpose.PARTITION))
    stats = partition_stats(parts, mnist_labels)
    assert (stats.sizes == 600).all() and (stats.labels_per_client == 10).all()
    assert stats.emd.max() < 0.5


def test_mnist_writers_partition():
    d = load_mnist()
    parts = by_group(d.groups_train)
    assert_partition(parts, 60000, 539)
    assert sorted(map(len, parts))[0] == 19
