"""refsim's CuPy backend beside PyTorch (cuDNN, cuBLAS) on the same GPU, in the same run.

Issue goals: the CNN training step within 1.5x of PyTorch at B = 50 and 600 (B = 10 reported);
one FedAvg round of the paper's CNN setting (10 clients x 600 examples, E = 1, B = 10; McMahan
et al., AISTATS 2017, arXiv:1602.05629) faster than a plain PyTorch loop, with the clients
trained one at a time and side by side (``FedAvgConfig.client_stack = 10``). Skipped without CuPy,
a CUDA device and a CUDA build of torch. Run on the GPU machine:

    python -m pytest bench/bench_gpu.py --benchmark-enable --benchmark-json=gpu.json
    python bench/ratios.py gpu.json

Before timing, each refsim computation is checked against PyTorch in float64 on the device
(one SGD step; a round on two clients cut to 60 and 37 examples). Timings are float32; every
timed call ends with a device synchronisation, so the time is the GPU's, not the launch
queue's. The baseline is PyTorch computing in true float32 (TF32 off, as refsim and CuPy do);
the CNN step is also timed with PyTorch's defaults (``cudnn.allow_tf32`` on: convolutions in
TF32, 10 mantissa bits), reported as a ratio to that baseline. ``cudnn.benchmark`` stays off.
"""

import numpy as np
import pytest

from refsim.backend import Purpose, available_backends, get_xp, make_rng, to_numpy
from refsim.data import load_mnist, partition
from refsim.fedavg import DType, FedAvgConfig, FedData, from_images, run_round
from refsim.nn import cnn_mnist, from_torch_state_dict, mlp_2nn, sgd_step, to_torch_state_dict
from torch_fedavg import torch_net, torch_round

if "cupy" not in available_backends():
    pytest.skip("needs CuPy and a CUDA device", allow_module_level=True)
torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA build of torch that sees the device", allow_module_level=True)
cp = get_xp("cupy")
F = torch.nn.functional

LR, SEED, K, STEPS = 0.05, 0, 10, 20
MODELS = {"mlp_2nn": mlp_2nn, "cnn_mnist": cnn_mnist}
_DATA = {}


def _data(dtype: DType) -> FedData:
    if dtype not in _DATA:
        _DATA[dtype] = from_images(load_mnist(), dtype.np, train_limit=K * 600, test_limit=10)
    return _DATA[dtype]


def _sync():
    cp.cuda.Device().synchronize()
    torch.cuda.synchronize()


def _refsim_steps(model, w, x, y, steps):
    for _ in range(steps):
        _, grad, _ = model.loss_grad_and_logits(w, x, y, check_values=False)
        w = sgd_step(w, grad, LR)
    _sync()
    return w


def _torch_steps(net, opt, x, y, steps):
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    _sync()


def _step_setup(batch, dtype):
    model = cnn_mnist()
    data = _data(dtype)
    params = model.init(make_rng(SEED, Purpose.INIT), "torch", dtype.np)
    x, y = data.x_train[:batch], data.y_train[:batch]
    net = torch_net("cnn_mnist").to(device="cuda", dtype=torch.float64 if dtype is DType.FLOAT64
                                    else torch.float32)
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in
                         to_torch_state_dict(model, params).items()})
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    return (model, cp.asarray(params), cp.asarray(x), cp.asarray(y), net, opt,
            torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda())


@pytest.mark.parametrize("batch", [10, 50, 600])
def test_refsim_cnn_step(benchmark, batch):
    model, w, x, y, net, opt, tx, ty = _step_setup(batch, DType.FLOAT64)
    got = to_numpy(_refsim_steps(model, w, x, y, 1))
    _torch_steps(net, opt, tx, ty, 1)
    expected = from_torch_state_dict(model, {k: v.cpu() for k, v in net.state_dict().items()})
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12,
                               err_msg=f"one CNN SGD step, B={batch}, CuPy vs PyTorch (float64)")
    model, w, x, y, *_ = _step_setup(batch, DType.FLOAT32)
    benchmark.group = f"gpu cnn step x{STEPS} B={batch}"
    benchmark.extra_info.update(role="candidate", steps=STEPS)
    benchmark.pedantic(_refsim_steps, args=(model, w, x, y, STEPS), rounds=7, iterations=1,
                       warmup_rounds=2)


