"""The four models: parameter counts and layout, initialisers, whole-model gradient checks,
the Keras converter against an independent NHWC forward pass, and bad input."""

import math

import numpy as np
import pytest

from checks import check_grad
from refsim.nn import (cnn_cifar, cnn_mnist, from_keras_weights, from_torch_state_dict, logistic,
                       mlp_2nn, sgd_step, to_keras_weights, to_torch_state_dict)

MODELS = {"cnn_mnist": cnn_mnist, "mlp_2nn": mlp_2nn, "logistic": logistic, "cnn_cifar": cnn_cifar}
EXPECTED_PARAMS = {"cnn_mnist": 1_663_370, "mlp_2nn": 199_210, "logistic": 7_850, "cnn_cifar": 62_006}


def _batch(model, n, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *model.input_shape)).astype(dtype)
    y = rng.integers(0, model.num_classes, size=n)
    return x, y


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_and_layout(name):
    model = MODELS[name]()
    assert model.num_params == EXPECTED_PARAMS[name]
    offset = 0
    for spec in model.layout:  # contiguous, weight then bias, in layer order
        assert spec.offset == offset, spec
        offset += spec.size
    assert offset == model.num_params
    names = [s.name for s in model.layout]
    assert names[0::2] == [n.replace(".bias", ".weight") for n in names[1::2]]


def test_cnn_mnist_layout_is_the_documented_one():
    assert [(s.name, s.shape, s.offset) for s in cnn_mnist().layout] == [
        ("conv1.weight", (32, 1, 5, 5), 0), ("conv1.bias", (32,), 800),
        ("conv2.weight", (64, 32, 5, 5), 832), ("conv2.bias", (64,), 52032),
        ("fc1.weight", (3136, 512), 52096), ("fc1.bias", (512,), 1657728),
        ("fc2.weight", (512, 10), 1658240), ("fc2.bias", (10,), 1663360)]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("scheme", ["keras", "torch"])
def test_init_is_deterministic_and_within_the_scheme_bounds(name, scheme):
    model = MODELS[name]()
    p = model.init(np.random.default_rng(3), scheme, np.float64)
    np.testing.assert_array_equal(p, model.init(np.random.default_rng(3), scheme, np.float64))
    p32 = model.init(np.random.default_rng(3), scheme, np.float32)
    np.testing.assert_array_equal(p32, p.astype(np.float32))
    view = model.views(p)
    for layer in model.layers:
        if not hasattr(layer, "name"):
            continue
        w, b = view[f"{layer.name}.weight"], view[f"{layer.name}.bias"]
        receptive = layer.kernel ** 2 if hasattr(layer, "kernel") else 1
        fan_in = (layer.in_channels if hasattr(layer, "kernel") else layer.in_features) * receptive
        fan_out = (layer.out_channels if hasattr(layer, "kernel") else layer.out_features) * receptive
        if scheme == "keras":
            bound, b_bound = math.sqrt(6 / (fan_in + fan_out)), 0.0
        else:
            bound = b_bound = 1 / math.sqrt(fan_in)
        assert np.abs(w).max() <= bound and np.abs(b).max() <= b_bound, layer
        if w.size >= 1000:  # a uniform sample of 1000+ nearly reaches its bound
            assert np.abs(w).max() > 0.99 * bound, layer


@pytest.mark.parametrize("name", MODELS)
def test_model_gradient_matches_central_differences(name):
    model = MODELS[name]()
    rng = np.random.default_rng(11)
    params = model.init(rng, "torch", np.float64)
    x, y = _batch(model, 3, np.float64, seed=12)
    _, grad = model.loss_and_grad(params, x, y)
    views, gviews = model.views(params), model.views(grad)
    for spec in model.layout:
        check_grad(lambda: model.loss_and_grad(params, x, y)[0], views[spec.name],
                   gviews[spec.name], f"{name} parameter {spec.name}", rng, num_samples=6,
                   eps=1e-5, min_fraction=1e-2)


@pytest.mark.parametrize("name", MODELS)
def test_loss_at_init_is_about_log_k_and_sgd_reduces_it(name):
    model = MODELS[name]()
    params = model.init(np.random.default_rng(0), "keras", np.float32)
    x, y = _batch(model, 8, np.float32, seed=1)
    loss, grad = model.loss_and_grad(params, x, y)
    assert abs(loss - math.log(10)) < 1.0
    assert grad.dtype == np.float32 and grad.shape == params.shape
    for _ in range(3):
        params = sgd_step(params, model.loss_and_grad(params, x, y)[1], 0.05)
    assert model.loss_and_grad(params, x, y)[0] < loss


# -- converters --------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_torch_and_keras_converters_round_trip(name):
    model = MODELS[name]()
    params = model.init(np.random.default_rng(5), "torch", np.float64)
    state = to_torch_state_dict(model, params)
    assert list(state) == [s.name for s in model.layout]
    np.testing.assert_array_equal(from_torch_state_dict(model, state), params)
    np.testing.assert_array_equal(from_keras_weights(model, to_keras_weights(model, params)), params)


