"""Client minibatches: the documented order rule, kept partial batch, B = infinity."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refsim.data.batching import batch_order, client_batches, num_batches


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), b=st.one_of(st.none(), st.integers(1, 70)), e=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1), rnd=st.integers(0, 1000), client=st.integers(0, 1000))
def test_batches_replay_the_rng_rule(n, b, e, seed, rnd, client):
    indices = np.sort(np.random.default_rng(n).choice(10 * n, n, replace=False))
    batches = list(client_batches(indices, b, e, seed, rnd, client))
    assert len(batches) == e * num_batches(n, b)
    step = n if b is None else b
    k = 0
    for epoch in range(e):  # independent replay: numpy.random.default_rng([seed, 3, r, k, e])
        perm = np.random.default_rng([seed, 3, rnd, client, epoch]).permutation(n)
        order = indices[perm]
        for start in range(0, n, step):
            np.testing.assert_array_equal(batches[k], order[start:start + step])
            k += 1
    order = batch_order(indices, e, seed, rnd, client)
    assert order.shape == (e, n)
    for row in order:  # every epoch visits every example once
        np.testing.assert_array_equal(np.sort(row), indices)


def test_last_partial_batch_is_kept_and_none_is_whole_client():
    sizes = [len(b) for b in client_batches(10, 4, 2, 0, 0, 0)]
    assert sizes == [4, 4, 2, 4, 4, 2]
    whole = list(client_batches(np.arange(5, 12), None, 3, 1, 2, 3))
    assert [len(b) for b in whole] == [7, 7, 7]
    assert list(client_batches(3, 50, 1, 0, 0, 0))[0].shape == (3,)


def test_epochs_rounds_and_clients_use_different_streams():
    a = batch_order(50, 2, 0, 0, 0)
    assert not np.array_equal(a[0], a[1])
    assert not np.array_equal(batch_order(50, 1, 0, 1, 0)[0], a[0])
    assert not np.array_equal(batch_order(50, 1, 0, 0, 1)[0], a[0])
    assert not np.array_equal(batch_order(50, 1, 1, 0, 0)[0], a[0])
    np.testing.assert_array_equal(batch_order(50, 2, 0, 0, 0), a)  # reproducible
    np.testing.assert_array_equal(batch_order(50, 3, 0, 0, 0)[:2], a)  # epoch e is independent of E


def test_errors():
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        list(client_batches(5, 0, 1, 0, 0, 0))
    with pytest.raises(TypeError, match="batch_size"):
        list(client_batches(5, 2.5, 1, 0, 0, 0))
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        batch_order(5, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="at least one example"):
        batch_order(np.zeros(0, np.int64), 1, 0, 0, 0)
    with pytest.raises(ValueError, match="at least one example"):
        batch_order(0, 1, 0, 0, 0)
    with pytest.raises(ValueError, match="round must be in"):
        batch_order(5, 1, 0, -1, 0)