@pytest.mark.parametrize("tf32", [False, True], ids=["fp32", "tf32-defaults"])
@pytest.mark.parametrize("batch", [10, 50, 600])
def test_torch_cnn_step(benchmark, batch, tf32):
    *_, net, opt, tx, ty = _step_setup(batch, DType.FLOAT32)
    benchmark.group = f"gpu cnn step x{STEPS} B={batch}"
    benchmark.extra_info.update(role="reference" if tf32 else "baseline", steps=STEPS,
                                torch=torch.__version__, cudnn=torch.backends.cudnn.version())
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        benchmark.pedantic(_torch_steps, args=(net, opt, tx, ty, STEPS), rounds=7, iterations=1,
                           warmup_rounds=2)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _round_setup(name, dtype, sizes=None, stack=1):
    data = _data(dtype)
    parts = partition.iid(data.y_train, K, make_rng(SEED, Purpose.PARTITION))
    if sizes is not None:
        parts = [p[:n] for p, n in zip(parts, sizes)]
    model = MODELS[name]()
    params = model.init(make_rng(SEED, Purpose.INIT), "torch", dtype.np)
    cfg = FedAvgConfig(fraction=1.0, epochs=1, batch_size=10, lr=LR, rounds=1, seed=SEED,
                       dtype=dtype, backend="cupy", client_stack=stack)
    device_data = FedData(*(cp.asarray(a) for a in data))
    return model, params, data, device_data, parts, cfg


def _refsim_round(params, cfg, model, data, parts):
    out = run_round(params, {}, 1, cfg, model, data, parts)
    _sync()
    return out


def _torch_round_synced(*args, **kwargs):
    out = torch_round(*args, **kwargs)
    _sync()
    return out


@pytest.mark.parametrize("stack", [1, 10], ids=["one-at-a-time", "side-by-side"])
@pytest.mark.parametrize("name", list(MODELS))
def test_refsim_round(benchmark, name, stack):
    """client_stack 1 (the reference path) and 10 (all ten clients side by side)."""
    sizes = (60, 37) if stack == 1 else (60, 60)  # side by side needs equal n_k
    model, params, data, ddata, parts, cfg = _round_setup(name, DType.FLOAT64, sizes, stack)
    got, _, _ = run_round(cp.asarray(params), {}, 1, cfg, model, ddata, parts)
    state = torch_round(name, model, params, data, parts, LR, 10, SEED, device="cuda")
    expected = from_torch_state_dict(model, {k: v.cpu() for k, v in state.items()})
    np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-9, atol=1e-11,
                               err_msg=f"refsim CuPy round vs PyTorch CUDA loop (float64), {name}")
    model, params, _, ddata, parts, cfg = _round_setup(name, DType.FLOAT32, stack=stack)
    benchmark.group = f"gpu fedavg round {name} 10x600 B=10"
    benchmark.extra_info.update(role="candidate", client_stack=stack)
    benchmark.pedantic(_refsim_round, args=(cp.asarray(params), cfg, model, ddata, parts),
                       rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("name", list(MODELS))
def test_torch_round(benchmark, name):
    model, params, data, _, parts, _ = _round_setup(name, DType.FLOAT32)
    benchmark.group = f"gpu fedavg round {name} 10x600 B=10"
    benchmark.extra_info.update(role="baseline", torch=torch.__version__)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        benchmark.pedantic(_torch_round_synced, args=(name, model, params, data, parts, LR, 10,
                                                      SEED), kwargs={"device": "cuda"},
                           rounds=3, iterations=1, warmup_rounds=1)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
