"""The per-step check behind ``refsim compare-steps`` (refsim.validation.traced_step,
near_ties, steps, step_inputs, server_step) without another framework: the traced step is
refsim's step bit for bit, a flipped near-tie is found and explained, a flip that is no
near-tie and a perturbed step diverge, and the inputs are read or refused with one clear line.
The cross-checks against real PyTorch steps are in test_validation_steps_torch.py."""

import json

import numpy as np
import pytest

from refsim.cli import main
from refsim.data import load_mnist
from refsim.fedavg import DType, FedAvgConfig, ServerOpt, ServerOptConfig, from_images, run_fedavg
from refsim.nn import ReLU, cnn_cifar, cnn_mnist, logistic, mlp_2nn, sgd_step
from refsim.validation.near_ties import find_near_ties, layer_labels
from refsim.validation.server_step import check_server_step, load_server_inputs
from refsim.validation.step_inputs import load_client_round, load_steps
from refsim.validation.steps import StepSeries, StepTolerance, batch_inputs, check_step, \
    check_client_steps
from refsim.validation.traced_step import (Flip, pool_windows, traced_step,
                                          with_sequential_bias_sums)

MNIST = load_mnist()


def _batch(n, seed, dtype, shape=(1, 28, 28)):
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(MNIST.y_train), n, replace=False)
    if shape == (1, 28, 28):
        x = batch_inputs(MNIST.x_train, rows, dtype)
    else:  # the CIFAR net: random images of its shape
        x = rng.random((n, *shape)).astype(dtype)
    return x, MNIST.y_train[rows].astype(np.int64)


@pytest.mark.parametrize("factory", [cnn_mnist, mlp_2nn, logistic, cnn_cifar])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_traced_step_is_refsims_step_bit_for_bit(factory, dtype):
    model = factory()
    for seed, n in ((0, 1), (1, 7), (2, 10)):
        params = model.init(np.random.default_rng(seed), "torch", dtype)
        x, y = _batch(n, seed, dtype, model.input_shape)
        loss, grad = model.loss_and_grad(params, x, y)
        step = traced_step(model, params, x, y, 0.05)
        assert step.loss == loss
        assert np.array_equal(step.grad, grad), f"{model.name} {dtype.__name__} n={n}"
        assert np.array_equal(step.params, sgd_step(params, grad, 0.05))


@pytest.mark.parametrize("factory", [cnn_mnist, mlp_2nn, cnn_cifar])
def test_sequential_bias_sums_change_only_the_biases_and_only_by_rounding(factory):
    model = factory()
    params = model.init(np.random.default_rng(3), "keras", np.float32)
    x, y = _batch(10, 3, np.float32, model.input_shape)
    step = traced_step(model, params, x, y, 0.1)
    oracle = traced_step(model, params, x, y, 0.1, sequential_bias_sums=True)
    assert np.array_equal(with_sequential_bias_sums(model, step, params, 0.1), oracle.params)
    plain, seq = model.views(step.grad), model.views(oracle.grad)
    for name in plain:
        if name.endswith(".weight"):
            assert np.array_equal(plain[name], seq[name]), name
        else:
            np.testing.assert_allclose(seq[name], plain[name], rtol=1e-4, atol=1e-7,
                                       err_msg=name)
    if factory is cnn_mnist:  # sums of 10 x 28 x 28 terms: the two orders round differently
        assert any(not np.array_equal(plain[n], seq[n]) for n in plain if n.endswith(".bias"))


def _near_tie_case(seed=0):
    """A float32 2NN step from weights where one fc1 unit of one example has a pre-activation
    within a few float32 ulps of its bias of 0 (|z| < 1e-7; the layer's rounding is ~1e-7)."""
    model = mlp_2nn()
    w = model.init(np.random.default_rng(seed), "torch", np.float32)
    x, y = _batch(10, seed, np.float32)
    step = traced_step(model, w.astype(np.float64), x.astype(np.float64), y, 0.1)
    z, up = step.inputs[2], step.upstream[2]  # (10, 200)
    n, u = np.unravel_index(int(np.argmax(np.abs(up) * (z > 0))), z.shape)
    bias = model.views(w)["fc1.bias"]
    bias[u] = np.float32(bias[u] - z[n, u])  # z[n, u] becomes the rounding of that bias
    z = traced_step(model, w.astype(np.float64), x.astype(np.float64), y, 0.1).inputs[2]
    if z[n, u] == 0:
        bias[u] = np.nextafter(bias[u], np.float32(1))
    assert 0 < abs(z[n, u]) < 1e-7
    return model, w, x, y, int(n * 200 + u)


