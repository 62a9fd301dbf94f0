"""ServerSemantics.TFF (refsim/fedavg/server_tff.py) against hand computations; the comparison
with TFF itself is tests/test_validation_tff.py."""

import math

import numpy as np
import pytest

from refsim.fedavg import (ServerOpt, ServerOptConfig, ServerSemantics, init_server_state,
                           server_update)
from refsim.fedavg.server_tff import tff_normalized_lr

F32 = np.float32


def _steps(opt, w, deltas):
    state = init_server_state(opt, w)
    for t, d in enumerate(deltas, start=1):
        w, state = server_update(w, d, state, opt, round_=t)
    return w, state


def test_tff_defaults_are_tffs_builders():
    assert ServerOptConfig.tff_adam(0.1) == ServerOptConfig(
        ServerOpt.ADAM, 0.1, 0.0, 0.9, 0.999, 1e-7, semantics=ServerSemantics.TFF)
    yogi = ServerOptConfig.tff_yogi(0.1)
    assert (yogi.beta2, yogi.tau, yogi.initial_preconditioner) == (0.999, 1e-3, 1e-6)
    ada = ServerOptConfig.tff_adagrad(0.1)
    assert (ada.beta1, ada.beta2, ada.tau, ada.initial_preconditioner) == (0, 0, 1e-7, 0.1)
    assert ServerOptConfig.tff_sgdm().kind is ServerOpt.SGD
    assert ServerOptConfig.tff_sgdm(0.5, 0.9).kind is ServerOpt.MOMENTUM
    assert ServerOptConfig().semantics is ServerSemantics.FLOWER  # Flower stays the default


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind=ServerOpt.ADAM, bias_correction=True), "always bias-correct"),
    (dict(kind=ServerOpt.ADAM, initial_preconditioner=0.1), "yogi and adagrad"),
    (dict(kind=ServerOpt.ADAGRAD), "no moments"),
    (dict(kind=ServerOpt.YOGI, initial_preconditioner=-1.0), "initial_preconditioner"),
])
def test_tff_semantics_rejects_what_tff_does_not_have(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ServerOptConfig(semantics=ServerSemantics.TFF, **kwargs)


def test_flower_semantics_has_no_initial_preconditioner():
    with pytest.raises(ValueError, match="Flower starts from 0"):
        ServerOptConfig(ServerOpt.YOGI, initial_preconditioner=1e-6)
    with pytest.raises(TypeError, match="semantics"):
        ServerOptConfig(semantics="tff")


def test_tff_state_initialisation():
    w = np.zeros(3)
    assert init_server_state(ServerOptConfig.tff_sgdm(), w) == {}
    assert set(init_server_state(ServerOptConfig.tff_sgdm(1.0, 0.5), w)) == {"accumulator"}
    adam = init_server_state(ServerOptConfig.tff_adam(0.1), w)
    assert not adam["accumulator"].any() and not adam["preconditioner"].any()
    yogi = init_server_state(ServerOptConfig.tff_yogi(0.1), w)
    np.testing.assert_array_equal(yogi["preconditioner"], np.float64(F32(1e-6)))  # float32 1e-6
    ada = init_server_state(ServerOptConfig.tff_adagrad(0.1), w)
    assert set(ada) == {"preconditioner"}
    np.testing.assert_array_equal(ada["preconditioner"], np.float64(F32(0.1)))


def test_tff_adam_two_steps_by_hand():
    """b1 = 0.5, b2 = 0.75, eps = 0.125, lr = 0.5: float32 numbers, so float64 by hand is exact
    up to rounding; bias correction with exponent t (Flower: t + 1)."""
    opt = ServerOptConfig.tff_adam(0.5, 0.5, 0.75, 0.125)
    w0, d1, d2 = np.array([1.0, -2.0]), np.array([0.5, 0.25]), np.array([-0.25, 1.0])
    g1, g2 = -d1, -d2
    a1, p1 = 0.5 * g1, 0.25 * g1 ** 2
    w1 = w0 - 0.5 * math.sqrt(1 - 0.75) / (1 - 0.5) * a1 / (np.sqrt(p1) + 0.125)
    a2, p2 = a1 + (g2 - a1) * 0.5, p1 + (g2 ** 2 - p1) * 0.25
    w2 = w1 - 0.5 * math.sqrt(1 - 0.75 ** 2) / (1 - 0.5 ** 2) * a2 / (np.sqrt(p2) + 0.125)
    got, state = _steps(opt, w0, [d1, d2])
    np.testing.assert_allclose(got, w2, rtol=1e-6)  # lr_t is float32 in TFF (and here)
    np.testing.assert_allclose(state["accumulator"], a2, rtol=1e-15)
    np.testing.assert_allclose(state["preconditioner"], p2, rtol=1e-15)
    flower, _ = _steps(ServerOptConfig.fedadam(0.5, 0.5, 0.75, 0.125), w0, [d1, d2])
    assert np.abs(flower - got).max() > 1e-3  # Flower's exponent t + 1 is another step


def test_tff_yogi_sign_rule_and_initial_preconditioner():
    """p <- p + (1 - b2) sign(g^2 - p) g^2 from p_0 = 1e-6 (the code; TFF's docstring writes
    sign(g - s)); one step by hand."""
    opt = ServerOptConfig.tff_yogi(0.25, beta1=0.5, beta2=0.75, epsilon=0.125,
                                   initial_preconditioner=0.25)
    w0, d = np.array([0.0, 0.0]), np.array([0.25, 1.0])  # g^2 = 1/16 < p_0, 1 > p_0
    got, state = _steps(opt, w0, [d])
    p = 0.25 + 0.25 * np.sign(d ** 2 - 0.25) * d ** 2
    np.testing.assert_allclose(state["preconditioner"], p, rtol=1e-15)
    lr_t = 0.25 * math.sqrt(0.25) / 0.5
    np.testing.assert_allclose(got, -lr_t * (0.5 * -d) / (np.sqrt(p) + 0.125), rtol=1e-7)


def test_tff_adagrad_epsilon_inside_the_square_root():
    opt = ServerOptConfig.tff_adagrad(0.5, initial_preconditioner=0.25, epsilon=0.125)
    got, state = _steps(opt, np.array([1.0]), [np.array([0.5])])
    np.testing.assert_array_equal(state["preconditioner"], [0.25 + 0.25])
    np.testing.assert_allclose(got, [1.0 + 0.5 * 0.5 / math.sqrt(0.5 + 0.125)], rtol=1e-15)


def test_tff_momentum_equals_flowers_with_float32_hyperparameters():
    ds = [np.array([0.5, -0.25]), np.array([0.125, 1.0]), np.array([-1.0, 0.5])]
    w = np.array([1.0, 2.0])
    tff, s_tff = _steps(ServerOptConfig.tff_sgdm(0.5, 0.875), w, ds)
    flower, s_fl = _steps(ServerOptConfig(ServerOpt.MOMENTUM, 0.5, 0.875), w, ds)
    np.testing.assert_array_equal(tff, flower)
    np.testing.assert_array_equal(s_tff["accumulator"], s_fl["v"])


def test_tff_hyperparameters_are_float32_numbers():
    """TFF keeps Python-float hyperparameters as float32: lr = 0.05 steps by float32(0.05)."""
    d = np.array([1.0])
    got, _ = server_update(np.array([0.0]), d, {}, ServerOptConfig.tff_sgdm(0.05), round_=1)
    assert got[0] == float(F32(0.05)) != 0.05
    flower, _ = server_update(np.array([0.0]), d, {}, ServerOptConfig(lr=0.05), round_=1)
    assert flower[0] == 0.05


def test_tff_normalized_lr_is_float32():
    """In float32, 1 - 0.999^t cancels: TFF's bias-corrected lr at t = 3 is ~4e-6 (relative)
    away from the float64 formula, whatever the model's dtype."""
    v = tff_normalized_lr(0.001, 0.9, 0.999, 3)
    assert v.dtype == np.float32
    exact = 0.001 * math.sqrt(1 - 0.999 ** 3) / (1 - 0.9 ** 3)
    assert 1e-7 < abs(float(v) - exact) / exact < 1e-4


def test_tff_semantics_keeps_float32_and_does_not_modify_inputs():
    opt = ServerOptConfig.tff_yogi(0.01)
    w = np.array([0.5, -0.5], np.float32)
    d = np.array([0.25, 0.125], np.float32)
    state = init_server_state(opt, w)
    before = {k: v.copy() for k, v in state.items()}
    new, new_state = server_update(w, d, state, opt, round_=1)
    assert new.dtype == np.float32 and all(v.dtype == np.float32 for v in new_state.values())
    for k in before:
        np.testing.assert_array_equal(state[k], before[k])
