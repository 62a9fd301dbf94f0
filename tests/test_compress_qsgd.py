"""QSGD: Numba kernel equals the NumPy oracle; unbiasedness, variance bound, edge cases."""

import numpy as np
import pytest

from refsim.compress.qsgd import QSGDConfig, qsgd, qsgd_bits, qsgd_dequantize, qsgd_naive


@pytest.mark.parametrize("trial", range(30))
def test_qsgd_matches_oracle(trial):
    rng = np.random.default_rng(100 + trial)
    n = int(rng.integers(0, 700))
    x = rng.normal(0, 10.0 ** rng.uniform(-4, 1), n).astype([np.float32, np.float64][trial % 2])
    s, seed = int(rng.integers(1, 3000)), int(rng.integers(0, 2**63))
    a, b = qsgd(x, s, seed=seed), qsgd_naive(x, s, seed=seed)
    msg = f"qsgd n={n} s={s} dtype={x.dtype}"
    np.testing.assert_array_equal(a.symbols, b.symbols, err_msg=msg)
    assert a.norm == b.norm and a.symbols.dtype == (np.uint8 if 2 * s <= 255 else np.uint16), msg
    assert a.symbols.size == 0 or int(a.symbols.max()) <= 2 * s


def test_qsgd_unbiased_and_variance_bound():
    x = np.random.default_rng(1).normal(size=64)
    s = 3
    draws = np.stack([qsgd_dequantize(qsgd(x, s, seed=k)) for k in range(3000)])
    norm = np.linalg.norm(x)
    # Each coordinate is within norm/s of x and has standard deviation <= norm/(2s).
    np.testing.assert_allclose(draws.mean(axis=0), x, atol=4 * norm / (2 * s) / np.sqrt(3000))
    err = ((draws - x) ** 2).sum(axis=1).mean()
    assert err <= min(x.size / s**2, np.sqrt(x.size) / s) * norm**2  # Lemma 3.1


def test_qsgd_edges():
    q = qsgd(np.zeros(5, np.float32), 4)
    assert q.norm == 0.0 and (q.symbols == 4).all() and not qsgd_dequantize(q).any()
    x = np.array([-2.0, 0.0, 2.0])  # |x_i| s / norm is 0 or s/sqrt(2)
    assert (qsgd(x, 1, seed=0).symbols[1]) == 1
    assert qsgd_bits(1) == 2 and qsgd_bits(127) == 8 and qsgd_bits(128) == 9
    with pytest.raises(ValueError, match="levels"):
        QSGDConfig(levels=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        qsgd(np.array([np.nan, 1.0]), 4)
    with pytest.raises(ValueError, match="NaN or Inf"):
        qsgd_naive(np.array([1e200, 1e200]), 4)
