"""Client optimizers (refsim/fedavg/client_opt.py): torch.optim's SGD with momentum and Adam,
step for step and through whole FedAvg runs with both state policies, in float64; their
state in checkpoints (resume bit for bit); determinism; bad settings."""

import dataclasses

import numpy as np
import pytest
from checks import contiguous_partition, mnist_slice

from refsim.data import batch_order
from refsim.data.batching import batch_slices
from refsim.fedavg import FedAvgConfig, run_fedavg, sample_clients
from refsim.fedavg.client_opt import (ClientOpt, ClientOptConfig, ClientStatePolicy,
                                      client_opt_step, init_client_state, split_client_states)
from refsim.fedavg.config import DType, clients_per_round
from refsim.nn import from_torch_state_dict, mlp_2nn, to_torch_state_dict

SIZES = [37, 5, 61, 12, 90, 23]  # unequal n_k; B = 7 divides none of them
OPTS = {
    "momentum": ClientOptConfig(ClientOpt.MOMENTUM, momentum=0.8),
    "adam": ClientOptConfig(ClientOpt.ADAM),
    "adam-betas": ClientOptConfig(ClientOpt.ADAM, beta1=0.5, beta2=0.9, eps=1e-6),
}


def _torch_optimizer(torch, opt: ClientOptConfig, params, lr: float):
    if opt.kind is ClientOpt.MOMENTUM:
        return torch.optim.SGD(params, lr=lr, momentum=opt.momentum)
    return torch.optim.Adam(params, lr=lr, betas=(opt.beta1, opt.beta2), eps=opt.eps)


def _max_rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize("name", sorted(OPTS))
def test_one_step_after_another_equals_torch_optim(name):
    torch = pytest.importorskip("torch")
    opt, rng = OPTS[name], np.random.default_rng(1)
    w = rng.standard_normal(50)
    p = torch.nn.Parameter(torch.from_numpy(w.copy()))
    t_opt = _torch_optimizer(torch, opt, [p], lr=0.03)
    state = init_client_state(opt, w)
    for step in range(25):
        g = rng.standard_normal(50) * (10.0 ** rng.integers(-4, 2))
        w, state = client_opt_step(opt, w, g, 0.03, state)
        p.grad = torch.from_numpy(g.copy())
        t_opt.step()
        assert _max_rel(w, p.detach().numpy()) <= 1e-15, f"step {step + 1}"
    assert int(state["step"]) == 25


