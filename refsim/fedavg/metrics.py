"""Per-round metrics of a FedAvg run, centralized evaluation, and their CSV / JSON-lines form.

What is measured (McMahan et al., AISTATS 2017, arXiv:1602.05629, Sec. 3 reports test accuracy
against communication rounds; TFF and Flower report the training metrics below):

* train_loss / train_accuracy: as TFF's ``build_weighted_fed_avg`` reports them: every local
  minibatch b of every reporting client contributes |b| * (its mean loss) and its correct argmax
  predictions, both from the forward pass *before* that batch's SGD step
  (``refsim.fedavg.client``); train_loss = sum of those / sum |b|, train_accuracy = correct /
  sum |b|.
* test_loss / test_accuracy: w_{t+1} (after the round) on the whole test set, at the evaluation
  cadence (every ``eval_every`` rounds and always at the last round); empty otherwise.
* fed_eval_loss / fed_eval_accuracy: w_{t+1} on every client's held-out examples
  (``FedAvgConfig.eval_holdout``), example-weighted over all K clients, as TFF's
  ``build_federated_evaluation`` reports; at the same cadence; empty when nothing is held out.
* examples, batches: sum of n_k and of E * ceil(n_k / B) over the clients that trained.
* uplink_bits: sum over reporting clients of 8 * len(codec.encode(update)) (exact encoded size),
  or 8 * itemsize * P per client when there is no codec; broadcast_bits: m * 8 * itemsize * P
  (raw weights to every sampled client). Both also cumulative.
* tff_uplink_bits: what TFF's ``compression_aggregator`` would count for the same round
  (``refsim.compress.tff_round_bits``), when the codec is raw or bit-packed uniform quantization
  and the dtype is float32; empty otherwise.
* uplink_entropy_bits: for quantize / QSGD codecs, sum over reporting clients of n * H of the
  coded symbols (what an ideal entropy coder would spend on them); empty otherwise.
* zeroing_norm, clipping_norm, zeroed_clients, clipped_clients: with TFF's robust aggregator
  (``FedAvgConfig.aggregator``, ``robust.py``), the bounds of the round and the clients whose
  update was zeroed / clipped (TFF's ``zeroing_norm``, ``clipping_norm``, ``zeroed_count``,
  ``clipped_count`` measurements); empty and () otherwise.

No column depends on the wall clock, so a rerun writes byte-identical files.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, fields

import numpy as np

from refsim.backend import get_xp
from refsim.nn import Model
from refsim.nn.loss import softmax_cross_entropy

__all__ = ["RoundMetrics", "History", "evaluate", "federated_evaluate", "metrics_csv",
           "metrics_jsonl", "rounds_to_targets"]


@dataclass(frozen=True)
class RoundMetrics:
    """The metrics of round ``round`` (1-based); see the module docstring for each field."""
    round: int
    lr: float
    clients: tuple[int, ...]
    dropped: tuple[int, ...]
    examples: int
    batches: int
    train_loss: float
    train_accuracy: float
    test_loss: float | None
    test_accuracy: float | None
    fed_eval_loss: float | None
    fed_eval_accuracy: float | None
    uplink_bits: int
    uplink_bits_cum: int
    broadcast_bits: int
    broadcast_bits_cum: int
    tff_uplink_bits: int | None
    uplink_entropy_bits: float | None
    zeroing_norm: float | None = None
    clipping_norm: float | None = None
    zeroed_clients: tuple[int, ...] = ()
    clipped_clients: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in _ID_LISTS:
            d[name] = list(getattr(self, name))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RoundMetrics":
        return cls(**{**d, **{name: tuple(d[name]) for name in _ID_LISTS if name in d}})


_ID_LISTS = ("clients", "dropped", "zeroed_clients", "clipped_clients")


@dataclass(frozen=True)
class History:
    """What ``run_fedavg`` returns: per-round metrics, the final weights and the first ones."""
    rounds: tuple[RoundMetrics, ...]
    params: np.ndarray  # (P,) w_T
    initial_params: np.ndarray  # (P,) w_0


def evaluate(model: Model, params: np.ndarray, x: np.ndarray, y: np.ndarray,
             chunk: int = 1000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``params`` on (x, y), x (N, C, H, W), y (N,).

    Computed in chunks of ``chunk`` examples: loss = sum(chunk mean * chunk size) / N in float64;
    accuracy = #(argmax logits == y) / N (argmax takes the first maximum on ties).
    """
    n = len(y)
    loss_sum, correct = 0.0, 0
    for start in range(0, n, chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        logits = model.forward(params, xb)  # (b, K)
        loss, _ = softmax_cross_entropy(logits, yb)
        loss_sum += float(loss) * len(yb)
        correct += int((logits.argmax(axis=1) == yb).sum())
    return loss_sum / n, correct / n


def federated_evaluate(model: Model, params: np.ndarray, x: np.ndarray, y: np.ndarray,
                       eval_parts) -> tuple[float | None, float | None]:
    """Example-weighted (loss, accuracy) over the clients' held-out index arrays:
    sum_k n_k * metric_k / sum_k n_k over clients with n_k > 0; (None, None) if all are empty."""
    n_total, loss_sum, acc_sum = 0, 0.0, 0.0
    for idx in eval_parts:
        if len(idx) == 0:
            continue
        rows = get_xp(x).asarray(idx)  # (n_k,) on the device of x
        loss_k, acc_k = evaluate(model, params, x[rows], y[rows])
        n_total += len(idx)
        loss_sum += len(idx) * loss_k
        acc_sum += len(idx) * acc_k
    if n_total == 0:
        return None, None
    return loss_sum / n_total, acc_sum / n_total


_COLUMNS = [f.name for f in fields(RoundMetrics)]


def metrics_csv(rounds) -> str:
    """CSV text, one row per round; lists as space-separated ids, None as an empty cell,
    floats with ``repr`` (round-trip exact)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_COLUMNS)
    for r in rounds:
        row = []
        for name in _COLUMNS:
            v = getattr(r, name)
            row.append(" ".join(map(str, v)) if isinstance(v, tuple) else
                       "" if v is None else repr(v))
        writer.writerow(row)
    return out.getvalue()


def metrics_jsonl(rounds) -> str:
    """JSON lines, one object per round, keys in field order."""
    return "".join(json.dumps(r.to_dict()) + "\n" for r in rounds)


def rounds_to_targets(rounds, targets) -> dict[str, int | None]:
    """{str(target): first round whose test accuracy >= target, or None if never reached}."""
    out = {}
    for target in targets:
        hit = [r.round for r in rounds
               if r.test_accuracy is not None and r.test_accuracy >= target]
        out[str(target)] = hit[0] if hit else None
    return out
