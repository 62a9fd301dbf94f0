"""Check another implementation's server step of one round from its own inputs: the weighted
mean of the client updates and the server optimizer (``refsim compare-steps --server``).

McMahan et al., AISTATS 2017, arXiv:1602.05629, Algorithm 1 (server), as refsim writes it
(``refsim.fedavg.server``): with the candidate's global weights w_t, its clients' updates
delta_k (or end-of-round weights w_k, delta_k = w_k - w_t), n_k from the trace and the run's
server optimizer,

    mean = sum_k n_k delta_k / sum_k n_k,    (w_{t+1}, state) = server_update(w_t, mean, state)

The tolerance is the one of ``refsim.validation.steps``, with the step recomputed from the
candidate's inputs three ways: r64 (float64), r32 (refsim's float32: the mean accumulated in
float64, then cast) and q32 (the mean accumulated in float32 one client at a time, as an
implementation that stays in float32 does). For each tensor,
``max|a - r64| <= c * max(|r32 - r64|, |q32 - r64|) * u / 2^-24 + floor_ulps * eps * max|r64|``.

Candidate file (an ``.npz``), tensors by refsim's names in refsim's or PyTorch's layout, or as
flat refsim vectors under the bare prefix (``start``, ``global``, ``update_3``):

    start/<tensor>      w_t, the global weights the round started from
    update_<k>/<tensor> client k's update, as the server received it, for every reporting
                        client; or client_<k>/<tensor>, its weights at the end of the round
    global/<tensor>     w_{t+1}, the candidate's result
    state/<key>/<tensor>  the server optimizer's state before round t (refsim's keys: "v" for
                        momentum, "m" and "v" for the adaptive ones); zeros when absent in
                        round 1, required in later rounds

With a lossy uplink or downlink codec the server averages decoded updates that end-of-round
weights do not determine: give ``update_<k>`` then.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from refsim.fedavg import ServerOpt, ServerOptConfig, ServerSemantics, Weighting
from refsim.fedavg.server import init_server_state, server_update, weighted_average
from refsim.nn import Model
from refsim.safe_npz import read_npz
from refsim.validation.step_inputs import read_round_json, trace_dir_of, trace_model
from refsim.validation.steps import StepTolerance, TensorCheck, tensor_checks, tensor_dict
from refsim.validation.weight_files import Layout, Snapshot, read_trace_header, resolve_layout

__all__ = ["ServerInputs", "ServerCheck", "load_server_inputs", "check_server_step"]

KEY = re.compile(r"(start|global|update_\d+|client_\d+|state/[A-Za-z0-9_]+)(?:/(.+))?")


@dataclass(frozen=True)
class ServerInputs:
    """The candidate's side of one server step, flat in refsim's layout (one dtype)."""
    path: str
    start: np.ndarray  # (P,) w_t
    result: np.ndarray  # (P,) w_{t+1}
    updates: dict[int, np.ndarray]  # client -> (P,) delta_k
    given_as: str  # "updates" or "client weights"
    state: dict[str, np.ndarray]  # key -> (P,)
    mapping: str


@dataclass(frozen=True)
class ServerCheck:
    """The verdict on the server step of round ``round``: agree or diverge, per tensor."""
    path: str
    trace_dir: str
    round: int
    clients: tuple[int, ...]
    weights: tuple[float, ...]
    server: ServerOptConfig
    tolerance: StepTolerance
    tensors: tuple[TensorCheck, ...]

    @property
    def agree(self) -> bool:
        return not any(t.exceeds for t in self.tensors)

    @property
    def worst(self) -> TensorCheck:
        return max(self.tensors, key=lambda t: t.ratio if not np.isnan(t.ratio) else np.inf)

    def to_dict(self) -> dict:
        """Plain JSON-ready data."""
        return {"candidate": self.path, "trace": self.trace_dir, "round": self.round,
                "clients": list(self.clients), "weights": list(self.weights),
                "tolerance": {"c": self.tolerance.c, "floor_ulps": self.tolerance.floor_ulps},
                "verdict": "agree" if self.agree else "diverge",
                "tensors": [tensor_dict(t) for t in self.tensors]}


def _flat(path: str, group: str, arrays: dict[str, np.ndarray], model: Model, layout: Layout):
    """One group of the file (its tensors, or one flat vector) as a flat refsim vector."""
    if "" in arrays:
        flat = arrays[""]
        if flat.shape != (model.num_params,):
            raise ValueError(f"{path}: {group} has shape {flat.shape}, but {model.name} has "
                             f"{model.num_params} parameters")
        return flat, f"flat vectors in the layout of {model.name}"
    (snap,), fits, mapping = resolve_layout(path, [Snapshot(None, arrays)], layout, model.name)
    if fits != model.name:
        raise ValueError(f"{path}: {group} holds {sorted(arrays)}, not the tensors of "
                         f"{model.name}")
    dtypes = {a.dtype for a in snap.tensors.values()}
    if len(dtypes) != 1:
        raise TypeError(f"{path}: {group} mixes dtypes {sorted(map(str, dtypes))}")
    flat = np.empty(model.num_params, dtype=dtypes.pop())
    for name, view in model.views(flat).items():
        view[...] = snap.tensors[name]
    return flat, mapping


def load_server_inputs(path: str | os.PathLike, model: Model,
                       layout: Layout = Layout.AUTO) -> ServerInputs:
    """Read a candidate's server-step file (module docstring) for ``model``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, array in read_npz(path).items():  # every byte checked (refsim.safe_npz)
        m = KEY.fullmatch(key)
        if m is None:
            raise ValueError(f"{path}: key {key!r} is none of start/, global/, update_<k>/, "
                             f"client_<k>/, state/<key>/ (docs/validation.md)")
        if array.dtype not in (np.float32, np.float64):
            raise TypeError(f"{path}: {key} is {array.dtype}; weights must be float32 or "
                            f"float64")
        groups.setdefault(m.group(1), {})[m.group(2) or ""] = array
    for needed in ("start", "global"):
        if needed not in groups:
            raise ValueError(f"{path}: no {needed}/ weights (w_t and w_(t+1) are both needed)")
    flats, mapping = {}, ""
    for group, arrays in groups.items():
        flats[group], mapping = _flat(path, group, arrays, model, layout)
    if len({f.dtype for f in flats.values()}) != 1:
        raise TypeError(f"{path}: its arrays differ in dtype")
    updates = {int(g[7:]): f for g, f in flats.items() if g.startswith("update_")}
    clients = {int(g[7:]): f for g, f in flats.items() if g.startswith("client_")}
    if updates and clients:
        raise ValueError(f"{path}: give update_<k> or client_<k> weights, not both")
    if not updates and not clients:
        raise ValueError(f"{path}: no update_<k>/ or client_<k>/ weights")
    start = flats["start"]
    given = "updates" if updates else "client weights"
    deltas = updates or {k: w - start for k, w in clients.items()}  # delta_k in the dtype
    state = {g[6:]: f for g, f in flats.items() if g.startswith("state/")}
    return ServerInputs(path, start, flats["global"], dict(sorted(deltas.items())), given,
                        state, mapping)


