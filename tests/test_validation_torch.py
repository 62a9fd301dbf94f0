"""Cross-check FedAvg against plain PyTorch: a FedAvg written here with ``torch.nn`` modules,
``torch.optim.SGD`` per client and example-weighted state-dict averaging replays a refsim
trace of 3 rounds of the 2NN and of the CNN and lands on the traced weights after every round.

The replay reads only the trace files (initial weights, each round's sampled clients, batch
orders, learning rate, E and B) and the MNIST arrays; the networks are written out from the
paper's description, not derived from refsim. Tolerances (|torch - refsim| <= atol + rtol *
|refsim| elementwise):

* float64: rtol 1e-9, atol 1e-12. The two sides round differently (BLAS summation order, the
  float64 average of weights here against refsim's average of updates), so bits differ; the
  largest observed difference is 6e-17 absolute (4e-16 of the largest weight) and 2e-11
  relative on the smallest weights (2NN and CNN).
* float32: rtol 1e-5, atol 1e-7. Weights are O(0.01-0.1), where one float32 ulp is 1e-9 to
  7e-9; the largest observed difference after 3 rounds is 1.5e-8 (a few ulps, 2NN and CNN),
  a margin of ~7x under atol.

Each test also checks that round 1 averaged without the n_k weights falls outside these
tolerances, so the comparison can fail.
"""

import contextlib
import json
import pathlib

import numpy as np
import pytest

from refsim.data import load_mnist
from refsim.fedavg import DType, FedAvgConfig, InitScheme, from_images, run_fedavg
from refsim.nn import cnn_mnist, from_torch_state_dict, mlp_2nn, to_torch_state_dict
from refsim.validation.compare import compare_paths

torch = pytest.importorskip("torch", reason="PyTorch is a test-only cross-check: "
                                            "pip install torch==2.13.0 (CPU) to run it")
F = torch.nn.functional
from torch_models import TorchCNNMnist, TorchMLP2NN  # noqa: E402  (needs torch)

pytestmark = pytest.mark.torch

TOLERANCE = {np.float64: dict(rtol=1e-9, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-7)}
TORCH_DTYPE = {np.float64: torch.float64, np.float32: torch.float32}


# model -> (refsim model, PyTorch module, client sizes, E): unequal clients, so n_k matters.
CASES = {"mlp_2nn": (mlp_2nn, TorchMLP2NN, [20, 33, 27, 40, 24], 2),
         "cnn_mnist": (cnn_mnist, TorchCNNMnist, [14, 22, 11, 25, 17], 1)}


@contextlib.contextmanager
def _torch_settings(dtype):
    """One thread and ``dtype`` as PyTorch's default, restored afterwards."""
    threads, default = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(default)
        torch.set_num_threads(threads)


def _write_trace(run_dir, name, dtype):
    """3 rounds of refsim FedAvg (K = 5, C = 0.5: 2 clients a round, B = 10) with a trace."""
    factory, _, sizes, epochs = CASES[name]
    n = sum(sizes)
    data = from_images(load_mnist(), dtype, train_limit=n, test_limit=10)
    perm = np.random.default_rng(5).permutation(n)
    parts = [np.sort(perm[end - size:end]) for size, end in zip(sizes, np.cumsum(sizes))]
    cfg = FedAvgConfig(fraction=0.5, epochs=epochs, batch_size=10, lr=0.1, lr_decay=0.9,
                       rounds=3, seed=3, dtype=DType(np.dtype(dtype).name),
                       init=InitScheme.TORCH)
    run_fedavg(cfg, factory(), data, parts, run_dir=run_dir, trace=True)
    return pathlib.Path(run_dir) / "trace"


def _torch_fedavg(tdir, net, images, labels, dtype):
    """FedAvg in plain PyTorch, driven by the trace: yields (t, state dict) after each round,
    and the unweighted client mean of round 1 (a wrong aggregation, to show the test bites)."""
    header = json.loads((tdir / "init.json").read_text())
    init = np.load(tdir / "init.npz")
    model = {"mlp_2nn": mlp_2nn, "cnn_mnist": cnn_mnist}[header["model"]]()
    state = {k: torch.from_numpy(v) for k, v in to_torch_state_dict(model, init["weights"]).items()}
    t = 1
    while (tdir / f"round_{t:06d}.json").exists():
        rnd = json.loads((tdir / f"round_{t:06d}.json").read_text())
        orders = np.load(tdir / f"round_{t:06d}.npz")
        sums = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in state.items()}
        total, clients = 0, []
        for k in rnd["clients"]:
            net.load_state_dict(state)
            opt = torch.optim.SGD(net.parameters(), lr=rnd["lr"])
            for order in orders[f"order_{k}"]:             # (E, n_k): one row per epoch
                step = rnd["batch_size"] or len(order)
                for s in range(0, len(order), step):
                    batch = order[s:s + step]
                    x = torch.from_numpy(images[batch]).to(dtype)[:, None] / 255
                    opt.zero_grad()
                    F.cross_entropy(net(x), torch.from_numpy(labels[batch])).backward()
                    opt.step()
            n_k = len(init[f"client_{k}"])
            client = {name: v.detach().to(torch.float64) for name, v in net.state_dict().items()}
            for name, v in client.items():
                sums[name] += n_k * v
            total += n_k
            clients.append(client)
        state = {name: (v / total).to(dtype) for name, v in sums.items()}
        uniform = {name: sum(c[name] for c in clients) / len(clients) for name in state}
        yield t, state, uniform
        t += 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["mlp_2nn", "cnn_mnist"])
def test_plain_pytorch_fedavg_replays_the_refsim_trace(tmp_path, name, dtype):
    factory, module, sizes, _ = CASES[name]
    tdir = _write_trace(tmp_path / "run", name, dtype)
    mnist = load_mnist()
    tol = TOLERANCE[dtype]
    saved = {}
    with _torch_settings(TORCH_DTYPE[dtype]):
        net = module()
        replay = _torch_fedavg(tdir, net, mnist.x_train, mnist.y_train, TORCH_DTYPE[dtype])
        for t, state, uniform in replay:
            traced = np.load(tdir / f"round_{t:06d}.npz")["weights"]
            ours = from_torch_state_dict(factory(), {k: v.numpy() for k, v in state.items()})
            assert ours.dtype == traced.dtype == dtype
            np.testing.assert_allclose(ours, traced, **tol,
                                       err_msg=f"{name} {np.dtype(dtype).name} round {t}")
            saved.update({f"round_{t}/{k}": v.numpy() for k, v in state.items()})
            if t == 1:  # discriminating: an unweighted mean is far outside the tolerance
                wrong = from_torch_state_dict(factory(), {k: v.numpy() for k, v in uniform.items()})
                assert not np.allclose(wrong, traced, **tol)
    assert t == 3
    rounds = [json.loads((tdir / f"round_{r:06d}.json").read_text()) for r in (1, 2, 3)]
    assert all(len({sizes[k] for k in r["clients"]}) == 2 for r in rounds)  # unequal n_k
    # The same check through refsim compare, reading the replay as a PyTorch state-dict npz.
    np.savez(tmp_path / "torch_replay.npz", **saved)
    result = compare_paths(tmp_path / "torch_replay.npz", tdir, **tol)
    assert result.agree and result.rounds == (1, 2, 3), result.first_divergence
    assert "from_torch_state_dict" in result.a.mapping
