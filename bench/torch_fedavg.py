"""The plain PyTorch FedAvg round the benchmarks compare refsim with, on a CPU or a GPU.

What a user would write: for each client, load the global state, ``torch.optim.SGD`` over the
client's batches (refsim's batch order, ``refsim.data.batching.batch_order``, round 1), then
sum(n_k * w_k) / sum(n_k) over the state dicts. torch is imported when a function is called, so
this module imports without it.
"""

from collections import OrderedDict

import numpy as np

from refsim.data import batch_order
from refsim.nn import to_torch_state_dict


def torch_net(name: str):
    """The PyTorch twin of refsim's ``cnn_mnist`` or ``mlp_2nn`` (same parameter names)."""
    from torch import nn
    if name == "cnn_mnist":
        return nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(1, 32, 5, padding=2)), ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(32, 64, 5, padding=2)), ("relu2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()), ("fc1", nn.Linear(3136, 512)), ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(512, 10))]))
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(784, 200)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(200, 200)), ("relu2", nn.ReLU()), ("fc3", nn.Linear(200, 10))]))


def torch_round(name, model, params, data, parts, lr: float, batch_size: int, seed: int,
                device: str = "cpu"):
    """One FedAvg round (E = 1) over clients 0..len(parts)-1 on ``device``; returns the
    averaged state dict (tensors on ``device``)."""
    import torch
    import torch.nn.functional as F
    dtype = torch.float64 if params.dtype == np.float64 else torch.float32
    net = torch_net(name).to(device=device, dtype=dtype)
    global_state = OrderedDict((k, torch.from_numpy(v.copy()).to(device))
                               for k, v in to_torch_state_dict(model, params).items())
    x = torch.from_numpy(data.x_train).to(device)
    y = torch.from_numpy(data.y_train).to(device)
    total, weights = None, 0
    for k, idx in enumerate(parts):
        net.load_state_dict(global_state)
        opt = torch.optim.SGD(net.parameters(), lr=lr)
        order = torch.from_numpy(batch_order(idx, 1, seed, 1, k)[0]).to(device)
        for s in range(0, len(order), batch_size):
            b = order[s:s + batch_size]
            opt.zero_grad()
            F.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
        n_k = len(idx)
        sd = net.state_dict()
        total = ({n: n_k * t.clone() for n, t in sd.items()} if total is None
                 else {n: total[n] + n_k * sd[n] for n in sd})
        weights += n_k
    return OrderedDict((n, t / weights) for n, t in total.items())
