"""The CuPy backend end to end: the models' loss and gradient, and whole FedAvg runs, against the
NumPy backend. Marked gpu; every test skips without CuPy and a CUDA device.

Tolerances: float64 results agree to rtol 1e-9 (the two backends differ only in the order of
GEMM and reduction sums, ~1e-16 per operation). A float32 run of the 2NN is compared with a
yardstick measured in the same test: its distance from the NumPy float32 run must stay within
10 times the distance between the NumPy float32 and float64 runs (float32 rounding itself).
float32 CNN trajectories part at ReLU and max-pool near-ties (docs/validation.md, section 5),
so the CNN's float32 steps are checked one at a time, with refsim's step check.
"""

import json

import numpy as np
import pytest
from checks import contiguous_partition, mnist_slice, tolerance

from refsim import cli
from refsim.backend import Purpose, available_backends, get_xp, make_rng, to_numpy
from refsim.compress import Codec, QuantizerConfig
from refsim.data.batching import batch_order
from refsim.fedavg import DType, FedAvgConfig, ServerOptConfig, run_fedavg
from refsim.fedavg.client_opt import ClientOptConfig, client_opt_step
from refsim.nn import cnn_mnist, logistic, mlp_2nn
from refsim.validation.steps import check_step

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif("cupy" not in available_backends(),
                                 reason="needs CuPy and a CUDA device")]

MODELS = {"2nn": mlp_2nn, "cnn": cnn_mnist, "logistic": logistic}
SIZES = [37, 5, 61, 12, 90, 23]  # unequal n_k, K = 6


def _data(dtype):
    return mnist_slice(dtype, sum(SIZES), 300)


def _cfg(dtype, **kw):
    base = dict(fraction=0.5, epochs=2, batch_size=8, lr=0.05, rounds=3, seed=2, dtype=dtype)
    return FedAvgConfig(**{**base, **kw})


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(MODELS))
def test_loss_gradient_and_logits_on_cupy_match_numpy(name, dtype):
    cp = get_xp("cupy")
    model = MODELS[name]()
    params = model.init(make_rng(0, Purpose.INIT), "torch", dtype)
    data = _data(np.dtype(dtype).name)
    x, y = data.x_train[:50], data.y_train[:50]
    loss, grad, logits = model.loss_grad_and_logits(params, x, y)
    loss_g, grad_g, logits_g = model.loss_grad_and_logits(cp.asarray(params), cp.asarray(x),
                                                          cp.asarray(y))
    tol = tolerance(dtype)
    np.testing.assert_allclose(float(loss_g), loss, **tol)
    np.testing.assert_allclose(to_numpy(logits_g), logits, **tol)
    np.testing.assert_allclose(to_numpy(grad_g), grad, rtol=tol["rtol"],
                               atol=tol["atol"] * max(1.0, float(np.abs(grad).max())))


def _trace_orders(run_dir):
    out = {}
    for path in sorted((run_dir / "trace").glob("round_*.json")):
        out[path.name] = json.loads(path.read_text())["batch_order"]
    return out


@pytest.mark.parametrize("name", ["2nn", "cnn"])
def test_float64_run_on_cupy_matches_numpy_round_by_round(tmp_path, name):
    """Same clients and batch orders; per-round metrics and final weights to rtol 1e-9."""
    data, parts = _data("float64"), contiguous_partition(SIZES)
    cfg = _cfg(DType.FLOAT64)
    cpu = run_fedavg(cfg, MODELS[name](), data, parts, run_dir=tmp_path / "cpu", trace=True)
    gpu = run_fedavg(_cfg(DType.FLOAT64, backend="cupy"), MODELS[name](), data, parts,
                     run_dir=tmp_path / "gpu", trace=True)
    assert [r.clients for r in gpu.rounds] == [r.clients for r in cpu.rounds]
    assert _trace_orders(tmp_path / "gpu") == _trace_orders(tmp_path / "cpu")
    for a, b in zip(gpu.rounds, cpu.rounds):
        for field in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-9,
                                       err_msg=f"round {a.round} {field}")
        assert (a.uplink_bits, a.broadcast_bits) == (b.uplink_bits, b.broadcast_bits)
    np.testing.assert_allclose(gpu.params, cpu.params, rtol=1e-9, atol=1e-12)
    assert isinstance(gpu.params, np.ndarray)  # the History holds host arrays


