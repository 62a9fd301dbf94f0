"""A plain-PyTorch ClientUpdate that records its weights at every local step, in the candidate
format of ``refsim compare-steps`` (``step_<j>/<tensor>``, PyTorch's layout), driven by a refsim
trace; and the bugs the per-step check must catch, each switched on from a chosen step.

The network is written out from the paper in ``tests/torch_models.py``; the batches are
consecutive slices of the traced order (the last one shorter), x / 255, mean cross-entropy,
``torch.optim.SGD``. Import it only after ``pytest.importorskip("torch")``.
"""

import json
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is a test-only cross-check")
F = torch.nn.functional

# The injected bugs: what a wrong implementation does instead, from step ``bug_from`` on.
BUGS = {
    "lr_off_by_1pct": "the learning rate is 1% too large",
    "summed_loss": "the loss is summed over the batch, not averaged",
    "keras_flatten": "the activations are flattened in NHWC order before fc1 (Keras)",
    "frozen_bias": "fc2.bias is never updated",
    "batch_off_by_one": "each batch is taken one example later in the epoch's order",
    "weight_decay": "SGD with weight_decay=1e-4",
    "double_softmax": "softmax is applied to the logits before the cross-entropy",
}


def _forward(net, x, keras_flatten: bool):
    """net(x), or, for the CNN, with the activations flattened in NHWC order before fc1."""
    if not keras_flatten:
        return net(x)
    h = F.max_pool2d(F.relu(net.conv1(x)), 2)
    h = F.max_pool2d(F.relu(net.conv2(h)), 2)
    h = h.permute(0, 2, 3, 1).flatten(1)  # NHWC: the wrong order for refsim's fc1 rows
    return net.fc2(F.relu(net.fc1(h)))


def record_steps(trace_dir, round_: int, client: int, net, images, labels, dtype=torch.float32,
                 bug: str | None = None, bug_from: int = 0, steps: range | None = None,
                 flat: bool = False):
    """Run client ``client``'s local steps of round ``round_`` in PyTorch; return
    {step_<j>/<tensor>: array} for j in ``steps`` (default: all, w_0..w_S), or with ``flat``
    {j: the flat refsim vector of w_j} (``from_torch_state_dict``).

    The network starts from the weights the trace's round began with: w_0 in round 1 (the
    trace's ``init.npz``), else the weights stored with the previous round.
    """
    from refsim.nn import from_torch_state_dict, to_torch_state_dict
    from refsim.validation.weight_files import reference_model
    tdir = pathlib.Path(trace_dir)
    header = json.loads((tdir / "init.json").read_text())
    model = reference_model(header["model"])
    rnd = json.loads((tdir / f"round_{round_:06d}.json").read_text())
    if round_ == 1:
        start = np.load(tdir / "init.npz")["weights"]
    else:
        start = np.load(tdir / f"round_{round_ - 1:06d}.npz")["weights"]
    net = net.to(dtype)
    net.load_state_dict({k: torch.from_numpy(v).to(dtype)
                         for k, v in to_torch_state_dict(model, start).items()})
    B = rnd["batch_size"]
    orders = np.load(tdir / f"round_{round_:06d}.npz")[f"order_{client}"]  # (E, n_k)
    total = orders.shape[0] * -(-orders.shape[1] // B)
    keep = range(total + 1) if steps is None else steps
    saved = {}

    def save(j):
        if j in keep and flat:
            saved[j] = from_torch_state_dict(model, {k: v.detach().numpy()
                                                     for k, v in net.state_dict().items()})
        elif j in keep:
            saved.update({f"step_{j}/{k}": v.detach().numpy().copy()
                          for k, v in net.state_dict().items()})

    j = 0
    save(0)
    for order in orders:
        for s in range(0, len(order), B):
            on = bug is not None and j >= bug_from
            batch = (np.roll(order, -1) if on and bug == "batch_off_by_one" else order)[s:s + B]
            lr = rnd["lr"] * (1.01 if on and bug == "lr_off_by_1pct" else 1.0)
            opt = torch.optim.SGD(net.parameters(), lr=lr,
                                  weight_decay=1e-4 if on and bug == "weight_decay" else 0.0)
            x = torch.from_numpy(images[batch]).to(dtype)[:, None] / 255
            y = torch.from_numpy(np.asarray(labels[batch], np.int64))
            logits = _forward(net, x, on and bug == "keras_flatten")
            if on and bug == "double_softmax":
                logits = F.softmax(logits, dim=1)
            loss = F.cross_entropy(logits, y, reduction="sum" if on and bug == "summed_loss"
                                   else "mean")
            opt.zero_grad()
            loss.backward()
            if on and bug == "frozen_bias":
                net.fc2.bias.grad = None  # SGD skips a parameter without a gradient
            opt.step()
            j += 1
            save(j)
            if j > keep[-1]:
                return saved
    return saved