def _torch_fedavg(cfg: FedAvgConfig, model, data, parts):
    """A plain PyTorch FedAvg of ``cfg``'s rounds: refsim's client draw and batch order, one
    torch.optim optimizer per client, made every round (reset) or once (keep)."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    from torch_models import TorchMLP2NN
    nets, opts = {}, {}
    K, m = len(parts), clients_per_round(cfg.fraction, len(parts))
    w = from_torch_state_dict(model, {k: v.numpy() for k, v in _init_state(model, cfg).items()})
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for t in range(1, cfg.rounds + 1):
        total, n = np.zeros_like(w), 0
        for k in (int(k) for k in sample_clients(cfg.seed, t, K, m)):
            if k not in nets:
                nets[k] = TorchMLP2NN().double()
            net = nets[k]
            net.load_state_dict({n_: torch.from_numpy(v.copy())
                                 for n_, v in to_torch_state_dict(model, w).items()})
            if k not in opts or cfg.client_opt.state is ClientStatePolicy.RESET:
                opts[k] = _torch_optimizer(torch, cfg.client_opt, net.parameters(),
                                           cfg.client_lr(t))
            for group in opts[k].param_groups:  # a kept optimizer takes round t's lr
                group["lr"] = cfg.client_lr(t)
            for epoch in batch_order(parts[k], cfg.epochs, cfg.seed, t, k):
                for start, stop in batch_slices(len(epoch), cfg.batch_size):
                    b = torch.from_numpy(epoch[start:stop])
                    opts[k].zero_grad()
                    F.cross_entropy(net(x[b]), y[b]).backward()
                    opts[k].step()
            w_k = from_torch_state_dict(model, {n_: v.detach().numpy()
                                                for n_, v in net.state_dict().items()})
            total += len(parts[k]) * (w_k - w)
            n += len(parts[k])
        w = w + total / n
    return w


def _init_state(model, cfg):
    import torch
    from refsim.backend import Purpose, make_rng
    w0 = model.init(make_rng(cfg.seed, Purpose.INIT), cfg.init.value, cfg.dtype.np)
    return {k: torch.from_numpy(v) for k, v in to_torch_state_dict(model, w0).items()}


@pytest.mark.parametrize("policy", list(ClientStatePolicy))
@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_fedavg_with_a_client_optimizer_equals_torch_optim_over_rounds(name, policy):
    pytest.importorskip("torch")
    opt = OPTS[name]
    opt = dataclasses.replace(opt, state=policy)
    lr = 0.05 if name == "momentum" else 0.002
    cfg = FedAvgConfig(fraction=0.5, epochs=2, batch_size=7, lr=lr, lr_decay=0.9, rounds=4,
                       dtype=DType.FLOAT64, seed=3, client_opt=opt)
    model, parts = mlp_2nn(), contiguous_partition(SIZES)
    data = mnist_slice("float64", sum(SIZES), 10)
    h = run_fedavg(cfg, model, data, parts)
    expected = _torch_fedavg(cfg, model, data, parts)
    assert _max_rel(h.params, expected) <= 1e-12
    # the policy matters: some client trained twice over the 4 rounds
    sampled = [set(r.clients) for r in h.rounds]
    assert any(a & b for i, a in enumerate(sampled) for b in sampled[i + 1:])
    other = ClientStatePolicy.KEEP if policy is ClientStatePolicy.RESET else ClientStatePolicy.RESET
    h2 = run_fedavg(dataclasses.replace(cfg, client_opt=dataclasses.replace(opt, state=other)),
                    model, data, parts)
    assert not np.array_equal(h2.params, h.params)


def test_plain_sgd_is_the_default_and_unchanged_bits():
    data, parts = mnist_slice("float32", sum(SIZES), 10), contiguous_partition(SIZES)
    base = dict(fraction=0.5, epochs=1, batch_size=7, lr=0.1, rounds=2)
    a = run_fedavg(FedAvgConfig(**base), mlp_2nn(), data, parts)
    b = run_fedavg(FedAvgConfig(**base, client_opt=ClientOptConfig(ClientOpt.SGD)), mlp_2nn(),
                   data, parts)
    np.testing.assert_array_equal(a.params, b.params)


class _Stop(Exception):
    pass


def _stop_after(round_):
    def on_round(row):
        if row.round == round_:
            raise _Stop
    return on_round


def test_kept_states_are_in_the_checkpoint_and_a_resumed_run_is_bit_identical(tmp_path):
    from refsim.fedavg.storage import load_checkpoint
    opt = ClientOptConfig(ClientOpt.ADAM, state=ClientStatePolicy.KEEP)
    data, parts = mnist_slice("float32", sum(SIZES), 10), contiguous_partition(SIZES)
    cfg = FedAvgConfig(fraction=0.5, epochs=1, batch_size=7, lr=0.001, rounds=4, client_opt=opt)
    whole = run_fedavg(cfg, mlp_2nn(), data, parts)
    with pytest.raises(_Stop):  # interrupted after round 2's checkpoint
        run_fedavg(cfg, mlp_2nn(), data, parts, run_dir=tmp_path, on_round=_stop_after(2))
    _, _, state, _ = load_checkpoint(tmp_path / "checkpoint.npz")
    _, kept = split_client_states(state)
    trained = sorted({k for r in whole.rounds[:2] for k in r.clients})
    assert sorted(kept) == trained and set(kept[trained[0]]) == {"step", "exp_avg", "exp_avg_sq"}
    resumed = run_fedavg(cfg, mlp_2nn(), data, parts, run_dir=tmp_path, resume=True)
    np.testing.assert_array_equal(resumed.params, whole.params)
    assert [r.to_dict() for r in resumed.rounds] == [r.to_dict() for r in whole.rounds]
    # without the kept states (a reset run) the same rounds give other weights
    reset = dataclasses.replace(cfg, client_opt=dataclasses.replace(
        opt, state=ClientStatePolicy.RESET))
    assert not np.array_equal(run_fedavg(reset, mlp_2nn(), data, parts).params, whole.params)


def test_bad_client_optimizer_settings_name_the_field():
    with pytest.raises(ValueError, match=r"client_opt.momentum must be in \(0.0, 1.0\)"):
        ClientOptConfig(ClientOpt.MOMENTUM, momentum=0.0)
    with pytest.raises(ValueError, match="client_opt.eps must be in"):
        ClientOptConfig(ClientOpt.ADAM, eps=0.0)
    with pytest.raises(TypeError, match="client_opt.beta1 must be a number"):
        ClientOptConfig(ClientOpt.ADAM, beta1="0.9")
    with pytest.raises(ValueError, match="plain SGD has none"):
        ClientOptConfig(state=ClientStatePolicy.KEEP)
    with pytest.raises(ValueError, match="client_stack > 1 .* plain SGD only"):
        FedAvgConfig(client_stack=2, client_opt=ClientOptConfig(ClientOpt.ADAM))
    with pytest.raises(TypeError, match="client_opt must be a ClientOptConfig"):
        FedAvgConfig(client_opt="adam")
