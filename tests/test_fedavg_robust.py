"""TFF's robust aggregator (refsim/fedavg/robust.py) against hand computations; the comparison
with TFF itself is tests/test_validation_tff.py."""

import math

import numpy as np
import pytest
from checks import contiguous_partition, mnist_slice

from refsim.compress import Codec, QuantizerConfig, tff_round_bits
from refsim.fedavg import (AdaptiveNorm, DType, FedAvgConfig, RobustAggregator, RoundMetrics,
                           metrics_csv, run_fedavg, weighted_average)
from refsim.fedavg.robust import (TFF_CLIPPING, TFF_ZEROING, init_robust_state, robust_mean,
                                  tf_sum_f32)
from refsim.nn import logistic, mlp_2nn

F32 = np.float32
MODEL = logistic()  # two tensors: fc.weight (784, 10), fc.bias (10,)


def _update(scale, rng, model=MODEL):
    return (rng.standard_normal(model.num_params) * scale).astype(np.float64)


def _mean(updates, weights, agg=None, state=None, round_=1):
    agg = agg or RobustAggregator()
    state = init_robust_state(agg) if state is None else state
    return robust_mean(updates, weights, state, agg, MODEL, 0, round_, list(range(len(updates))))


def test_defaults_are_tffs():
    assert (TFF_ZEROING.initial, TFF_ZEROING.target_quantile, TFF_ZEROING.learning_rate,
            TFF_ZEROING.multiplier, TFF_ZEROING.increment) == (10.0, 0.98, math.log(10.0), 2, 1)
    assert (TFF_CLIPPING.initial, TFF_CLIPPING.target_quantile,
            TFF_CLIPPING.learning_rate) == (1.0, 0.8, 0.2)
    assert TFF_ZEROING.bound(F32(10.0)) == 21.0 and TFF_CLIPPING.bound(F32(1.0)) == 1.0
    comp = RobustAggregator.tff_compression().codec
    assert comp == Codec(QuantizerConfig(8, stochastic=True), threshold=20_000)


def test_a_zeroed_client_keeps_its_weight():
    """Zeroing replaces the update by 0 but not its weight: the mean is pulled toward 0."""
    rng = np.random.default_rng(0)
    small, big = _update(1e-3, rng), _update(1e-3, rng)
    big[5] = 100.0  # inf-norm 100 > 21
    mean, state, facts = _mean([small, big], [3, 1])
    assert facts["zeroed"] == (1,) and facts["zeroing_norm"] == 21.0
    np.testing.assert_allclose(mean, 3 * small / 4, rtol=1e-15)


def test_clipping_scales_to_the_bound_and_keeps_the_direction():
    rng = np.random.default_rng(1)
    x = _update(0.5, rng)  # L2 norm ~ 44 > 1
    mean, _, facts = _mean([x], [1.0], RobustAggregator(zeroing=None))
    assert facts["clipped"] == (0,) and facts["zeroing_norm"] is None
    assert abs(np.linalg.norm(mean) - 1.0) < 1e-6  # the divisor is float32
    np.testing.assert_allclose(mean / np.linalg.norm(mean), x / np.linalg.norm(x), rtol=1e-12)


def test_zeroing_comes_before_clipping():
    """An update with one entry of 50: its inf-norm 50 > 21 zeroes it. Clipped first (to
    norm 1) it would have been averaged in."""
    x = np.zeros(MODEL.num_params)
    x[0] = 50.0
    y = np.full(MODEL.num_params, 1e-4)
    mean, state, facts = _mean([x, y], [1, 1])
    assert facts["zeroed"] == (0,) and facts["clipped"] == ()
    np.testing.assert_array_equal(mean, y / 2)
    # the clipping estimate saw a norm of 0 for the zeroed client (below): both below 1
    expected = F32(1.0) * F32(math.exp(float(-(F32(0.2) * (F32(1.0) - F32(0.8))))))
    assert state["robust_clipping_estimate"] == expected


def test_quantile_update_by_hand():
    """C <- C * exp(-eta (b - q)): 1 of 4 records <= C = 1 gives b = 0.25."""
    c = TFF_CLIPPING.update(F32(1.0), [F32(0.5), F32(2.0), F32(3.0), F32(4.0)])
    assert c.dtype == np.float32
    assert c == F32(math.exp(0.2 * (0.8 - 0.25)))
    assert TFF_CLIPPING.update(F32(1.0), [F32(1.0)]) < 1.0  # equal counts as below: b = 1


def test_tf_sum_order():
    """TensorFlow's order: under 8 values left to right; 8 values as lanes added as a tree.
    2^24 + 1 rounds back to 2^24 in float32, so the two orders differ here."""
    v = [2.0 ** 24] + [1.0] * 7
    assert float(tf_sum_f32(v[:7])) == 2.0 ** 24  # sequential: every + 1 is lost
    assert float(tf_sum_f32(v)) == 2.0 ** 24 + 6  # ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))
    assert float(tf_sum_f32(v + [3.0])) == 2.0 ** 24 + 8  # plus the rest


