"""Cross-check against PyTorch (CPU, a test-only dependency): for each model, the same
weights (through the converter) and inputs give the same logits, loss, every gradient, one
SGD step, and PyTorch's default initialisation stays inside refsim's 'torch' bounds.

The PyTorch networks are written out here from their published descriptions, not derived
from refsim's layer list, so a wrong refsim architecture fails these tests.
"""

from collections import OrderedDict

import numpy as np
import pytest

from refsim.nn import cnn_cifar, cnn_mnist, from_torch_state_dict, logistic, mlp_2nn, sgd_step
from refsim.nn import to_torch_state_dict

torch = pytest.importorskip("torch", reason="PyTorch is a test-only cross-check: "
                                            "pip install torch==2.13.0 (CPU) to run it")
F = torch.nn.functional
from torch_models import TorchCifarNet, TorchCNNMnist, TorchLogistic, TorchMLP2NN  # noqa: E402

# float64 agrees to rounding; float32 differs by summation order over up to 3136 terms.
TOLERANCE = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-4, atol=1e-5)}


PAIRS = {"cnn_mnist": (cnn_mnist, TorchCNNMnist), "mlp_2nn": (mlp_2nn, TorchMLP2NN),
         "logistic": (logistic, TorchLogistic), "cnn_cifar": (cnn_cifar, TorchCifarNet)}
TORCH_DTYPE = {np.float32: torch.float32, np.float64: torch.float64}


def _setup(name, dtype, seed=0, n=5):
    factory, torch_class = PAIRS[name]
    model = factory()
    rng = np.random.default_rng(seed)
    params = model.init(rng, "torch", dtype)
    params += dtype(0.01) * rng.standard_normal(params.shape).astype(dtype)  # break init symmetry
    x = rng.random((n, *model.input_shape)).astype(dtype)
    y = rng.integers(0, model.num_classes, size=n)
    net = torch_class().to(TORCH_DTYPE[dtype])
    net.load_state_dict(OrderedDict((k, torch.from_numpy(v))
                                    for k, v in to_torch_state_dict(model, params).items()))
    return model, params, x, y, net


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", PAIRS)
def test_logits_loss_and_gradients_match_pytorch(name, dtype):
    model, params, x, y, net = _setup(name, dtype)
    tol = TOLERANCE[dtype]
    logits_t = net(torch.from_numpy(x))
    loss_t = F.cross_entropy(logits_t, torch.from_numpy(y))
    loss_t.backward()
    grad_t = from_torch_state_dict(model, OrderedDict((k, p.grad) for k, p in net.named_parameters()))

    np.testing.assert_allclose(model.forward(params, x), logits_t.detach().numpy(), **tol,
                               err_msg=f"{name}: logits")
    loss, grad = model.loss_and_grad(params, x, y)
    np.testing.assert_allclose(loss, loss_t.item(), **tol, err_msg=f"{name}: loss")
    scale = np.abs(grad_t).max()
    views, views_t = model.views(grad), model.views(grad_t)
    for spec in model.layout:
        np.testing.assert_allclose(views[spec.name], views_t[spec.name], rtol=tol["rtol"],
                                   atol=tol["atol"] * scale, err_msg=f"{name}: d/d{spec.name}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", PAIRS)
def test_one_sgd_step_matches_pytorch(name, dtype):
    model, params, x, y, net = _setup(name, dtype, seed=1)
    lr = 0.1
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    optimizer.zero_grad()
    F.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    optimizer.step()
    stepped = sgd_step(params, model.loss_and_grad(params, x, y)[1], lr)
    np.testing.assert_allclose(stepped, from_torch_state_dict(model, net.state_dict()),
                               **TOLERANCE[dtype], err_msg=f"{name}: parameters after one SGD step")


@pytest.mark.parametrize("name", PAIRS)
def test_pytorch_default_init_lies_in_refsims_torch_scheme_bounds(name):
    factory, torch_class = PAIRS[name]
    model = factory()
    torch.manual_seed(0)
    theirs = model.views(from_torch_state_dict(model, torch_class().state_dict()))
    ours = model.views(model.init(np.random.default_rng(0), "torch", np.float32))
    for spec in model.layout:
        layer = spec.name.split(".")[0]
        weight_shape = model.views(np.zeros(model.num_params))[f"{layer}.weight"].shape
        # refsim layouts: conv (O, C, K, K) has fan_in C*K*K; dense (I, O) has fan_in I.
        fan_in = np.prod(weight_shape[1:]) if len(weight_shape) == 4 else weight_shape[0]
        bound = 1 / np.sqrt(fan_in)  # PyTorch's kaiming_uniform(a=sqrt(5)) and bias bound
        assert np.abs(theirs[spec.name]).max() <= bound * (1 + 1e-6), spec.name
        assert np.abs(ours[spec.name]).max() <= bound * (1 + 1e-6), spec.name
        if spec.size >= 1000:  # a uniform sample this large nearly reaches its bound
            assert np.abs(theirs[spec.name]).max() > 0.99 * bound, spec.name
            assert np.abs(ours[spec.name]).max() > 0.99 * bound, spec.name
