"""Uniform quantization: the Numba kernel equals the NumPy oracle bit for bit; properties."""

import numpy as np
import pytest

from refsim.compress.quantize import (
    Quantized,
    QuantizerConfig,
    dequantize,
    dequantize_naive,
    quantize,
    quantize_naive,
)


def _random_case(rng):
    shape = tuple(int(s) for s in rng.integers(0, 7, size=int(rng.integers(0, 4))))
    dtype = [np.float32, np.float64][int(rng.integers(2))]
    x = (rng.normal(0, 10.0 ** rng.uniform(-4, 2), size=shape)).astype(dtype)
    return x, int(rng.integers(1, 17)), bool(rng.integers(2)), int(rng.integers(0, 2**63))


@pytest.mark.parametrize("trial", range(40))
def test_quantize_matches_oracle(trial):
    rng = np.random.default_rng(trial)
    x, bits, stochastic, seed = _random_case(rng)
    a = quantize(x, bits, stochastic=stochastic, seed=seed)
    b = quantize_naive(x, bits, stochastic=stochastic, seed=seed)
    msg = f"quantize shape={x.shape} dtype={x.dtype} bits={bits} stochastic={stochastic}"
    np.testing.assert_array_equal(a.levels, b.levels, err_msg=msg)
    assert (a.min, a.max, a.bits, a.levels.dtype, a.levels.shape) == (
        b.min, b.max, b.bits, b.levels.dtype, x.shape), msg
    assert a.levels.size == 0 or int(a.levels.max()) <= 2**bits - 1
    np.testing.assert_array_equal(dequantize(a), dequantize_naive(a), err_msg=msg)
    assert dequantize(a).dtype == x.dtype


@pytest.mark.parametrize("bits", [1, 2, 7, 8, 9, 16])
@pytest.mark.parametrize("stochastic", [False, True])
def test_grid_points_are_fixed_points(bits, stochastic):
    # With min = 0 and max = 2**b - 1 the scale is exactly 1: every level is its own value.
    qmax = 2**bits - 1
    levels = np.random.default_rng(bits).integers(0, qmax + 1, 500)
    x = np.concatenate([[0, qmax], levels]).astype(np.float64)
    q = quantize(x, bits, stochastic=stochastic, seed=7)
    np.testing.assert_array_equal(q.levels, x.astype(np.int64))
    np.testing.assert_array_equal(dequantize(q), x)
    # Deterministic rounding also fixes a dequantized tensor in general.
    y = dequantize(quantize(np.random.default_rng(0).normal(size=300), bits, stochastic=False))
    q2 = quantize(y, bits, stochastic=False)
    np.testing.assert_array_equal(dequantize(q2), y)


@pytest.mark.parametrize("stochastic", [False, True])
def test_constant_empty_and_single(stochastic):
    for x in [np.full(17, -3.25, np.float32), np.zeros(0), np.array([4.0]), np.float32(2.5)]:
        q = quantize(x, 5, stochastic=stochastic, seed=1)
        assert q.levels.shape == np.shape(x) and not q.levels.any()
        np.testing.assert_array_equal(dequantize(q), x)


def test_deterministic_ties_round_half_to_even():
    # min 0, max 4 at 2 bits: scale 3/4; x = 2/3 * k gives t = k/2 exactly for k = 1, 3, 5.
    x = np.array([0.0, 4.0, 2 / 3, 2.0, 10 / 3])
    t = (x - 0.0) * (3.0 / 4.0)
    assert t[2:].tolist() == [0.5, 1.5, 2.5]
    assert quantize(x, 2, stochastic=False).levels.tolist() == [0, 3, 0, 2, 2]


def test_stochastic_is_unbiased():
    # Mean over 4000 seeds of the dequantized value approaches x (standard error ~ step/126).
    x = np.array([0.0, 0.1, 0.37, 0.5, 0.81, 1.0])
    draws = np.stack([dequantize(quantize(x, 2, seed=s)) for s in range(4000)])
    step = 1.0 / 3.0
    np.testing.assert_allclose(draws.mean(axis=0), x, atol=4 * step / 2 / np.sqrt(4000))
    assert (np.abs(draws - x) < step + 1e-12).all()  # never more than one step away


def test_seed_changes_levels_and_is_reproducible():
    x = np.random.default_rng(3).normal(size=1000).astype(np.float32)
    a, b, c = (quantize(x, 4, seed=s).levels for s in (11, 11, 12))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_bad_input():
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize(np.array([1.0, np.nan]), 8)
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize_naive(np.array([1.0, np.inf]), 8)
    with pytest.raises(ValueError, match="bits"):
        quantize(np.ones(3), 17)
    with pytest.raises(ValueError, match="bits"):
        QuantizerConfig(bits=0)
    with pytest.raises(TypeError, match="float32 or float64"):
        quantize(np.arange(3), 8)
    with pytest.raises(ValueError, match="cannot be scaled"):
        quantize(np.array([-1e308, 1e308]), 8)
    with pytest.raises(ValueError, match="cannot be scaled"):
        quantize(np.array([0.0, 5e-324]), 8)
    with pytest.raises(ValueError, match="exceed"):
        dequantize(Quantized(np.array([4], np.uint8), 0.0, 1.0, 2, np.dtype(np.float32)))
    with pytest.raises(TypeError, match="levels must be"):
        dequantize(Quantized(np.array([1], np.uint16), 0.0, 1.0, 2, np.dtype(np.float32)))