def test_a_relu_flip_at_a_near_tie_moves_the_gradient_of_that_unit_only():
    model, w, x, y, unit = _near_tie_case()  # fc1 relu is layer 2 (flatten, fc1, relu, ...)
    w, x = w.astype(np.float64), x.astype(np.float64)
    base = traced_step(model, w, x, y, 0.1)
    n, u = divmod(unit, 200)
    assert 0 < abs(base.inputs[2][n, u]) < 1e-7  # active or not by a hair
    flipped = traced_step(model, w, x, y, 0.1, [Flip(2, unit)])
    d = model.views(flipped.grad - base.grad)
    # The unit's bias gradient gains or loses the example's upstream gradient; everything else
    # moves only by the < 1e-7 the unit's output changed in the forward pass.
    up = base.upstream[2][n, u] * (1 if base.inputs[2][n, u] < 0 else -1)
    assert d["fc1.bias"][u] == pytest.approx(up, rel=1e-5)
    others = np.delete(d["fc1.bias"], u)
    assert np.abs(others).max() < 1e-6 * abs(up)


def test_a_pool_flip_routes_the_window_to_its_new_tap():
    model = cnn_mnist()
    params = model.init(np.random.default_rng(1), "torch", np.float64)
    x, y = _batch(2, 1, np.float64)
    base = traced_step(model, params, x, y, 0.1)
    pool = next(i for i, label in layer_labels(model).items() if label == "conv1 pool")
    up = base.upstream[pool]  # (2, 32, 14, 14)
    window = int(np.argmax(np.abs(up)))
    taps = pool_windows(base.inputs[pool], "valid").reshape(4, -1)[:, window]
    tap = (int(np.argmax(taps)) + 1) % 4  # not the winner
    flipped = traced_step(model, params, x, y, 0.1, [Flip(pool, window, tap)])
    assert not np.array_equal(flipped.grad, base.grad)
    with pytest.raises(ValueError, match="tap must be 0..3"):
        traced_step(model, params, x, y, 0.1, [Flip(pool, window, 4)])
    with pytest.raises(ValueError, match="outside"):
        traced_step(model, params, x, y, 0.1, [Flip(pool, up.size, 0)])
    with pytest.raises(ValueError, match="no ReLU or max-pool"):
        traced_step(model, params, x, y, 0.1, [Flip(0, 0)])


def test_a_step_with_a_flipped_near_tie_passes_as_a_tie_flip():
    model, w, x, y, unit = _near_tie_case()
    s32 = traced_step(model, w, x, y, 0.1)
    s64 = traced_step(model, w.astype(np.float64), x.astype(np.float64), y, 0.1)
    ties, census, _ = find_near_ties(model, s32, s64, StepTolerance().c)
    assert Flip(2, unit) in [t.flip for t in ties]
    assert {t.layer for t in census} == {"fc1 relu", "fc2 relu"}
    # The candidate resolved the near-tie the other way (refsim's float64 step with that flip,
    # rounded to float32): over the bound unflipped, explained by one flip.
    candidate = traced_step(model, w.astype(np.float64), x.astype(np.float64), y, 0.1,
                            [Flip(2, unit)]).params.astype(np.float32)
    check = check_step(model, w, candidate, x, y, 0.1)
    assert check.status == "tie flip", check.note
    assert check.worst.ratio > 1 and max(t.ratio for t in check.flipped) <= 1
    assert check.note.startswith("tie flip at fc1 relu: 1 unit, smallest margin")
    # refsim's float64 step rounded to float32 agrees without a flip; refsim's own float32
    # step passes too (here its arithmetic decides the near-tie as the candidate did).
    assert check_step(model, w, s64.params.astype(np.float32), x, y, 0.1).status == "agree"
    assert check_step(model, w, s32.params, x, y, 0.1).status in ("agree", "tie flip")


