"""Top-k with error feedback: the partition-based selection equals the stable-sort oracle."""

import numpy as np
import pytest

from refsim.compress.topk import TopKConfig, topk, topk_densify, topk_naive


@pytest.mark.parametrize("trial", range(20))
def test_topk_matches_oracle(trial):
    rng = np.random.default_rng(200 + trial)
    shape = tuple(int(v) for v in rng.integers(1, 9, size=int(rng.integers(1, 3))))
    x = np.round(rng.normal(size=shape), 1).astype(np.float32)  # rounding makes ties
    res = np.round(rng.normal(size=shape), 1).astype(np.float32) if trial % 2 else None
    k = int(rng.integers(0, x.size + 2))
    a, b = topk(x, k, res), topk_naive(x, k, res)
    np.testing.assert_array_equal(a.indices, b.indices, err_msg=f"topk shape={shape} k={k}")
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.residual, b.residual)
    # What is sent plus what is kept is exactly x + residual.
    total = x if res is None else x + res
    np.testing.assert_array_equal(topk_densify(a) + a.residual, total)


def test_ties_prefer_smaller_index_and_error_feedback():
    r = topk(np.array([1.0, -2.0, 2.0, 2.0]), 2)
    assert r.indices.tolist() == [1, 2] and r.residual.tolist() == [1.0, 0.0, 0.0, 2.0]
    # The unsent 2.0 comes back next round through the residual.
    r2 = topk(np.array([0.0, 0.0, 0.0, 0.5]), 1, r.residual)
    assert r2.indices.tolist() == [3] and r2.values.tolist() == [2.5]


def test_topk_bad_input():
    with pytest.raises(ValueError, match="residual"):
        topk(np.ones(3), 1, np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        topk(np.array([np.nan, 1.0]), 1)
    with pytest.raises(ValueError, match="k"):
        TopKConfig(0)


def test_k_of_a_fraction():
    assert [TopKConfig(fraction=0.01).k_for(n) for n in (0, 1, 49, 150, 250, 10_000)] == \
        [0, 1, 1, 2, 3, 100]  # floor(f n + 0.5), at least 1; 2.5 -> 3
    assert TopKConfig(k=7).k_for(5) == 5 and TopKConfig(7).k == 7
    with pytest.raises(ValueError, match="bits"):
        TopKConfig(3, bits=16)
