"""weighted_average and server_update (refsim/fedavg/server.py) against hand computations."""

import numpy as np
import pytest

from refsim.fedavg import ServerOpt, ServerOptConfig, init_server_state, server_update
from refsim.fedavg import weighted_average


def test_weighted_average_matches_hand_computation_with_unequal_weights():
    x1 = np.array([1.0, -2.0, 0.5])
    x2 = np.array([3.0, 4.0, -1.0])
    x3 = np.array([-6.0, 0.0, 2.0])
    got = weighted_average([x1, x2, x3], [600, 100, 300])
    # (600*x1 + 100*x2 + 300*x3) / 1000, worked out by hand:
    expected = np.array([(600 * 1.0 + 100 * 3.0 + 300 * -6.0) / 1000,   # -0.9
                         (600 * -2.0 + 100 * 4.0 + 0.0) / 1000,         # -0.8
                         (600 * 0.5 + 100 * -1.0 + 300 * 2.0) / 1000])  # 0.8
    np.testing.assert_allclose(got, [-0.9, -0.8, 0.8], rtol=0, atol=1e-15)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    # The plain (unweighted) mean would be different: the weights matter.
    assert not np.allclose(got, (x1 + x2 + x3) / 3)


def test_weighted_average_keeps_float32_and_sums_in_float64():
    xs = [np.array([1e8, 1.0], np.float32), np.array([-1e8, 1.0], np.float32)]
    got = weighted_average(xs, [1, 1])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.array([0.0, 1.0], np.float32))


@pytest.mark.parametrize("weights", [[0, 0], [0.0]])
def test_zero_total_weight_raises(weights):
    updates = [np.ones(3)] * len(weights)
    with pytest.raises(ValueError, match="total weight"):
        weighted_average(updates, weights)


@pytest.mark.parametrize("updates, weights", [([], []), ([np.ones(2)], [1, 2]),
                                              ([np.ones(2)], [-1]), ([np.ones(2)], [np.nan])])
def test_bad_weights_raise(updates, weights):
    with pytest.raises(ValueError):
        weighted_average(updates, weights)


def test_sgd_server_step_with_lr_one_is_plain_fedavg():
    w = np.array([0.25, -1.0, 3.0])
    mean_delta = np.array([0.5, 0.125, -2.0])
    new, state = server_update(w, mean_delta, {}, ServerOptConfig())
    np.testing.assert_array_equal(new, w + mean_delta)
    assert state == {}
    half, _ = server_update(w, mean_delta, {}, ServerOptConfig(lr=0.5))
    np.testing.assert_array_equal(half, w + 0.5 * mean_delta)


def test_momentum_server_step_two_rounds_by_hand():
    opt = ServerOptConfig(ServerOpt.MOMENTUM, lr=0.5, momentum=0.9)
    w = np.array([1.0, 2.0])
    state = init_server_state(opt, w)
    d1, d2 = np.array([0.2, -0.4]), np.array([0.1, 0.3])
    w1, state = server_update(w, d1, state, opt)
    w2, state = server_update(w1, d2, state, opt)
    v1 = -d1
    v2 = 0.9 * v1 - d2
    np.testing.assert_allclose(w1, w - 0.5 * v1, rtol=0, atol=1e-15)
    np.testing.assert_allclose(w2, w - 0.5 * v1 - 0.5 * v2, rtol=0, atol=1e-15)
    np.testing.assert_allclose(state["v"], v2, rtol=0, atol=1e-15)


def _flower_step(kind, w, delta, m, v, t, eta, beta1, beta2, tau, bias_correction):
    """Flower's FedAdam / FedYogi / FedAdagrad ``aggregate_fit`` update, transcribed for one
    tensor in float64 (adap/flower: framework/py/flwr/server/strategy/fed{adam,yogi,adagrad}.py)."""
    m = beta1 * m + (1 - beta1) * delta
    if kind == "adam":
        v = beta2 * v + (1 - beta2) * delta * delta
    elif kind == "yogi":
        v = v - (1.0 - beta2) * delta * delta * np.sign(v - delta * delta)
    else:
        v = v + delta * delta
    if bias_correction:
        eta = eta * np.sqrt(1 - beta2 ** (t + 1.0)) / (1 - beta1 ** (t + 1.0))
    return w + eta * m / (np.sqrt(v) + tau), m, v


@pytest.mark.parametrize("opt, kind", [
    (ServerOptConfig.fedadam(), "adam"),
    (ServerOptConfig.fedadam(bias_correction=False, tau=1e-3), "adam"),
    (ServerOptConfig.fedyogi(), "yogi"),
    (ServerOptConfig.fedadagrad(), "adagrad"),
])
def test_adaptive_server_optimizers_follow_flowers_formulas_for_three_rounds(opt, kind):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(6)
    state = init_server_state(opt, w)
    ref_w, m, v = w.copy(), np.zeros(6), np.zeros(6)
    for t in (1, 2, 3):
        delta = rng.standard_normal(6) * 10.0 ** -t  # shrinking updates: v's sign flips (Yogi)
        w, state = server_update(w, delta, state, opt, t)
        ref_w, m, v = _flower_step(kind, ref_w, delta, m, v, t, opt.lr, opt.beta1, opt.beta2,
                                   opt.tau, opt.bias_correction)
        np.testing.assert_allclose(w, ref_w, rtol=1e-13, atol=0, err_msg=f"{kind} round {t}")
        np.testing.assert_allclose(state["v"], v, rtol=1e-13, atol=0)


def test_adagrad_first_step_is_lr_times_sign():
    """Zero state, beta1 = 0: m = Delta, v = Delta^2, so the step is lr * Delta / (|Delta| + tau)."""
    w = np.zeros(3)
    delta = np.array([0.5, -2.0, 1e-3])
    new, _ = server_update(w, delta, init_server_state(ServerOptConfig.fedadagrad(lr=0.1), w),
                           ServerOptConfig.fedadagrad(lr=0.1))
    np.testing.assert_allclose(new, [0.1, -0.1, 0.1], rtol=1e-6)


def test_adaptive_config_validation():
    with pytest.raises(ValueError, match=r"server.beta2 must be in \[0.0, 1.0\)"):
        ServerOptConfig(ServerOpt.ADAM, lr=0.1, beta2=1.0)
    with pytest.raises(ValueError, match="server.tau must be in"):
        ServerOptConfig(ServerOpt.YOGI, lr=0.1, tau=0.0)
    with pytest.raises(ValueError, match="bias_correction applies to ServerOpt.ADAM only"):
        ServerOptConfig(ServerOpt.YOGI, bias_correction=True)
    with pytest.raises(ValueError, match="server.momentum must be 0 with ServerOpt.ADAM"):
        ServerOptConfig(ServerOpt.ADAM, momentum=0.5)
