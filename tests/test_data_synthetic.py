"""Synthetic(alpha, beta) of FedProx: an independent replay of the documented draws, and the
statistical structure the paper specifies."""

import numpy as np
import pytest

from refsim.backend import Purpose, make_rng
from refsim.data.synthetic import synthetic


def replay(alpha, beta, seed, k, d=60, c=10, iid=False):
    """Written from the docstring's draw list, as another implementation would."""
    rng = np.random.default_rng([seed, 6])  # make_rng(seed, Purpose.DATA)
    n = rng.lognormal(4, 2, k).astype(int) + 50
    u = rng.normal(0, alpha, k)
    big_b = rng.normal(0, beta, k)
    if iid:
        v = np.zeros((k, d))
        w_all, b_all = rng.normal(0, 1, (d, c)), rng.normal(0, 1, c)
    else:
        v = np.array([rng.normal(big_b[i], 1, d) for i in range(k)])
    sd = np.sqrt(np.arange(1, d + 1, dtype=np.float64) ** -1.2)  # the documented expression
    xs, ys = [], []
    for i in range(k):
        w, b = (w_all, b_all) if iid else (rng.normal(u[i], 1, (d, c)), rng.normal(u[i], 1, c))
        x = v[i] + rng.standard_normal((n[i], d)) * sd
        logits = x @ w + b
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        xs.append(x)
        ys.append(np.argmax(probs / probs.sum(axis=1, keepdims=True), axis=1))
    return np.concatenate(xs), np.concatenate(ys), n


@pytest.mark.parametrize("alpha, beta, iid", [(0.0, 0.0, False), (0.5, 0.5, False),
                                              (1.0, 1.0, False), (0.0, 0.0, True)])
def test_replay_of_documented_draws(alpha, beta, iid):
    data = synthetic(alpha, beta, make_rng(11, Purpose.DATA), num_clients=6, iid=iid)
    x, y, n = replay(alpha, beta, 11, 6, iid=iid)
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, y)
    assert [len(p) for p in data.parts] == n.tolist()
    np.testing.assert_array_equal(np.concatenate(data.parts), np.arange(len(y)))


def test_shapes_sizes_and_determinism():
    a = synthetic(1.0, 1.0, make_rng(0, Purpose.DATA))
    b = synthetic(1.0, 1.0, make_rng(0, Purpose.DATA))
    c = synthetic(1.0, 1.0, make_rng(1, Purpose.DATA))
    assert len(a.parts) == 30 and a.x.shape[1] == 60
    assert min(len(p) for p in a.parts) >= 50
    assert a.y.dtype == np.int64 and 0 <= a.y.min() and a.y.max() <= 9
    np.testing.assert_array_equal(a.x, b.x)
    assert a.x.shape != c.x.shape or not np.array_equal(a.x, c.x)


def test_covariance_and_heterogeneity():
    n = np.full(20, 4000)
    homo = synthetic(0.0, 0.0, make_rng(2, Purpose.DATA), num_clients=20, samples_per_client=n)
    hetero = synthetic(0.0, 5.0, make_rng(2, Purpose.DATA), num_clients=20, samples_per_client=n)
    x0 = homo.x[homo.parts[0]]
    var = x0.var(axis=0)
    expected = np.arange(1, 61) ** -1.2  # Sigma_jj = j^-1.2
    np.testing.assert_allclose(var, expected, rtol=0.1)
    spread = lambda d: np.std([d.x[p].mean() for p in d.parts])  # noqa: E731
    assert spread(hetero) > 3 * spread(homo)  # beta moves the client means B_k apart


def test_iid_shares_one_labelling_function():
    d = synthetic(0.0, 0.0, make_rng(3, Purpose.DATA), num_clients=5, iid=True,
                  samples_per_client=np.full(5, 300))
    # one linear classifier fits all clients exactly: a least-squares one-vs-rest check is too
    # weak, so compare the label distribution of clients, which IID makes alike
    hist = np.array([np.bincount(d.y[p], minlength=10) for p in d.parts]) / 300
    assert np.abs(hist - hist.mean(axis=0)).max() < 0.12


def test_argument_errors():
    rng = make_rng(0, Purpose.DATA)
    with pytest.raises(ValueError, match="alpha must be finite"):
        synthetic(-1.0, 0.0, rng)
    with pytest.raises(ValueError, match="num_clients must be an int"):
        synthetic(0.0, 0.0, rng, num_clients=0)
    with pytest.raises(ValueError, match="samples_per_client must be 3 positive"):
        synthetic(0.0, 0.0, rng, num_clients=3, samples_per_client=[1, 0, 2])
    with pytest.raises(TypeError, match="Generator"):
        synthetic(0.0, 0.0, 0)