def _server_opt(d: dict) -> ServerOptConfig:
    """The trace's ``config["server"]`` (``FedAvgConfig.to_dict``) as a ServerOptConfig."""
    enums = {"kind": ServerOpt, "semantics": ServerSemantics}
    return ServerOptConfig(**{k: enums[k](v) if k in enums else v for k, v in d.items()})


def _lossless(codec_repr) -> bool:
    return codec_repr is None or "method=None" in str(codec_repr)


def check_server_step(inputs: ServerInputs, trace: str | os.PathLike, round_: int,
                      tol: StepTolerance = StepTolerance()) -> ServerCheck:
    """Check the candidate's w_{t+1} against refsim's server step from the candidate's w_t and
    updates (module docstring), with n_k, the sampled clients and the server optimizer of
    round ``round_`` of the trace."""
    tdir = trace_dir_of(trace)
    header = read_trace_header(tdir)
    model = trace_model(tdir, header)
    try:  # a damaged init.json may still be JSON: name it rather than a missing key
        config = header["config"]
        server, by_examples = (_server_opt(config["server"]),
                               config["weighting"] == Weighting.EXAMPLES.value)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{tdir}/init.json: its config is not a refsim run's "
                         f"({type(error).__name__}: {error})") from None
    rnd_path = os.path.join(tdir, f"round_{round_:06d}.json")
    if not os.path.isfile(rnd_path):
        raise ValueError(f"{tdir}: no round {round_} in the trace")
    rnd = read_round_json(rnd_path)
    reporting = [k for k in rnd["clients"] if k not in rnd.get("dropped", [])]
    if sorted(inputs.updates) != sorted(reporting):
        raise ValueError(f"{inputs.path}: has clients {sorted(inputs.updates)}, but round "
                         f"{round_} averaged clients {reporting}")
    if inputs.given_as == "client weights" and not (_lossless(config.get("codec"))
                                                     and _lossless(config.get("downlink"))):
        raise ValueError(f"{inputs.path}: the run codes its updates lossily; give the decoded "
                         f"updates as update_<k>/ instead of client weights")
    z = read_npz(os.path.join(tdir, "init.npz"))
    if any(f"client_{k}" not in z for k in reporting):
        raise ValueError(f"{tdir}/init.npz lacks the index arrays client_<k> of round "
                         f"{round_}'s clients {reporting}")
    sizes = {k: len(z[f"client_{k}"]) for k in reporting}
    weights = tuple(float(sizes[k]) if by_examples else 1.0 for k in reporting)
    state = inputs.state
    if not state:
        if round_ > 1 and init_server_state(server, inputs.start):
            raise ValueError(f"{inputs.path}: round {round_} of a {server.kind.value} server "
                             f"needs the optimizer state before the round (state/<key>/...)")
        state = init_server_state(server, inputs.start)
    deltas = [inputs.updates[k] for k in reporting]

    def step(dtype, float32_mean=False):
        w = inputs.start.astype(dtype)
        ds = [d.astype(dtype) for d in deltas]
        if float32_mean:
            total = np.zeros_like(w)
            for n_k, d in zip(weights, ds):
                total += dtype(n_k) * d
            mean = total / dtype(sum(weights))
        else:
            mean = weighted_average(ds, weights)
        return server_update(w, mean, {k: v.astype(dtype) for k, v in state.items()},
                             server, round_)[0]

    r64, r32, q32 = step(np.float64), step(np.float32), step(np.float32, float32_mean=True)
    checks = tensor_checks(model, inputs.result.astype(np.float64), r64, r32, q32,
                           inputs.result.dtype, tol)
    return ServerCheck(inputs.path, tdir, round_, tuple(reporting), weights, server, tol,
                       checks)