def test_a_flip_that_is_no_near_tie_and_a_perturbed_step_diverge():
    model, w, x, y, unit = _near_tie_case(seed=1)
    s64 = traced_step(model, w.astype(np.float64), x.astype(np.float64), y, 0.1)
    far = int(np.argmax(np.abs(s64.upstream[2]) * (np.abs(s64.inputs[2]) > 0.1)))
    candidate = traced_step(model, w.astype(np.float64), x.astype(np.float64), y, 0.1,
                            [Flip(2, far)]).params.astype(np.float32)
    check = check_step(model, w, candidate, x, y, 0.1)
    assert check.status == "diverge" and "near-tie" in check.note
    nudged = traced_step(model, w, x, y, 0.1).params.copy()
    nudged[5] += 1e-3 * abs(nudged[5]) + 1e-9
    assert check_step(model, w, nudged, x, y, 0.1).status == "diverge"
    nan = nudged.copy()
    nan[0] = np.nan
    bad = check_step(model, w, nan, x, y, 0.1)
    assert bad.status == "diverge" and "NaN" in bad.note


def test_the_tolerance_is_checked():
    with pytest.raises(ValueError, match="c > 0"):
        StepTolerance(c=0)
    with pytest.raises(ValueError, match="floor_ulps >= 0"):
        StepTolerance(floor_ulps=-1)


# -- a traced run, its candidate files and the CLI ----------------------------------------------

@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    """A float32 2NN run: 3 clients of unequal size, all sampled, E = 2, B = 7, 2 rounds."""
    run = tmp_path_factory.mktemp("steps") / "run"
    data = from_images(MNIST, np.float32, train_limit=60, test_limit=10)
    parts = [np.arange(0, 23), np.arange(23, 40), np.arange(40, 60)]
    cfg = FedAvgConfig(fraction=1.0, epochs=2, batch_size=7, lr=0.1, rounds=2,
                       server=ServerOptConfig(ServerOpt.MOMENTUM, lr=1.0, momentum=0.5))
    run_fedavg(cfg, mlp_2nn(), data, parts, run_dir=run, trace=True)
    return run / "trace"


def _refsim_steps(trace, round_, client, dtype=np.float32, start=None):
    """refsim's own steps of one client, recorded as a candidate would (flat vectors)."""
    cl = load_client_round(trace, round_, client)
    w = (np.load(trace / "init.npz")["weights"] if start is None else start).astype(dtype)
    out = [w]
    for j in range(cl.num_steps):
        rows = cl.batch(j)
        _, g = cl.model.loss_and_grad(out[-1], batch_inputs(MNIST.x_train, rows, dtype),
                                      MNIST.y_train[rows].astype(np.int64))
        out.append(sgd_step(out[-1], g, cl.lr))
    return cl, out


def test_refsims_own_steps_agree_and_the_batches_follow_the_trace(trace, tmp_path):
    cl, steps = _refsim_steps(trace, 1, 1)
    assert cl.num_examples == 17 and cl.num_steps == 2 * 3  # E = 2, ceil(17 / 7) = 3
    assert [len(cl.batch(j)) for j in range(6)] == [7, 7, 3] * 2
    with pytest.raises(ValueError, match="local steps 0..5, not 6"):
        cl.batch(6)
    series = StepSeries("refsim", tuple(range(7)), tuple(steps), cl.model, "flat")
    report = check_client_steps(series, cl, MNIST.x_train, MNIST.y_train)
    assert report.agree and report.count("agree") == 6
    # A window of steps, as flat step_<j> vectors, through the CLI.
    np.savez(tmp_path / "window.npz", **{f"step_{j}": steps[j] for j in (2, 3, 4)})
    assert main(["compare-steps", str(tmp_path / "window.npz"), str(trace), "--round", "1",
                 "--client", "1"]) == 0


