"""``refsim compare-steps`` against real PyTorch 2.13 steps, at the paper's sizes: a plain
float32 PyTorch ClientUpdate of the CNN and of the 2NN on a client of 600 MNIST digits (B = 10)
passes every step, while ``refsim compare`` of its whole float32 trajectory either agrees or,
where the trajectories have parted at a near-tie, reports a float32 divergence and points to
``compare-steps``; in float64 both agree; and each injected bug fails at the first step where
it acts.

The PyTorch side (``tests/torch_steps.py``, ``tests/torch_models.py``) reads only the trace and
the MNIST arrays. Whether and where a seed's float32 trajectories part depends on the BLAS
kernel (docs/validation.md, section 5, has the onset over 10 seeds): the CNN's seed 0 parted at
step 17 with one kernel, while with OpenBLAS's Haswell kernels on a Zen 5 CPU its 60 steps end
within ``refsim compare``'s float32 tolerance; so the whole-trajectory verdict is checked for
either outcome.
"""

import numpy as np
import pytest

from refsim.cli import main
from refsim.data import load_mnist
from refsim.fedavg import DType, FedAvgConfig, from_images, run_fedavg
from refsim.nn import cnn_mnist, mlp_2nn
from refsim.validation.compare import compare_paths
from refsim.validation.step_inputs import load_client_round
from refsim.validation.steps import StepSeries, check_client_steps

torch = pytest.importorskip("torch", reason="PyTorch is a test-only cross-check: "
                                            "pip install torch==2.13.0 (CPU) to run it")
from torch_models import TorchCNNMnist, TorchMLP2NN  # noqa: E402  (needs torch)
from torch_steps import BUGS, record_steps  # noqa: E402

pytestmark = pytest.mark.torch

MNIST = load_mnist()
# model -> (refsim model, PyTorch module, trace seed, local epochs, the client's 600 digits):
# E * 60 steps each (the 2NN's float32 trajectories part far later than the CNN's: seed 3's at
# step 338 of 600 with one kernel).
CASES = {"cnn_mnist": (cnn_mnist, TorchCNNMnist, 0, 1, np.arange(600)),
         "mlp_2nn": (mlp_2nn, TorchMLP2NN, 3, 10,
                     np.sort(np.random.default_rng([3, 7]).choice(60000, 600, replace=False)))}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trace(tmp_path_factory, name, dtype):
    """One round of one client of 600 digits, B = 10, lr 0.1, refsim's Keras init."""
    factory, _, seed, epochs, client = CASES[name]
    run = tmp_path_factory.mktemp(f"{name}-{np.dtype(dtype).name}") / "run"
    data = from_images(MNIST, dtype, train_limit=int(client.max()) + 1, test_limit=10)
    cfg = FedAvgConfig(fraction=1.0, epochs=epochs, batch_size=10, lr=0.1, rounds=1, seed=seed,
                       dtype=DType(np.dtype(dtype).name))
    run_fedavg(cfg, factory(), data, [client], run_dir=run, trace=True)
    return run / "trace"


@pytest.fixture(scope="module", params=["cnn_mnist", "mlp_2nn"])
def case(request, tmp_path_factory):
    name = request.param
    return name, {dt: _trace(tmp_path_factory, name, dt) for dt in (np.float32, np.float64)}


def _steps_file(tmp_path, trace, module, dtype, **kwargs):
    saved = record_steps(trace, 1, 0, module(), MNIST.x_train, MNIST.y_train,
                         TORCH_DTYPE[dtype], **kwargs)
    path = tmp_path / "steps.npz"
    np.savez(path, **saved)
    return path, saved


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_plain_pytorch_client_passes_every_step(case, tmp_path, dtype):
    name, traces = case
    factory, module = CASES[name][:2]
    trace = traces[dtype]
    client = load_client_round(trace, 1, 0)
    weights = record_steps(trace, 1, 0, module(), MNIST.x_train, MNIST.y_train,
                           TORCH_DTYPE[dtype], flat=True)  # in memory: 600 2NN steps are 0.5 GB
    steps = StepSeries("pytorch", tuple(weights), tuple(weights.values()), client.model, "flat")
    report = check_client_steps(steps, client, MNIST.x_train, MNIST.y_train)
    assert report.agree, report.first_divergence.note
    assert len(report.checks) == client.num_steps == 60 * CASES[name][3]
    # The whole trajectory: in float64 refsim compare agrees; in float32 it agrees or, where
    # the trajectories parted, says that this is what a float32 divergence looks like.
    np.save(tmp_path / "final.npy", weights[client.num_steps])
    result = compare_paths(tmp_path / "final.npy", trace)
    note = result.float32_divergence()
    if dtype == np.float64 or result.agree:
        assert result.agree, result.first_divergence
        assert note is None
    else:
        assert note is not None and note["from_round"] == 1
        assert "compare-steps" in note["advice"]


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_each_injected_bug_fails_at_the_first_step_where_it_acts(case, tmp_path, bug, capsys):
    name, traces = case
    factory, module = CASES[name][:2]
    if bug == "keras_flatten" and name != "cnn_mnist":
        pytest.skip("the 2NN flattens one channel: NHWC and NCHW orders coincide")
    trace = traces[np.float32]
    path, _ = _steps_file(tmp_path, trace, module, np.float32, bug=bug, bug_from=2,
                          steps=range(0, 6))
    code = main(["compare-steps", str(path), str(trace), "--round", "1", "--client", "0",
                 "--json"])
    import json
    out = json.loads(capsys.readouterr().out)
    assert code == 1, f"{bug}: {out['counts']}"
    assert [s["status"] for s in out["steps"]] == ["agree", "agree", "diverge"], bug
    assert out["first_divergence"]["step"] == 2
