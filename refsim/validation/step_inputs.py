"""The inputs of ``refsim compare-steps``: a candidate's weights at every local step of one
client, and what refsim's trace says about that client's round.

Candidate file (an ``.npz``): the weights w_j before local step j and after the last one, for a
contiguous range of j; j = 0 is the weights the client received. Keys are either
``step_<j>/<tensor>`` (refsim's tensor names, in refsim's or PyTorch's layout, decided as
``refsim compare`` decides it: ``weight_files.resolve_layout``) or ``step_<j>`` (one flat
refsim parameter vector). Keras weights are converted first with
``refsim.nn.from_keras_weights`` (``docs/validation.md``).

The trace (``refsim run --trace``; ``docs/fedavg.md``, "Trace format") gives the model, the
client's batch order ``order_<k>`` (E, n_k) for round t and the round's learning rate; local
step j of ClientUpdate trains on the batch ``order[e][b*B:(b+1)*B]`` with
``(e, b) = divmod(j, ceil(n_k / B))`` (``refsim.data.batching``), the last batch of an epoch
possibly shorter.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import numpy as np

from refsim.data.batching import batch_slices
from refsim.nn import Model
from refsim.safe_npz import read_npz
from refsim.validation.weight_files import (Layout, Snapshot, find_trace_dir, read_trace_header,
                                            reference_model, resolve_layout)

__all__ = ["StepSeries", "ClientRound", "load_steps", "load_client_round", "trace_dir_of",
           "read_json"]

STEP_KEY = re.compile(r"step_(\d+)(?:/(.+))?")


@dataclass(frozen=True)
class StepSeries:
    """A candidate's weights w_j for j in ``steps`` (consecutive), flat in refsim's layout.

    weights : one (P,) array per step, all of one float dtype.
    mapping : how the stored arrays became refsim's layout, in words.
    """
    path: str
    steps: tuple[int, ...]
    weights: tuple[np.ndarray, ...]
    model: Model
    mapping: str

    @property
    def dtype(self) -> np.dtype:
        return self.weights[0].dtype


@dataclass(frozen=True)
class ClientRound:
    """Client k's part of round t as the trace records it (``load_client_round``)."""
    trace_dir: str
    model: Model
    round: int
    client: int
    lr: float
    batch_size: int | None
    order: np.ndarray  # (E, n_k) dataset indices, one row per local epoch
    config: dict  # the run's FedAvgConfig.to_dict()

    @property
    def num_examples(self) -> int:
        return int(self.order.shape[1])

    @property
    def slices(self) -> list[tuple[int, int]]:
        """[start, stop) of each batch of one epoch."""
        return batch_slices(self.num_examples, self.batch_size)

    @property
    def num_steps(self) -> int:
        """S = E * ceil(n_k / B) local steps."""
        return self.order.shape[0] * len(self.slices)

    def epoch_and_batch(self, j: int) -> tuple[int, int]:
        """(e, b) of local step j."""
        if not 0 <= j < self.num_steps:
            raise ValueError(f"round {self.round}, client {self.client} has local steps "
                             f"0..{self.num_steps - 1}, not {j}")
        return divmod(j, len(self.slices))

    def batch(self, j: int) -> np.ndarray:
        """The dataset indices of local step j's batch, (b,)."""
        e, b = self.epoch_and_batch(j)
        start, stop = self.slices[b]
        return self.order[e, start:stop]


def trace_dir_of(path: str | os.PathLike) -> str:
    """The trace folder of a run directory or of a trace directory (ValueError if neither)."""
    tdir = find_trace_dir(os.fspath(path))
    if tdir is None:
        raise ValueError(f"{os.fspath(path)}: no refsim trace here (no init.json in it or in "
                         f"its trace/); write one with refsim run --trace")
    return tdir


def read_json(path: str) -> dict:
    """A JSON file, or ValueError naming it when it is not valid JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path} is not valid JSON ({error})") from None


def trace_model(tdir: str, header: dict | None = None) -> Model:
    """The reference model a trace's ``init.json`` names (``header``: that file, read);
    ValueError when it names none of them."""
    header = read_trace_header(tdir) if header is None else header
    model = reference_model(header.get("model", ""))
    if model is None:
        raise ValueError(f"{os.path.join(tdir, 'init.json')}: trace of model "
                         f"{header.get('model')!r}, which is not one of refsim's reference models")
    return model


def read_round_json(path: str) -> dict:
    """A trace's ``round_<t>.json``, checked for the keys this module reads (clients and
    dropped: lists of ids, lr: a number, batch_size: an integer or null); ValueError naming
    the file otherwise."""
    rnd = read_json(path)
    ids = (lambda v: isinstance(v, list) and all(type(k) is int for k in v))
    if not isinstance(rnd, dict) or not ids(rnd.get("clients")) or \
            not ids(rnd.get("dropped", [])) or type(rnd.get("lr")) not in (int, float) or \
            not (rnd.get("batch_size") is None or type(rnd.get("batch_size")) is int):
        raise ValueError(f"{path} is not a refsim trace's round file (clients, dropped, lr, "
                         f"batch_size)")
    return rnd


def load_client_round(trace: str | os.PathLike, round_: int, client: int) -> ClientRound:
    """Client ``client``'s batch order, learning rate and model in round ``round_`` of the
    trace at ``trace`` (a run directory or its ``trace/``). ValueError names what is missing:
    the round's files, or the client when it was not sampled in that round."""
    tdir = trace_dir_of(trace)
    header = read_trace_header(tdir)
    model = trace_model(tdir, header)
    stem = os.path.join(tdir, f"round_{round_:06d}")
    if not os.path.isfile(stem + ".json"):
        rounds = sorted(int(m.group(1)) for name in os.listdir(tdir)
                        if (m := re.fullmatch(r"round_(\d+)\.json", name)))
        raise ValueError(f"{tdir}: no round {round_} in the trace (it has rounds "
                         f"{rounds[0] if rounds else '-'}..{rounds[-1] if rounds else '-'})")
    rnd = read_round_json(stem + ".json")
    if client not in rnd["clients"]:
        raise ValueError(f"{tdir}: client {client} was not sampled in round {round_} "
                         f"(its clients are {rnd['clients']})")
    z = read_npz(stem + ".npz")  # every byte checked (refsim.safe_npz)
    if f"order_{client}" not in z:
        raise ValueError(f"{stem}.npz has no batch order order_{client}")
    order = np.asarray(z[f"order_{client}"], dtype=np.int64)  # (E, n_k)
    config = header.get("config", {})
    client_opt = config.get("client_opt") or {"kind": "sgd"}  # traces before client_opt: SGD
    if client_opt.get("kind") != "sgd":
        raise ValueError(f"{tdir}: the run's clients step with {client_opt.get('kind')!r} "
                         "(client_opt); compare-steps checks plain SGD steps only")
    return ClientRound(tdir, model, round_, client, float(rnd["lr"]), rnd["batch_size"], order,
                       config)