def test_float32_2nn_run_on_cupy_stays_within_float32_rounding_of_numpy():
    """The whole float32 loop on the GPU (local steps, float32 aggregation) for the 2NN, whose
    float32 trajectories part only after hundreds of steps (docs/validation.md, section 5:
    57 at the earliest of 10 seeds): E = 1 keeps this run at most 3 rounds x 12 steps deep.
    The CNN's trajectories part within a few dozen steps at a ReLU or max-pool near-tie, on
    some BLAS kernels within this run, so the CNN is checked step by step below instead."""
    parts = contiguous_partition(SIZES)
    cpu32 = run_fedavg(_cfg(DType.FLOAT32, epochs=1), mlp_2nn(), _data("float32"), parts)
    cpu64 = run_fedavg(_cfg(DType.FLOAT64, epochs=1), mlp_2nn(), _data("float64"), parts)
    gpu32 = run_fedavg(_cfg(DType.FLOAT32, epochs=1, backend="cupy"), mlp_2nn(),
                       _data("float32"), parts)
    yardstick = float(np.abs(cpu32.params - cpu64.params).max())
    distance = float(np.abs(gpu32.params - cpu32.params).max())
    assert 0 < yardstick < 1e-3
    assert distance <= 10 * yardstick, (distance, yardstick)
    assert gpu32.params.dtype == np.float32
    assert [r.clients for r in gpu32.rounds] == [r.clients for r in cpu32.rounds]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["2nn", "cnn"])
def test_local_steps_on_cupy_pass_refsims_step_check_one_by_one(name, dtype):
    """A client's local SGD steps on the GPU, each taken from the GPU's own weights w_j, pass
    ``refsim.validation.steps.check_step`` against the NumPy backend's recomputation of the
    same step (agree, or a tie flip it explains): the float32 rule of docs/validation.md,
    section 6, which does not accumulate differences and so holds over any number of steps."""
    cp = get_xp("cupy")
    model = MODELS[name]()
    data = _data(np.dtype(dtype).name)
    client, lr = np.arange(96), 0.05
    x_gpu, y_gpu = cp.asarray(data.x_train), cp.asarray(data.y_train)
    w = model.init(make_rng(0, Purpose.INIT), "torch", dtype)
    order = batch_order(client, 2, 2, 1, 0)  # (E, n_k): 2 epochs of 12 batches of B = 8
    statuses = []
    for rows in order.reshape(-1, 8):
        rows_gpu = cp.asarray(rows)
        _, grad, _ = model.loss_grad_and_logits(cp.asarray(w), x_gpu[rows_gpu], y_gpu[rows_gpu])
        a, _ = client_opt_step(ClientOptConfig(), cp.asarray(w), grad, lr, {})
        a = to_numpy(a)
        assert a.dtype == w.dtype
        check = check_step(model, w, a, data.x_train[rows], data.y_train[rows], lr,
                           step=len(statuses))
        assert check.status in ("agree", "tie flip"), (check.step, check.note, check.worst)
        statuses.append(check.status)
        w = a
    assert len(statuses) == 24


@pytest.mark.parametrize("name", ["2nn", "cnn"])
def test_clients_side_by_side_on_cupy_match_the_numpy_reference_run(name):
    """client_stack = 3 on the GPU (batched cuBLAS products) against one client at a time on
    the CPU, float64: weights to rtol 1e-9."""
    sizes = [20, 20, 20, 9, 20, 9]
    data, parts = mnist_slice("float64", sum(sizes), 50), contiguous_partition(sizes)
    base = dict(fraction=1.0, epochs=1, batch_size=6, lr=0.05, rounds=2, seed=1,
                dtype=DType.FLOAT64)
    cpu = run_fedavg(FedAvgConfig(**base), MODELS[name](), data, parts)
    gpu = run_fedavg(FedAvgConfig(backend="cupy", client_stack=3, **base), MODELS[name](), data,
                     parts)
    np.testing.assert_allclose(gpu.params, cpu.params, rtol=1e-9, atol=1e-12)


