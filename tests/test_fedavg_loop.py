"""The FedAvg loop (refsim/fedavg/loop.py): FedSGD equivalence, determinism, NaN policy, bits."""

import numpy as np
import pytest
from checks import contiguous_partition, mnist_slice

from refsim.backend import Purpose, make_rng
from refsim.compress import Codec, QuantizerConfig
from refsim.fedavg import (DType, FedAvgConfig, FedData, NanPolicy, NonFiniteUpdateError,
                           Weighting, metrics_csv, run_fedavg, run_round,
                           sample_clients)
from refsim.nn import logistic, mlp_2nn

SIZES = [37, 5, 61, 12, 90, 23, 48, 7, 66, 31]  # unequal n_k, K = 10


def _data(dtype: str) -> FedData:
    return mnist_slice(dtype, sum(SIZES), 300)


def _partition():
    return contiguous_partition(SIZES)


def test_fedsgd_is_one_example_weighted_gradient_step_on_the_union():
    """E = 1, B = None, server SGD lr 1: w1 = w0 - eta * grad of the mean loss over the union
    of the sampled clients' examples (i.e. sum n_k g_k / sum n_k)."""
    model, data, parts = mlp_2nn(), _data("float64"), _partition()
    eta = 0.3
    cfg = FedAvgConfig(fraction=0.4, epochs=1, batch_size=None, lr=eta, rounds=1, seed=5,
                       dtype=DType.FLOAT64)
    w0 = model.init(make_rng(5, Purpose.INIT), "keras", np.float64)
    w1, _, info = run_round(w0, {}, 1, cfg, model, data, parts)
    S = sample_clients(5, 1, 10, 4)
    assert info["clients"] == tuple(S.tolist())
    assert len({SIZES[k] for k in S}) == 4  # the sampled clients differ in size
    union = np.concatenate([parts[k] for k in S])
    _, g = model.loss_and_grad(w0, data.x_train[union], data.y_train[union])
    expected = w0 - eta * g
    np.testing.assert_allclose(w1, expected, rtol=1e-12, atol=1e-13,
                               err_msg="FedSGD round vs large-batch step")
    # Discriminating: uniform weighting is a different step.
    uniform = FedAvgConfig(fraction=0.4, epochs=1, batch_size=None, lr=eta, rounds=1, seed=5,
                           dtype=DType.FLOAT64, weighting=Weighting.UNIFORM)
    w1u, _, _ = run_round(w0, {}, 1, uniform, model, data, parts)
    assert np.abs(w1u - expected).max() > 1e-6


def _run(seed=0, **kw):
    cfg = FedAvgConfig(**{"fraction": 0.3, "epochs": 2, "batch_size": 8, "lr": 0.1,
                          "rounds": 3, "seed": seed, **kw})
    return run_fedavg(cfg, logistic(), _data(cfg.dtype.value), _partition())


def test_same_seed_is_bit_identical_and_another_seed_differs():
    a, b, c = _run(0), _run(0), _run(1)
    np.testing.assert_array_equal(a.params, b.params)
    assert metrics_csv(a.rounds) == metrics_csv(b.rounds)
    assert not np.array_equal(a.params, c.params)
    assert [r.clients for r in a.rounds] != [r.clients for r in c.rounds]