def _keras_forward(model, weights, x_nhwc):
    """An independent NHWC forward pass that uses Keras layouts (HWIO, (I, O), NHWC flatten)."""
    it = iter(weights)
    h = x_nhwc
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            kernel, bias = next(it), next(it)  # (K, K, C, O), (O,)
            K = kernel.shape[0]
            if layer.padding == "same":
                h = np.pad(h, ((0, 0), ((K - 1) // 2, K // 2), ((K - 1) // 2, K // 2), (0, 0)))
            Ho, Wo = h.shape[1] - K + 1, h.shape[2] - K + 1
            h = sum(np.einsum("nhwc,co->nhwo", h[:, p:p + Ho, q:q + Wo, :], kernel[p, q])
                    for p in range(K) for q in range(K)) + bias
        elif kind == "MaxPool2D":
            Ho, Wo = h.shape[1] // 2, h.shape[2] // 2
            h = h[:, :2 * Ho, :2 * Wo].reshape(h.shape[0], Ho, 2, Wo, 2, h.shape[3]).max(axis=(2, 4))
        elif kind == "ReLU":
            h = np.maximum(h, 0)
        elif kind == "Flatten":
            h = h.reshape(h.shape[0], -1)  # NHWC order, as keras.layers.Flatten
        else:
            kernel, bias = next(it), next(it)
            h = h @ kernel + bias
    return h


@pytest.mark.parametrize("name", MODELS)
def test_keras_weights_reproduce_the_logits_in_nhwc(name):
    model = MODELS[name]()
    params = model.init(np.random.default_rng(6), "keras", np.float64)
    params += 0.01 * np.random.default_rng(7).standard_normal(params.shape)  # non-zero biases
    x, _ = _batch(model, 2, np.float64, seed=8)
    logits_keras = _keras_forward(model, to_keras_weights(model, params), x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(model.forward(params, x), logits_keras, rtol=1e-10, atol=1e-12)


def test_keras_dense_after_flatten_is_permuted_not_just_transposed():
    model = cnn_mnist()
    params = np.arange(model.num_params, dtype=np.float64)
    fc1_keras = to_keras_weights(model, params)[4]  # (3136, 512) rows in (h, w, c) order
    fc1 = model.views(params)["fc1.weight"]  # rows in (c, h, w) order
    c, h, w = 5, 2, 3
    np.testing.assert_array_equal(fc1_keras[(h * 7 + w) * 64 + c], fc1[(c * 7 + h) * 7 + w])


def test_converters_reject_wrong_names_and_shapes():
    model = logistic()
    state = to_torch_state_dict(model, model.init(np.random.default_rng(0)))
    with pytest.raises(ValueError, match="keys"):
        from_torch_state_dict(model, {"weight": state["fc.weight"], "bias": state["fc.bias"]})
    state["fc.weight"] = state["fc.weight"].T
    with pytest.raises(ValueError, match=r"fc.weight must have PyTorch shape \(10, 784\)"):
        from_torch_state_dict(model, state)
    with pytest.raises(ValueError, match="expected 2 Keras arrays"):
        from_keras_weights(model, [np.zeros((784, 10), np.float32)])


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("mutate, error, message", [
    (lambda p, x, y: (p, x[:, :, :27], y), ValueError, r"x must have shape \(N, 1, 28, 28\)"),
    (lambda p, x, y: (p, x[0], y), ValueError, "x must have shape"),
    (lambda p, x, y: (p, x[:0], y[:0]), ValueError, "N >= 1"),
    (lambda p, x, y: (p, x.astype(np.float64), y), TypeError, "x has dtype float64"),
    (lambda p, x, y: (p, (x * 255).astype(np.uint8), y), TypeError, "x has dtype uint8"),
    (lambda p, x, y: (p, np.where(x > 0.9, np.nan, x).astype(np.float32), y), ValueError, "NaN or Inf"),
    (lambda p, x, y: (p, np.where(x > 0.9, np.inf, x).astype(np.float32), y), ValueError, "NaN or Inf"),
    (lambda p, x, y: (p, x, y + 10), ValueError, r"labels must lie in \[0, 10\)"),
    (lambda p, x, y: (p, x, y.astype(np.float32)), TypeError, "labels must be an integer"),
    (lambda p, x, y: (p, x, y[:-1]), ValueError, "labels must have shape"),
    (lambda p, x, y: (p[:-1], x, y), ValueError, "flat vector of length 7850"),
    (lambda p, x, y: (p.reshape(10, -1), x, y), ValueError, "flat vector of length 7850"),
    (lambda p, x, y: (p.astype(np.int32), x, y), TypeError, "float32 or float64"),
    (lambda p, x, y: (list(p), x, y), TypeError, "params must be an ndarray"),
])
def test_bad_input_raises_a_clear_error(mutate, error, message):
    model = logistic()
    params = model.init(np.random.default_rng(0))
    x, y = _batch(model, 4, np.float32, seed=0)
    p, x, y = mutate(params, x, y)
    with pytest.raises(error, match=message):
        model.loss_and_grad(p, x, y)


def test_init_rejects_bad_arguments():
    model = logistic()
    with pytest.raises(ValueError, match="scheme"):
        model.init(np.random.default_rng(0), "xavier")
    with pytest.raises(TypeError, match="Generator"):
        model.init(0)
    with pytest.raises(TypeError, match="float32 or float64"):
        model.init(np.random.default_rng(0), dtype=np.float16)