def _snapshots(path: str, z) -> tuple[list[Snapshot], bool]:
    """Per-step snapshots of the npz ``z``, and whether they are flat vectors."""
    steps: dict[int, dict[str, np.ndarray]] = {}
    flat: dict[int, np.ndarray] = {}
    for key in z:
        m = STEP_KEY.fullmatch(key)
        if m is None:
            raise ValueError(f"{path}: key {key!r} is not step_<j>/<tensor> or step_<j>; a "
                             f"candidate file holds only its steps' weights")
        array = z[key]
        if array.dtype not in (np.float32, np.float64):
            raise TypeError(f"{path}: {key} is {array.dtype}; weights must be float32 or "
                            f"float64")
        j = int(m.group(1))
        if m.group(2) is None:
            flat[j] = array
        else:
            steps.setdefault(j, {})[m.group(2)] = array
    if flat and steps:
        raise ValueError(f"{path}: mixes flat step_<j> vectors with step_<j>/<tensor> arrays; "
                         f"use one convention per file")
    if not flat and not steps:
        raise ValueError(f"{path}: the npz holds no arrays")
    if flat:
        return [Snapshot(j, {"": flat[j]}) for j in sorted(flat)], True
    return [Snapshot(j, steps[j]) for j in sorted(steps)], False


def load_steps(path: str | os.PathLike, model: Model, layout: Layout = Layout.AUTO
               ) -> StepSeries:
    """Read a candidate's per-step weights (module docstring) as flat vectors of ``model``.

    Raises ValueError when the steps are fewer than two or not consecutive, a step's tensors
    are not ``model``'s (names or shapes), or dtypes differ between steps; TypeError for
    non-float arrays.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    snapshots, is_flat = _snapshots(path, read_npz(path))
    steps = tuple(s.round for s in snapshots)
    if len(steps) < 2:
        raise ValueError(f"{path}: holds step {steps[0]} only; a step is checked from w_j to "
                         f"w_(j+1), so give at least two consecutive steps")
    if steps != tuple(range(steps[0], steps[-1] + 1)):
        missing = sorted(set(range(steps[0], steps[-1] + 1)) - set(steps))
        raise ValueError(f"{path}: steps must be consecutive; missing {missing[:5]}")
    if is_flat:
        weights = [s.tensors[""] for s in snapshots]
        for j, w in zip(steps, weights):
            if w.shape != (model.num_params,):
                raise ValueError(f"{path}: step_{j} has shape {w.shape}, but {model.name} has "
                                 f"{model.num_params} parameters")
        mapping = f"flat vectors in the layout of {model.name}"
    else:
        snapshots, fits, mapping = resolve_layout(path, snapshots, layout, model.name)
        if fits != model.name:
            expected = {s.name: s.shape for s in model.layout}
            got = {k: v.shape for k, v in snapshots[0].tensors.items()}
            raise ValueError(f"{path}: step {steps[0]} holds {got}, not the tensors of "
                             f"{model.name} {expected}")
        weights = []
        for s in snapshots:
            names = set(s.tensors)
            if names != {p.name for p in model.layout}:
                raise ValueError(f"{path}: step {s.round} holds tensors {sorted(names)}, not "
                                 f"those of {model.name}")
            dtypes = {v.dtype for v in s.tensors.values()}
            if len(dtypes) != 1:
                raise TypeError(f"{path}: step {s.round} mixes dtypes {sorted(map(str, dtypes))}")
            flat = np.empty(model.num_params, dtype=dtypes.pop())
            view = model.views(flat)
            for name, value in s.tensors.items():
                if value.shape != view[name].shape:
                    raise ValueError(f"{path}: step {s.round}, tensor {name!r} has shape "
                                     f"{value.shape}, expected {view[name].shape}")
                view[name][...] = value
            weights.append(flat)
    if len({w.dtype for w in weights}) != 1:
        raise TypeError(f"{path}: steps differ in dtype")
    return StepSeries(path, steps, tuple(weights), model, mapping)