def test_a_wrong_step_is_named_with_its_tensor_element_and_values(trace, tmp_path, capsys):
    cl, steps = _refsim_steps(trace, 1, 0)
    wrong = [s.copy() for s in steps]
    for j in range(3, len(wrong)):  # from step 2 on the learning rate is 10% off
        rows = cl.batch(j - 1)
        _, g = cl.model.loss_and_grad(wrong[j - 1], batch_inputs(MNIST.x_train, rows,
                                                                 np.float32),
                                      MNIST.y_train[rows].astype(np.int64))
        wrong[j] = sgd_step(wrong[j - 1], g, cl.lr * 1.1)
    views = [cl.model.views(w) for w in wrong]
    np.savez(tmp_path / "wrong.npz", **{f"step_{j}/{k}": v for j, view in enumerate(views)
                                        for k, v in view.items()})
    code = main(["compare-steps", str(tmp_path / "wrong.npz"), str(trace), "--round", "1",
                 "--client", "0", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["verdict"] == "diverge"
    first = out["first_divergence"]
    assert first["step"] == 2 and first["status"] == "diverge"
    worst = max(first["tensors"], key=lambda t: t["ratio"])
    assert worst["ratio"] > 1 and worst["candidate"] != worst["refsim64"]
    assert out["stopped_early"] and [s["step"] for s in out["steps"]] == [0, 1, 2]
    assert main(["compare-steps", str(tmp_path / "wrong.npz"), str(trace), "--round", "1",
                 "--client", "0"]) == 1
    text = capsys.readouterr().out
    assert "first divergence: step 2 (epoch 0, batch 2), tensor" in text
    assert "DIVERGE" in text and "candidate" in text


@pytest.mark.parametrize("keys, message", [
    ({"step_0/fc1.weight": np.zeros((784, 200), np.float32)}, "at least two"),
    ({"step_0": np.zeros(199210, np.float32), "step_2": np.zeros(199210, np.float32)},
     "consecutive"),
    ({"step_0": np.zeros(199210, np.float32), "step_1": np.zeros(10, np.float32)},
     "has shape"),
    ({"step_0": np.zeros(199210, np.int32), "step_1": np.zeros(199210, np.int32)}, "float32"),
    ({"w_0": np.zeros(3, np.float32)}, "is not step_<j>"),
    ({"step_0": np.zeros(199210, np.float32), "step_1/fc1.bias": np.zeros(200, np.float32)},
     "mixes"),
])
def test_bad_candidate_files_give_one_line_and_exit_2(trace, tmp_path, capsys, keys, message):
    np.savez(tmp_path / "bad.npz", **keys)
    assert main(["compare-steps", str(tmp_path / "bad.npz"), str(trace), "--round", "1",
                 "--client", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refsim compare-steps: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_bad_trace_arguments_give_one_line_and_exit_2(trace, tmp_path, capsys):
    cl, steps = _refsim_steps(trace, 1, 0)
    np.savez(tmp_path / "ok.npz", **{f"step_{j}": s for j, s in enumerate(steps)})
    for args, message in ((["--round", "3", "--client", "0"], "no round 3"),
                          (["--round", "1", "--client", "7"], "was not sampled"),
                          (["--round", "1"], "give --client K"),
                          (["--round", "1", "--client", "0", "--server"], "one of them"),
                          (["--round", "1", "--client", "0", "--c", "0"], "c > 0")):
        assert main(["compare-steps", str(tmp_path / "ok.npz"), str(trace), *args]) == 2, args
        assert message in capsys.readouterr().err, args
    assert main(["compare-steps", str(tmp_path / "ok.npz"), str(tmp_path), "--round", "1",
                 "--client", "0"]) == 2
    assert "no refsim trace" in capsys.readouterr().err
    too_long = {f"step_{j}": steps[0] for j in range(len(steps) + 1)}
    np.savez(tmp_path / "long.npz", **too_long)
    assert main(["compare-steps", str(tmp_path / "long.npz"), str(trace), "--round", "1",
                 "--client", "0"]) == 2
    assert "takes 8 local steps" in capsys.readouterr().err


def test_load_steps_reads_pytorch_layout(trace, tmp_path):
    from refsim.nn import to_torch_state_dict
    cl, steps = _refsim_steps(trace, 1, 2)
    np.savez(tmp_path / "torch.npz", **{f"step_{j}/{k}": v for j, s in enumerate(steps[:3])
                                        for k, v in to_torch_state_dict(cl.model, s).items()})
    series = load_steps(tmp_path / "torch.npz", cl.model)
    assert series.steps == (0, 1, 2) and "from_torch_state_dict" in series.mapping
    assert all(np.array_equal(a, b) for a, b in zip(series.weights, steps[:3]))


# -- the server step ----------------------------------------------------------------------------

def _server_inputs(trace, round_, tmp_path, name, wrong_weights=False, as_updates=True,
                   state=None):
    """The candidate's server-step file for round t: refsim's own w_t and updates (each
    client's steps from w_t), and the candidate's w_{t+1} computed by hand in float64."""
    header = json.loads((trace / "init.json").read_text())
    w_t = (np.load(trace / "init.npz")["weights"] if round_ == 1 else
           np.load(trace / f"round_{round_ - 1:06d}.npz")["weights"])
    rnd = json.loads((trace / f"round_{round_:06d}.json").read_text())
    sizes = {k: len(np.load(trace / "init.npz")[f"client_{k}"]) for k in rnd["clients"]}
    arrays, deltas = {"start": w_t}, {}
    for k in rnd["clients"]:
        _, steps = _refsim_steps(trace, round_, k, start=w_t)
        deltas[k] = steps[-1] - w_t
        arrays[f"update_{k}" if as_updates else f"client_{k}"] = deltas[k] if as_updates \
            else steps[-1]
    weights = {k: 1.0 if wrong_weights else float(sizes[k]) for k in deltas}
    mean = sum(weights[k] * deltas[k].astype(np.float64) for k in deltas) / sum(weights.values())
    v = (state if state is not None else np.zeros_like(w_t)).astype(np.float64)
    momentum = header["config"]["server"]["momentum"]
    v = momentum * v - mean  # FedAvgM on g = -mean
    arrays["global"] = (w_t - v).astype(np.float32)
    if state is not None:
        arrays["state/v"] = state
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name, v.astype(np.float32)


def test_the_server_step_agrees_and_an_unweighted_mean_diverges(trace, tmp_path, capsys):
    model = mlp_2nn()
    path, v1 = _server_inputs(trace, 1, tmp_path, "server1.npz")
    assert check_server_step(load_server_inputs(path, model), trace, 1).agree
    path, _ = _server_inputs(trace, 1, tmp_path, "weights1.npz", as_updates=False)
    assert main(["compare-steps", str(path), str(trace), "--round", "1", "--server"]) == 0
    assert "AGREE" in capsys.readouterr().out
    path, _ = _server_inputs(trace, 1, tmp_path, "uniform.npz", wrong_weights=True)
    result = check_server_step(load_server_inputs(path, model), trace, 1)
    assert not result.agree and result.worst.ratio > 100
    assert main(["compare-steps", str(path), str(trace), "--round", "1", "--server"]) == 1
    assert "DIVERGE" in capsys.readouterr().out
    # Round 2 of FedAvgM needs the momentum before the round, and agrees with it.
    path, _ = _server_inputs(trace, 2, tmp_path, "nostate.npz")
    with pytest.raises(ValueError, match="needs the optimizer state"):
        check_server_step(load_server_inputs(path, model), trace, 2)
    path, _ = _server_inputs(trace, 2, tmp_path, "server2.npz", state=v1)
    assert check_server_step(load_server_inputs(path, model), trace, 2).agree


def test_bad_server_files_give_one_line(trace, tmp_path, capsys):
    model = mlp_2nn()
    w = np.zeros(model.num_params, np.float32)
    for arrays, message in (({"global": w, "update_0": w}, "no start/"),
                            ({"start": w, "global": w}, "no update_<k>"),
                            ({"start": w, "global": w, "update_0": w}, "averaged clients"),
                            ({"start": w, "global": w, "update_0": w, "client_1": w},
                             "not both"),
                            ({"start": w, "global": w, "weird": w}, "is none of")):
        np.savez(tmp_path / "s.npz", **arrays)
        assert main(["compare-steps", str(tmp_path / "s.npz"), str(trace), "--round", "1",
                     "--server"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_layer_labels_name_each_relu_and_pool():
    labels = layer_labels(cnn_mnist())
    assert list(labels.values()) == ["conv1 relu", "conv1 pool", "conv2 relu", "conv2 pool",
                                     "fc1 relu"]
    assert all(isinstance(mlp_2nn().layers[i], ReLU) for i in layer_labels(mlp_2nn()))


def test_a_unit_that_turns_active_in_a_window_of_zeros_is_found_and_explained():
    """The tie flips PyTorch meets most at B = 50: a conv2 unit a hair below 0 in a pool window
    of zeros. Where the other side computes it a hair above 0, the unit turns active *and*
    wins its window, so its gradient appears where refsim routes none."""
    model = cnn_mnist()
    relu, pool = 4, 5  # conv2 relu, conv2 pool
    w = model.init(np.random.default_rng(2), "torch", np.float32)
    x, y = _batch(4, 2, np.float32)
    step = traced_step(model, w.astype(np.float64), x.astype(np.float64), y, 0.1)
    z, up = step.inputs[relu], step.upstream[pool]  # (4, 64, 14, 14), (4, 64, 7, 7)
    taps = pool_windows(z, "valid")  # (4, 4, 64, 7, 7) pre-activations per window
    dead = (taps.max(axis=0) < 0) & (up != 0)  # windows of zeros that carry gradient
    n, c, i, j = np.argwhere(dead)[0]
    k = int(np.argmax(taps[:, n, c, i, j]))
    p, q = divmod(k, 2)
    unit = np.ravel_multi_index((n, c, 2 * i + p, 2 * j + q), z.shape)
    bias = model.views(w)["conv2.bias"]
    bias[c] = np.float32(bias[c] - z.flat[unit])  # the window's largest z becomes ~0
    z = traced_step(model, w.astype(np.float64), x.astype(np.float64), y, 0.1).inputs[relu]
    if z.flat[unit] >= 0:
        bias[c] = np.nextafter(bias[c], np.float32(-1))
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    assert -1e-6 < traced_step(model, w64, x64, y, 0.1).inputs[relu].flat[unit] < 0
    candidate = traced_step(model, w64, x64, y, 0.1, [Flip(relu, int(unit))])
    assert candidate.decisions[pool][n, c, i, j] == k  # the unit now wins its window
    check = check_step(model, w, candidate.params.astype(np.float32), x, y, 0.1)
    assert check.status == "tie flip", check.note
    assert check.note.startswith("tie flip at conv2 relu: 1 unit")


def test_a_trace_of_clients_with_another_optimizer_is_refused_in_one_line(tmp_path, capsys):
    from refsim.fedavg.client_opt import ClientOpt, ClientOptConfig
    run = tmp_path / "run"
    data = from_images(MNIST, np.float32, train_limit=30, test_limit=10)
    cfg = FedAvgConfig(fraction=1.0, epochs=1, batch_size=10, lr=0.001, rounds=1,
                       client_opt=ClientOptConfig(ClientOpt.ADAM))
    run_fedavg(cfg, mlp_2nn(), data, [np.arange(0, 15), np.arange(15, 30)], run_dir=run,
               trace=True)
    w0 = np.load(run / "trace" / "init.npz")["weights"]
    np.savez(tmp_path / "c.npz", step_0=w0, step_1=w0)
    assert main(["compare-steps", str(tmp_path / "c.npz"), str(run), "--round", "1",
                 "--client", "0"]) == 2
    err = capsys.readouterr().err
    assert "clients step with 'adam' (client_opt); compare-steps checks plain SGD steps only" \
        in err and len(err.strip().splitlines()) == 1