def test_metrics_are_consistent():
    h = _run(0, eval_every=2)
    assert [r.round for r in h.rounds] == [1, 2, 3]
    assert [r.test_accuracy is None for r in h.rounds] == [True, False, False]  # 2 and last
    for r in h.rounds:
        assert r.examples == sum(SIZES[k] for k in r.clients)
        assert r.batches == sum(2 * -(-SIZES[k] // 8) for k in r.clients)
        assert r.uplink_bits == 3 * 32 * 7850 == r.tff_uplink_bits
        assert r.broadcast_bits == 3 * 32 * 7850
    assert h.rounds[-1].uplink_bits_cum == 3 * 3 * 32 * 7850
    assert 0.0 <= h.rounds[-1].test_accuracy <= 1.0


def test_codec_in_the_loop_counts_exact_encoded_bits():
    codec = Codec(QuantizerConfig(bits=8, stochastic=True), huffman=True)
    h = _run(0, codec=codec, rounds=1)
    r = h.rounds[0]
    # Re-encode the clients' updates independently and count bytes.
    from refsim.compress import quantize_key
    from refsim.fedavg import ClientHParams, client_update
    model, data, parts = logistic(), _data("float32"), _partition()
    w0 = h.initial_params
    bits, received = 0, []
    for k in r.clients:
        delta, n_k, *_ = client_update(w0, data.x_train, data.y_train, parts[k],
                                   ClientHParams(model, 2, 8, 0.1), 0, 1, k)
        tensors = [delta[:7840].reshape(784, 10), delta[7840:]]
        blob = codec.encode(tensors, seed=quantize_key(0, 1, k))
        bits += 8 * len(blob)
        received.append((np.concatenate([t.ravel() for t in codec.decode(blob)]), n_k))
    assert r.uplink_bits == bits and r.tff_uplink_bits is None
    mean = sum(n * d.astype(np.float64) for d, n in received) / sum(n for _, n in received)
    np.testing.assert_allclose(h.params, w0 + mean.astype(np.float32), rtol=0, atol=1e-6)
    plain = _run(0, rounds=1)
    assert r.uplink_bits < plain.rounds[0].uplink_bits / 3  # 8-bit + Huffman vs float32
    assert not np.array_equal(h.params, plain.params)


class _PoisonedLogistic:
    """logistic(), except that the gradient on any batch made only of 7s is NaN."""

    def __init__(self):
        self._m = logistic()
        self.name, self.layout, self.num_params = self._m.name, self._m.layout, self._m.num_params
        self.num_classes = self._m.num_classes

    def init(self, *a, **k):
        return self._m.init(*a, **k)

    def forward(self, params, x):
        return self._m.forward(params, x)

    def loss_grad_and_logits(self, params, x, y, **checks):
        loss, g, logits = self._m.loss_grad_and_logits(params, x, y, **checks)
        return loss, (np.full_like(g, np.nan) if (y == 7).all() else g), logits


def _poison_partition(data):
    sevens = np.flatnonzero(data.y_train == 7)[:10]
    others = np.flatnonzero(data.y_train != 7)[:30]
    return [others[:15], sevens, others[15:]]  # client 1 is all sevens


def test_nan_update_raises_naming_the_client():
    data = _data("float32")
    cfg = FedAvgConfig(fraction=1.0, batch_size=5, rounds=1)
    with pytest.raises(NonFiniteUpdateError, match="round 1: the update of client 1"):
        run_fedavg(cfg, _PoisonedLogistic(), data, _poison_partition(data))


def test_nan_update_is_dropped_and_recorded():
    data = _data("float32")
    parts = _poison_partition(data)
    cfg = FedAvgConfig(fraction=1.0, batch_size=5, rounds=2, nan_policy=NanPolicy.DROP)
    h = run_fedavg(cfg, _PoisonedLogistic(), data, parts)
    assert [r.dropped for r in h.rounds] == [(1,), (1,)]
    assert np.isfinite(h.params).all()
    assert h.rounds[0].uplink_bits == 2 * 32 * 7850
    # Round 1 is exactly the weighted mean of the two healthy clients' updates.
    w0 = h.initial_params
    from refsim.fedavg import ClientHParams, client_update
    hp = ClientHParams(logistic(), 1, 5, 0.1)
    d0, n0, *_ = client_update(w0, data.x_train, data.y_train, parts[0], hp, 0, 1, 0)
    d2, n2, *_ = client_update(w0, data.x_train, data.y_train, parts[2], hp, 0, 1, 2)
    w1 = w0 + ((n0 * d0.astype(np.float64) + n2 * d2.astype(np.float64)) / (n0 + n2)
               ).astype(np.float32)
    np.testing.assert_array_equal(run_fedavg(FedAvgConfig(
        fraction=1.0, batch_size=5, rounds=1, nan_policy=NanPolicy.DROP),
        _PoisonedLogistic(), data, parts).params, w1)


def test_all_clients_dropped_raises():
    data = _data("float32")
    sevens = np.flatnonzero(data.y_train == 7)[:10]
    cfg = FedAvgConfig(fraction=1.0, batch_size=5, rounds=1, nan_policy=NanPolicy.DROP)
    with pytest.raises(ValueError, match="every sampled client was dropped"):
        run_fedavg(cfg, _PoisonedLogistic(), data, [sevens[:5], sevens[5:]])


def test_data_dtype_must_match_config():
    with pytest.raises(TypeError, match="config.dtype"):
        run_fedavg(FedAvgConfig(dtype=DType.FLOAT64), logistic(), _data("float32"), _partition())


def test_holdout_split_is_disjoint_covering_and_keyed_by_client():
    from refsim.fedavg import holdout_split
    parts = _partition()
    train, held = holdout_split(parts, 0.25, seed=4)
    for k, (p, tr, ev) in enumerate(zip(parts, train, held)):
        assert len(ev) == int(np.floor(0.25 * len(p)))
        assert np.array_equal(np.sort(np.concatenate([tr, ev])), p)
        assert len(np.intersect1d(tr, ev)) == 0
        perm = np.random.default_rng([4, 5, k]).permutation(len(p))  # Purpose.EVAL_SPLIT = 5
        assert np.array_equal(ev, np.sort(p[perm[:len(ev)]]))


def test_federated_evaluation_is_example_weighted_over_held_out_data():
    from refsim.fedavg import evaluate, holdout_split
    h = _run(0, eval_holdout=0.3, rounds=2)
    model, data = logistic(), _data("float32")
    _, held = holdout_split(_partition(), 0.3, seed=0)
    n = [len(e) for e in held]
    per = [evaluate(model, h.params, data.x_train[e], data.y_train[e]) for e in held if len(e)]
    acc = sum(nk * a for nk, (_, a) in zip([x for x in n if x], per)) / sum(n)
    assert h.rounds[-1].fed_eval_accuracy == pytest.approx(acc, rel=1e-12)
    # Held-out examples are not trained on: the examples count drops accordingly.
    for r in h.rounds:
        assert r.examples == sum(SIZES[k] - n[k] for k in r.clients)
    assert _run(0, rounds=1).rounds[0].fed_eval_accuracy is None


def test_fraction_evaluate_evaluates_refsims_draw_of_the_clients():
    from refsim.fedavg import evaluation_clients, federated_evaluate, holdout_split
    h = _run(0, eval_holdout=0.3, rounds=2, fraction_evaluate=0.5)
    model, data = logistic(), _data("float32")
    _, held = holdout_split(_partition(), 0.3, seed=0)
    cfg = FedAvgConfig(fraction_evaluate=0.5)
    drawn = [evaluation_clients(cfg, t, 10).tolist() for t in (1, 2)]
    assert all(len(d) == 5 and d == sorted(set(d)) for d in drawn) and drawn[0] != drawn[1]
    assert drawn[0] == np.sort(make_rng(0, Purpose.EVAL_SAMPLE, 1).choice(
        10, size=5, replace=False)).tolist()
    expected = federated_evaluate(model, h.params, data.x_train, data.y_train,
                                  [held[k] for k in drawn[1]])
    assert (h.rounds[-1].fed_eval_loss, h.rounds[-1].fed_eval_accuracy) == expected
    everyone = _run(0, eval_holdout=0.3, rounds=2)
    np.testing.assert_array_equal(everyone.params, h.params)  # training is unchanged
    assert everyone.rounds[-1].fed_eval_loss != h.rounds[-1].fed_eval_loss
    with pytest.raises(ValueError, match=r"fraction_evaluate must be in \(0.0, 1.0\]"):
        FedAvgConfig(fraction_evaluate=0.0)
