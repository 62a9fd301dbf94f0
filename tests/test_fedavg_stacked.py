"""Clients trained side by side (refsim/nn/stacked.py, refsim/fedavg/stacked.py) against the
one-at-a-time reference path: the same function of each client's data, to float rounding.

Tolerances: float64 rtol 1e-10 for one pass and 1e-9 for whole runs (only the summation order
inside matrix products differs); float32 the dtype tolerance of tests/checks.py.
"""

import numpy as np
import pytest
from checks import contiguous_partition, mnist_slice, tolerance

from refsim.backend import Purpose, make_rng
from refsim.fedavg import (ClientHParams, DType, FedAvgConfig, client_update, client_updates,
                           run_fedavg, stacked_client_update)
from refsim.nn import cnn_mnist, logistic, mlp_2nn
from refsim.nn.stacked import stacked_loss_grad_and_logits, stacked_views

MODELS = {"2nn": mlp_2nn, "cnn": cnn_mnist, "logistic": logistic}


def _stacked_inputs(model, dtype, M=3, b=5, seed=0):
    rng = make_rng(seed, Purpose.DATA)
    W = np.stack([model.init(make_rng(seed + i, Purpose.INIT), "torch", dtype)
                  for i in range(M)])  # (M, P), a different model per client
    x = rng.random((M, b, *model.input_shape)).astype(dtype)
    y = rng.integers(0, model.num_classes, (M, b))
    return W, x, y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(MODELS))
def test_one_stacked_pass_is_each_clients_own_pass(name, dtype):
    model = MODELS[name]()
    W, x, y = _stacked_inputs(model, dtype)
    losses, G, logits = stacked_loss_grad_and_logits(model, W, x, y)
    assert losses.dtype == np.float64 and G.shape == W.shape and G.dtype == dtype
    tol = {"rtol": 1e-10, "atol": 1e-13} if dtype == np.float64 else tolerance(dtype)
    for i in range(W.shape[0]):
        loss, grad, lg = model.loss_grad_and_logits(W[i], x[i], y[i])
        np.testing.assert_allclose(losses[i], loss, **tol, err_msg=f"client {i} loss")
        np.testing.assert_allclose(logits[i], lg, **tol, err_msg=f"client {i} logits")
        scale = float(np.abs(grad).max())
        np.testing.assert_allclose(G[i], grad, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                   err_msg=f"client {i} gradient")


def test_stacked_views_and_bad_shapes_are_named():
    model = mlp_2nn()
    W, x, y = _stacked_inputs(model, np.float32, M=2, b=3)
    views = stacked_views(model, W)
    assert views["fc1.weight"].shape == (2, 784, 200)
    np.testing.assert_array_equal(views["fc3.bias"][1], model.views(W[1])["fc3.bias"])
    with pytest.raises(ValueError, match=r"stacked parameters must have shape \(M, 199210\)"):
        stacked_loss_grad_and_logits(model, W[:, :-1], x, y)
    with pytest.raises(ValueError, match="x must be"):
        stacked_loss_grad_and_logits(model, W, x[:1], y)
    with pytest.raises(ValueError, match="labels must have shape"):
        stacked_loss_grad_and_logits(model, W, x, y[:, :2])


SIZES = [23, 23, 23, 11, 23, 11]  # two size classes, K = 6


@pytest.mark.parametrize("name", ["2nn", "cnn"])
def test_stacked_client_update_is_client_update_for_each_client(name):
    """E = 2, B = 4 (a partial last batch): results, counts and metrics per client."""
    model = MODELS[name]()
    data = mnist_slice("float64", sum(SIZES), 10)
    parts = contiguous_partition(SIZES)
    params = model.init(make_rng(1, Purpose.INIT), "keras", np.float64)
    hp = ClientHParams(model, 2, 4, 0.05)
    clients = [0, 1, 4]
    got = stacked_client_update(params, data.x_train, data.y_train, [parts[k] for k in clients],
                                hp, 3, 2, clients)
    for k, r in zip(clients, got):
        ref = client_update(params, data.x_train, data.y_train, parts[k], hp, 3, 2, k)
        assert (r.num_examples, r.num_batches, r.num_seen, r.num_correct) == \
            (ref.num_examples, ref.num_batches, ref.num_seen, ref.num_correct)
        np.testing.assert_allclose(r.loss_sum, ref.loss_sum, rtol=1e-10)
        np.testing.assert_allclose(r.delta, ref.delta, rtol=1e-9, atol=1e-12,
                                   err_msg=f"client {k}")


def test_clients_of_different_sizes_cannot_be_stacked_but_are_grouped():
    model = logistic()
    data = mnist_slice("float32", sum(SIZES), 10)
    parts = contiguous_partition(SIZES)
    params = model.init(make_rng(0, Purpose.INIT))
    hp = ClientHParams(model, 1, 5, 0.1)
    with pytest.raises(ValueError, match="equal n_k"):
        stacked_client_update(params, data.x_train, data.y_train, parts[2:4], hp, 0, 1, [2, 3])
    order = [i for i, _ in client_updates(params, data.x_train, data.y_train, parts, hp, 0, 1,
                                          list(range(6)), stack=4)]
    assert order == [0, 1, 2, 4, 3, 5]  # groups [0, 1, 2, 4] and [3, 5]


@pytest.mark.parametrize("name", ["2nn", "cnn"])
def test_a_run_with_client_stack_matches_the_reference_run(name):
    """float64, 3 rounds, C = 1 over two size classes: clients, metrics and weights."""
    data, parts = mnist_slice("float64", sum(SIZES), 50), contiguous_partition(SIZES)
    base = dict(fraction=1.0, epochs=1, batch_size=5, lr=0.05, rounds=3, seed=4,
                dtype=DType.FLOAT64)
    ref = run_fedavg(FedAvgConfig(**base), MODELS[name](), data, parts)
    got = run_fedavg(FedAvgConfig(client_stack=3, **base), MODELS[name](), data, parts)
    for a, b in zip(got.rounds, ref.rounds):
        assert (a.clients, a.examples, a.batches) == (b.clients, b.examples, b.batches)
        for field in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-9,
                                       err_msg=f"round {a.round} {field}")
    np.testing.assert_allclose(got.params, ref.params, rtol=1e-9, atol=1e-12)


def test_client_stack_runs_repeat_bit_for_bit_and_the_field_is_checked():
    data, parts = mnist_slice("float32", sum(SIZES), 50), contiguous_partition(SIZES)
    cfg = FedAvgConfig(fraction=1.0, batch_size=5, rounds=2, client_stack=6)
    a = run_fedavg(cfg, mlp_2nn(), data, parts)
    b = run_fedavg(cfg, mlp_2nn(), data, parts)
    assert a.params.tobytes() == b.params.tobytes()
    with pytest.raises(ValueError, match="client_stack"):
        FedAvgConfig(client_stack=0)