def test_codec_and_server_optimizer_on_cupy_match_numpy_in_float64():
    """8-bit stochastic quantization + Huffman on the host, FedAdam on the device."""
    data, parts = _data("float64"), contiguous_partition(SIZES)
    kw = dict(codec=Codec(QuantizerConfig(8), huffman=True),
              server=ServerOptConfig.fedadam(lr=0.01))
    cpu = run_fedavg(_cfg(DType.FLOAT64, **kw), mlp_2nn(), data, parts)
    gpu = run_fedavg(_cfg(DType.FLOAT64, backend="cupy", **kw), mlp_2nn(), data, parts)
    assert [r.uplink_bits for r in gpu.rounds] == [r.uplink_bits for r in cpu.rounds]
    np.testing.assert_allclose(gpu.params, cpu.params, rtol=1e-9, atol=1e-12)


def test_two_cupy_runs_are_bit_identical():
    """Same seed, same backend, same bits: no atomics in refsim's kernels, cuBLAS is
    deterministic on one GPU."""
    data, parts = _data("float32"), contiguous_partition(SIZES)
    cfg = _cfg(DType.FLOAT32, backend="cupy", codec=Codec(QuantizerConfig(8), huffman=True))
    a = run_fedavg(cfg, cnn_mnist(), data, parts)
    b = run_fedavg(cfg, cnn_mnist(), data, parts)
    assert a.params.tobytes() == b.params.tobytes()
    assert [r.to_dict() for r in a.rounds] == [r.to_dict() for r in b.rounds]


def test_refsim_run_with_backend_cupy_writes_the_same_table_as_numpy(tmp_path, capsys):
    argv = ["run", "--rounds", "2", "--clients", "10", "--train-limit", "1000",
            "--test-limit", "200", "--quiet", "--plot", "no", "--partition", "iid",
            "--codec", "float", "--dtype", "float64"]
    assert cli.main([*argv, "--out", str(tmp_path / "cpu")]) == 0
    assert cli.main([*argv, "--backend", "cupy", "--out", str(tmp_path / "gpu")]) == 0
    capsys.readouterr()
    cpu = json.loads((tmp_path / "cpu" / "iid-float" / "summary.json").read_text())
    gpu = json.loads((tmp_path / "gpu" / "iid-float" / "summary.json").read_text())
    assert gpu["config"]["backend"] == "cupy"
    assert gpu["final_accuracy"] == cpu["final_accuracy"]
    np.testing.assert_allclose(np.load(tmp_path / "gpu" / "iid-float" / "final_weights.npy"),
                               np.load(tmp_path / "cpu" / "iid-float" / "final_weights.npy"),
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("stack", [1, 3])
def test_local_steps_neither_copy_to_the_device_nor_wait_for_it(stack):
    """Counted by the CPU stand-in for CuPy (tests/fake_cupy), which runs in CI: a client's
    E * ceil(n_k / B) local steps copy and wait a fixed number of times per client, not per
    step. Skipped with the real CuPy, which keeps no such counts."""
    cp = get_xp("cupy")
    if not getattr(cp, "_FAKE", False):
        pytest.skip("the counts come from the CPU stand-in for CuPy")
    from refsim.fedavg import ClientHParams, client_updates
    sizes = [40, 40, 40]
    data, parts = _data("float32"), contiguous_partition(sizes)
    model = mlp_2nn()
    w = cp.asarray(model.init(make_rng(0, Purpose.INIT)))
    x, y = cp.asarray(data.x_train), cp.asarray(data.y_train)
    for epochs in (1, 4):  # 10 and 40 steps per client
        hp = ClientHParams(model, epochs, 4, 0.1)
        before = dict(cp.counters)
        results = list(client_updates(w, x, y, parts, hp, 0, 1, [0, 1, 2], stack))
        assert len(results) == 3
        copies = cp.counters["transfers"] - before["transfers"]
        waits = cp.counters["waits"] - before["waits"]
        assert copies <= 3 * 2 and waits <= 3 * 8, (epochs, copies, waits)
