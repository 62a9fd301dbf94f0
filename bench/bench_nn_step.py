"""One training step (forward, backward, SGD update) of refsim's models beside PyTorch (CPU).

Run:  python -m pytest bench/bench_nn_step.py --benchmark-enable --benchmark-json=nn.json
      python bench/ratios.py nn.json

Each group times refsim and PyTorch on the same weights and batch, with PyTorch limited to
as many threads as this process may use (OpenBLAS, which NumPy calls, uses them all). Before
timing, the refsim step is checked against the PyTorch step (float32 tolerance), so a fast
wrong answer cannot be reported. float32, as both frameworks default to.
"""

import os
from collections import OrderedDict

import numpy as np
import pytest

from refsim.nn import cnn_mnist, from_torch_state_dict, mlp_2nn, sgd_step, to_torch_state_dict

torch = pytest.importorskip("torch", reason="the PyTorch baseline needs torch==2.13.0 (CPU)")
nn, F = torch.nn, torch.nn.functional

THREADS = len(os.sched_getaffinity(0))
LR = 0.05
CASES = [("cnn_mnist", 10), ("cnn_mnist", 50), ("mlp_2nn", 10)]


def _torch_net(name):
    if name == "cnn_mnist":
        net = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, 32, 5, padding=2)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(32, 64, 5, padding=2)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()), ("fc1", nn.Linear(3136, 512)), ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(512, 10))]))
    else:
        net = nn.Sequential(OrderedDict([
            ("flatten", nn.Flatten()), ("fc1", nn.Linear(784, 200)), ("relu1", nn.ReLU()),
            ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU()), ("fc3", nn.Linear(200, 10))]))
    return net


def _setup(name, batch):
    model = {"cnn_mnist": cnn_mnist, "mlp_2nn": mlp_2nn}[name]()
    rng = np.random.default_rng(0)
    params = model.init(rng, "torch", np.float32)
    x = rng.random((batch, *model.input_shape), dtype=np.float32)
    y = rng.integers(0, 10, size=batch)
    net = _torch_net(name)
    net.load_state_dict(OrderedDict((k, torch.from_numpy(v))
                                    for k, v in to_torch_state_dict(model, params).items()))
    return model, params, x, y, net


def _check_same_step(model, params, x, y, net):
    """The oracle check before timing: refsim's SGD step equals PyTorch's (float32)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    optimizer.zero_grad()
    F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    optimizer.step()
    expected = from_torch_state_dict(model, net.state_dict())
    stepped = sgd_step(params, model.loss_and_grad(params, x, y)[1], LR)
    np.testing.assert_allclose(stepped, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name, batch", CASES)
def test_refsim_step(benchmark, name, batch):
    model, params, x, y, net = _setup(name, batch)
    _check_same_step(model, params, x, y, net)
    benchmark.group = f"train step {name} B={batch}"
    benchmark.extra_info.update(threads=THREADS, role="candidate")
    state = {"params": params.copy()}

    def step():
        _, grad = model.loss_and_grad(state["params"], x, y)
        sgd_step(state["params"], grad, LR, out=state["params"])  # in place, as PyTorch's

    benchmark.pedantic(step, rounds=30, iterations=1, warmup_rounds=3)


@pytest.mark.parametrize("name, batch", CASES)
def test_torch_step(benchmark, name, batch):
    torch.set_num_threads(THREADS)
    _, _, x, y, net = _setup(name, batch)
    benchmark.group = f"train step {name} B={batch}"
    benchmark.extra_info.update(threads=THREADS, role="baseline")
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        optimizer.zero_grad()
        F.cross_entropy(net(xt), yt).backward()
        optimizer.step()

    benchmark.pedantic(step, rounds=30, iterations=1, warmup_rounds=3)
