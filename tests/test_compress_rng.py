"""The counter-based SplitMix64 uniforms: known outputs, oracle equality, range, independence."""

import numpy as np
import pytest

from refsim.compress.rng import (
    check_key,
    quantize_key,
    splitmix64_naive,
    tensor_key,
    uniform,
    uniform_naive,
)


def test_splitmix64_reference_outputs():
    # The first outputs of Vigna's splitmix64.c seeded with 0 (state += GAMMA, then mix).
    z = splitmix64_naive(0, np.arange(3))
    assert [hex(int(v)) for v in z] == ["0xe220a8397b1dcdaf", "0x6e789e6aa1b965f4",
                                        "0x6c45d188009454f"]


@pytest.mark.parametrize("trial", range(10))
def test_uniform_matches_oracle(trial):
    rng = np.random.default_rng(trial)
    key = int(rng.integers(0, 2**64, dtype=np.uint64))
    start, n = int(rng.integers(0, 2**40)), int(rng.integers(0, 2000))
    a, b = uniform(key, start, n), uniform_naive(key, start, n)
    np.testing.assert_array_equal(a, b, err_msg=f"key={key} start={start} n={n}")
    assert a.dtype == np.float64 and ((a >= 0) & (a < 1)).all()


def test_uniform_is_a_counter():
    # u(key, start + j) does not depend on how the range is split.
    whole = uniform(99, 0, 300)
    np.testing.assert_array_equal(np.concatenate([uniform(99, 0, 100), uniform(99, 100, 200)]),
                                  whole)


def test_uniform_moments():
    u = uniform(2026, 0, 200_000)
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01


def test_keys():
    with pytest.raises(ValueError, match="seed"):
        check_key(-1)
    with pytest.raises(ValueError, match="seed"):
        check_key(2**64)
    with pytest.raises(TypeError, match="seed"):
        check_key(1.5)
    assert quantize_key(1, 2, 3) == quantize_key(1, 2, 3) != quantize_key(1, 2, 4)
    assert len({tensor_key(5, j) for j in range(100)}) == 100
    assert 0 <= tensor_key(2**64 - 1, 0) < 2**64