def test_without_stages_it_is_tffs_weighted_mean():
    rng = np.random.default_rng(2)
    xs = [_update(0.1, rng) for _ in range(3)]
    mean, state, facts = _mean(xs, [5, 11, 7], RobustAggregator(None, None))
    assert state == {} and facts["zeroed"] == facts["clipped"] == ()
    np.testing.assert_allclose(mean, weighted_average(xs, [5, 11, 7]), rtol=1e-14)


@pytest.mark.parametrize("kwargs, error", [
    (dict(initial=0.0, target_quantile=0.5, learning_rate=0.1), ValueError),
    (dict(initial=1.0, target_quantile=1.5, learning_rate=0.1), ValueError),
    (dict(initial=1.0, target_quantile=0.5, learning_rate=-1.0), ValueError),
    (dict(initial=1.0, target_quantile=0.5, learning_rate=0.1, increment=-1.0), ValueError),
    (dict(initial="1", target_quantile=0.5, learning_rate=0.1), TypeError),
])
def test_bad_adaptive_norms_raise(kwargs, error):
    with pytest.raises(error):
        AdaptiveNorm(**kwargs)


def test_config_checks_the_aggregator():
    with pytest.raises(TypeError, match="RobustAggregator"):
        FedAvgConfig(aggregator="tff-robust")
    with pytest.raises(ValueError, match="codec must be None"):
        FedAvgConfig(codec=Codec(None), aggregator=RobustAggregator.tff_compression())
    with pytest.raises(TypeError, match="AdaptiveNorm"):
        RobustAggregator(zeroing=1.0)
    assert FedAvgConfig(aggregator=RobustAggregator()).to_dict()["aggregator"]["zeroing"][
        "initial"] == 10.0


def _cfg(**kw):
    return FedAvgConfig(**{**dict(fraction=1.0, epochs=2, batch_size=7, lr=0.125, rounds=3,
                                  seed=4, dtype=DType.FLOAT64), **kw})


def test_resume_restores_the_estimates(tmp_path):
    """The estimates are server state (in checkpoint.npz): a run stopped after round 2 and
    resumed equals the uninterrupted run bit for bit."""
    data = mnist_slice("float64", 60, 10)
    parts = contiguous_partition([23, 20, 17])
    cfg = _cfg(aggregator=RobustAggregator())
    full = run_fedavg(cfg, MODEL, data, parts)

    class Stop(Exception):
        pass

    def stop_after_2(row):
        if row.round == 2:
            raise Stop

    with pytest.raises(Stop):
        run_fedavg(cfg, MODEL, data, parts, run_dir=tmp_path, on_round=stop_after_2)
    ckpt = np.load(tmp_path / "checkpoint.npz")
    assert {"state_robust_zeroing_estimate", "state_robust_clipping_estimate"} <= set(ckpt.files)
    resumed = run_fedavg(cfg, MODEL, data, parts, run_dir=tmp_path, resume=True)
    np.testing.assert_array_equal(resumed.params, full.params)
    assert resumed.rounds == full.rounds


def test_tff_compression_bits_in_a_run():
    """With TFF's compression aggregator the uplink carries the encoded w_k z_k (refsim's
    bytes) and tff_uplink_bits is TFF's count: both 2NN kernels (156,800 and 40,000) are
    quantized, the rest travels as float32."""
    data = mnist_slice("float32", 60, 10)
    parts = contiguous_partition([23, 20, 17])
    model = mlp_2nn()
    cfg = _cfg(dtype=DType.FLOAT32, rounds=1, aggregator=RobustAggregator.tff_compression())
    row = run_fedavg(cfg, model, data, parts).rounds[0]
    sizes = [s.size for s in model.layout]
    assert row.tff_uplink_bits == tff_round_bits(sizes, 3, 8)
    one = 8 * len(cfg.aggregator.codec.encode(
        [np.zeros(s.shape, np.float32) for s in model.layout]))
    assert row.uplink_bits == 3 * one < 3 * 32 * model.num_params
    assert row.uplink_entropy_bits is not None


def test_round_metrics_carry_the_robust_facts():
    data = mnist_slice("float64", 60, 10)
    h = run_fedavg(_cfg(rounds=1, aggregator=RobustAggregator()), MODEL, data,
                   contiguous_partition([23, 20, 17]))
    row = h.rounds[0]
    assert row.zeroing_norm == 21.0 and row.clipping_norm == 1.0
    assert RoundMetrics.from_dict(row.to_dict()) == row
    header = metrics_csv(h.rounds).splitlines()[0].split(",")
    assert header[-4:] == ["zeroing_norm", "clipping_norm", "zeroed_clients", "clipped_clients"]
    old = {k: v for k, v in row.to_dict().items() if k not in header[-4:]}
    assert RoundMetrics.from_dict(old).zeroed_clients == ()  # rows written before these fields
