"""The measurements behind ``refsim compare-steps``' tolerance and the divergence onset
(docs/validation.md, "The step tolerance" and "When float32 trajectories part").

For each seed: one client of 600 real MNIST digits (drawn with the seed), refsim's initial
weights (``--init``), B = 10 (``--batch-size``), lr 0.1, ``--steps`` local steps. A plain
PyTorch 2.13 SGD loop (float32, one thread, ``tests/torch_models.py``) runs the steps; refsim
runs the same steps from the same start.

* local errors: every PyTorch step w_j -> w_{j+1} goes through ``check_step`` from PyTorch's
  own w_j; per tensor, E/S (its error over the rounding scale S) and E in ulps of the tensor's
  largest weight, and refsim's own float32 error |r32 - r64| in the same ulps; quantiles over
  all tensor-steps, and the steps that needed a tie flip;
* onset: the first step after which refsim's and PyTorch's float32 trajectories differ by more
  than 1e-5 of some tensor's largest weight (max_T max|a - b| / max|b|), with the float64
  trajectories' largest difference over all steps beside it.

Run: ``python bench/step_tolerance.py --model cnn --seeds 10 --steps 120`` (needs torch).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ONSET = 1e-5  # a trajectory has parted once some tensor differs by this much of its max
TOL = None  # the StepTolerance used (set in main)


def client_data(seed: int, steps: int, batch_size: int, n: int = 600):
    """(images, labels) uint8/int64 of the steps' batches, in order: a client of n digits
    drawn with the seed, reshuffled every epoch."""
    from refsim.data import load_mnist
    mnist = load_mnist()
    rng = np.random.default_rng([seed, 99])
    idx = rng.choice(len(mnist.y_train), n, replace=False)
    epochs = -(-steps * batch_size // n)
    order = np.concatenate([idx[rng.permutation(n)] for _ in range(epochs)])
    batches = [order[j * batch_size:(j + 1) * batch_size] for j in range(steps)]
    return [(mnist.x_train[b], mnist.y_train[b].astype(np.int64)) for b in batches]


class TorchClient:
    """PyTorch's SGD on the client, one step at a time; ``weights()`` in refsim's layout."""

    def __init__(self, model, net, w0, lr, dtype):
        import torch
        from refsim.nn import to_torch_state_dict
        self.torch, self.model, self.dtype = torch, model, dtype
        self.tdt = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
        self.net = net.to(self.tdt)
        self.net.load_state_dict({k: torch.from_numpy(v).to(self.tdt)
                                  for k, v in to_torch_state_dict(model, w0.astype(dtype)).items()})
        self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)

    def step(self, images, labels):
        torch = self.torch
        x = torch.from_numpy(images).to(self.tdt)[:, None] / 255
        self.opt.zero_grad()
        torch.nn.functional.cross_entropy(self.net(x), torch.from_numpy(labels)).backward()
        self.opt.step()

    def weights(self):
        from refsim.nn import from_torch_state_dict
        return from_torch_state_dict(self.model, {k: v.detach().numpy()
                                                  for k, v in self.net.state_dict().items()})


def refsim_step(model, w, images, labels, lr):
    from refsim.nn import sgd_step
    from refsim.validation.steps import batch_inputs
    _, grad = model.loss_and_grad(w, batch_inputs(images, slice(None), w.dtype), labels)
    return sgd_step(w, grad, lr)


def parted(model, a, b) -> float:
    va, vb = model.views(a.astype(np.float64)), model.views(b.astype(np.float64))
    return max(float(np.abs(va[s.name] - vb[s.name]).max() / np.abs(vb[s.name]).max())
               for s in model.layout)


def measure(model_name: str, seed: int, steps: int, batch_size: int, init: str, lr: float,
            check_steps: int):
    import torch
    from refsim.backend import Purpose, make_rng
    from refsim.nn import cnn_mnist, mlp_2nn
    from refsim.validation.steps import batch_inputs, check_step
    from torch_models import TorchCNNMnist, TorchMLP2NN
    torch.set_num_threads(1)
    model = {"cnn": cnn_mnist, "2nn": mlp_2nn}[model_name]()
    net = {"cnn": TorchCNNMnist, "2nn": TorchMLP2NN}[model_name]
    w0 = model.init(make_rng(seed, Purpose.INIT), init, np.float64)
    batches = client_data(seed, steps, batch_size)
    t32, t64 = TorchClient(model, net(), w0, lr, np.float32), TorchClient(model, net(), w0, lr,
                                                                          np.float64)
    r32, r64, a = w0.astype(np.float32), w0, w0.astype(np.float32)
    onset, gap64, rows, flips, seconds = None, 0.0, [], [], 0.0
    for j, (images, labels) in enumerate(batches):
        t32.step(images, labels)
        t64.step(images, labels)
        r32, r64 = (refsim_step(model, r, images, labels, lr) for r in (r32, r64))
        before, a = a, t32.weights()
        if onset is None and parted(model, a, r32) > ONSET:
            onset = j + 1
        gap64 = max(gap64, parted(model, t64.weights(), r64))
        if j >= check_steps:
            continue
        start = time.perf_counter()
        c = check_step(model, before, a, batch_inputs(images, slice(None), np.float32),
                       labels, lr, TOL, step=j)
        seconds += time.perf_counter() - start
        if c.status == "tie flip":
            flips.append((j, c.note, max(t.ratio for t in c.flipped)))
        elif c.status == "diverge":
            flips.append((j, "DIVERGE: " + c.note + f" (worst {c.worst.name}, "
                          f"{c.worst.ratio:.3g} x its bound)", c.worst.ratio))
        for t in c.tensors:  # E/S, E and S in ulps of the tensor's largest weight
            ulp = t.bound - TOL.c * t.scale  # the floor: one ulp of max|r64|
            rows.append((t.name, t.err / t.scale if t.scale else np.nan, t.err / ulp,
                         t.scale / ulp, c.status))
    return onset, gap64, rows, flips, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["cnn", "2nn"], default="cnn")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--init", choices=["keras", "torch"], default="keras")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--check-steps", type=int, default=None,
                        help="check only the first this many steps (default: all)")
    args = parser.parse_args(argv)
    from refsim.validation.steps import StepTolerance
    global TOL
    TOL = StepTolerance()
    onsets, rows_all, all_flips, total = [], [], [], 0.0
    for seed in range(args.seeds):
        checked = args.steps if args.check_steps is None else min(args.check_steps, args.steps)
        onset, gap64, rows, flips, seconds = measure(args.model, seed, args.steps,
                                                     args.batch_size, args.init, args.lr, checked)
        onsets.append(onset)
        rows_all += rows
        all_flips += [(seed, *f) for f in flips]
        total += seconds
        print(f"seed {seed}: onset {onset if onset else f'> {args.steps}'}, float64 max "
              f"difference {gap64:.2g}, tie flips at steps "
              f"{[f[0] for f in flips if not f[1].startswith('DIVERGE')]}, diverging steps "
              f"{[f[0] for f in flips if f[1].startswith('DIVERGE')]}, "
              f"check {seconds:.1f} s", flush=True)
    parted_at = [o for o in onsets if o is not None]
    median = np.median([np.inf if o is None else o for o in onsets])
    span = f"{min(parted_at)}-{max(parted_at)}" if parted_at else "-"
    print(f"{args.model} B={args.batch_size} init={args.init}: {len(parted_at)} of {args.seeds} "
          f"seeds parted within {args.steps} steps; onset median {median:g}, range {span} "
          f"(steps)")
    plain = [r for r in rows_all if r[4] == "agree"]
    for k, what in ((1, "E/S, PyTorch's error over the rounding scale"),
                    (2, "E in ulps of max|r64|, PyTorch's float32 error"),
                    (3, "S in ulps of max|r64|, refsim's float32 error (both probes)")):
        q = np.nanquantile([r[k] for r in plain], [0.5, 0.9, 0.99, 0.999, 1.0])
        print(f"{what} ({len(plain)} tensor-steps of steps that agree): median {q[0]:.3g}, "
              f"90% {q[1]:.3g}, 99% {q[2]:.3g}, 99.9% {q[3]:.3g}, max {q[4]:.3g}")
    names = dict.fromkeys(r[0] for r in plain)
    print("max E/S per tensor: " + ", ".join(
        f"{n} {np.nanmax([r[1] for r in plain if r[0] == n]):.3g}" for n in names))
    diverged = sum(note.startswith("DIVERGE") for _, _, note, _ in all_flips)
    print(f"steps that need a tie flip or diverge: {len(all_flips)} ({diverged} diverge); " + "; ".join(
        f"seed {s} step {j}: {note}" + ("" if note.startswith("DIVERGE") else
                                         f" (after the flip: {r:.2f} of the bound)")
        for s, j, note, r in all_flips))
    print(f"compare-steps time: {total / (args.seeds * checked) * 1e3:.0f} ms per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
