"""Read weights from disk as rounds of named tensors: the inputs of ``refsim compare``.

Every input becomes a :class:`WeightSeries`, a sequence of snapshots ``(round, {tensor name:
array})`` with tensors in refsim's layout (``docs/nn.md``): convolution kernels (O, C, K, K),
dense weights (I, O). The formats, and what each contributes:

refsim trace (a run directory holding ``trace/``, or the ``trace/`` folder itself)
    ``init.npz`` ``weights`` is round 0; each ``round_<t>.npz`` that holds ``weights`` is round
    t. The flat vectors are cut into tensors by the ``layout`` list of ``init.json``
    ([name, shape, offset] per tensor); the model is ``init.json``'s ``model``
    (``docs/fedavg.md``, "Trace format").
refsim checkpoint (an ``.npz`` with ``params``, ``round`` and ``meta``)
    one snapshot at round ``round``, cut by the layout of the reference model named in ``meta``.
flat vector (an ``.npy`` of shape (P,), e.g. ``final_weights.npy``)
    one snapshot without a round, cut by the layout of the other input when that has P
    parameters, else by the reference model with P parameters (their counts all differ).
named arrays (any other ``.npz``: ``np.savez(path, **state_dict)``)
    one snapshot without a round, one tensor per key.
named arrays per round (an ``.npz`` whose keys are all ``round_<t>/<tensor>``, t a decimal
integer, e.g. ``round_3/fc1.weight``)
    one snapshot per t, ascending. Keys of both kinds in one file are an error.

Named arrays may be in PyTorch's layout, where a dense weight is (O, I), the transpose of
refsim's. :class:`Layout` says how to read them: ``REFSIM`` as stored; ``TORCH`` through
``refsim.nn.from_torch_state_dict`` of the model whose PyTorch names and shapes they match;
``AUTO`` decides by names and shapes (refsim shapes: as stored; PyTorch shapes: converted;
both, when every dense weight is square: an error asking for an explicit layout; neither: as
stored, so that the comparison names the tensor that does not fit). The model is the one the
other input names (a trace or checkpoint), else any of refsim's reference models.
``WeightSeries.mapping`` says in words which of these was done.
"""

from __future__ import annotations

import enum
import json
import os
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from refsim.fedavg.storage import FORMAT_VERSION, load_checkpoint
from refsim.nn import Model, ParamSpec, cnn_cifar, cnn_mnist, from_torch_state_dict, logistic
from refsim.nn import mlp_2nn
from refsim.safe_npz import DamagedFileError, read_npy, read_npz

__all__ = ["Layout", "Snapshot", "WeightSeries", "load_weights", "load_pair", "resolve_layout",
           "reference_model", "find_trace_dir", "read_trace_header"]

# The networks whose layout a file may name (a checkpoint's model, a flat vector's size).
REFERENCE_MODELS = (cnn_mnist, mlp_2nn, logistic, cnn_cifar)
FLOAT_KINDS = "f"
ROUND_KEY = re.compile(r"round_(\d+)/(.+)")
TRACE_ROUND_FILE = re.compile(r"round_(\d+)\.npz")


class Layout(enum.Enum):
    """How named arrays are laid out: see the module docstring."""
    AUTO = "auto"
    REFSIM = "refsim"
    TORCH = "torch"


class Snapshot(NamedTuple):
    """The weights after round ``round`` (None: the file does not say), by tensor name."""
    round: int | None
    tensors: dict[str, np.ndarray]


@dataclass(frozen=True)
class WeightSeries:
    """Snapshots read from ``path``, rounds ascending, tensors in refsim's layout.

    kind : what the file is ("refsim trace", "named arrays per round", ...).
    model : the refsim model whose layout the tensors follow, when known.
    layout : the flat-vector layout (refsim inputs only), to cut the other side's flat vector.
    mapping : how the stored arrays became these tensors, in words (for the report).
    """
    path: str
    kind: str
    snapshots: tuple[Snapshot, ...]
    model: str | None
    layout: tuple[ParamSpec, ...] | None
    mapping: str

    @property
    def rounds(self) -> tuple[int | None, ...]:
        return tuple(s.round for s in self.snapshots)

    @property
    def dtypes(self) -> tuple[str, ...]:
        """The distinct dtypes of all tensors, sorted by name."""
        return tuple(sorted({str(a.dtype) for s in self.snapshots for a in s.tensors.values()}))


def _reference_models() -> list[Model]:
    return [factory() for factory in REFERENCE_MODELS]


def reference_model(name: str) -> Model | None:
    """The reference model called ``name`` ('cnn_mnist', 'mlp_2nn', ...), None if none is."""
    return next((m for m in _reference_models() if m.name == name), None)


def _checked_float(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype.kind not in FLOAT_KINDS:
        raise TypeError(f"{what} must be a floating-point array, got {array.dtype}")
    return array


def _split(flat: np.ndarray, layout: tuple[ParamSpec, ...], what: str) -> dict[str, np.ndarray]:
    """Cut a flat vector (P,) into named tensors by ``layout``."""
    size = sum(spec.size for spec in layout)
    if flat.shape != (size,):
        raise ValueError(f"{what} has shape {flat.shape}, but its layout needs a flat vector "
                         f"of {size} parameters")
    _checked_float(flat, what)
    return {s.name: flat[s.offset:s.offset + s.size].reshape(s.shape) for s in layout}


# -- refsim's own files ---------------------------------------------------------------------------

def find_trace_dir(path: str) -> str | None:
    """The trace folder of a run directory or trace directory ``path``; None if it has none."""
    for candidate in (os.path.join(path, "trace"), path):
        if os.path.isfile(os.path.join(candidate, "init.json")):
            return candidate
    return None


def _read_json(path: str):
    """The JSON document in file ``path``; ValueError naming the file when it is empty or not
    valid JSON (truncated, corrupt, or not JSON at all)."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw:
        raise DamagedFileError(f"{path} is empty (0 bytes)")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DamagedFileError(f"{path} is truncated or corrupt (not valid JSON: {err})") \
            from None


def _trace_layout(path: str, header) -> tuple[ParamSpec, ...]:
    """The layout of a trace's init.json ``header``, checked: [name, shape, offset] entries
    that tile the flat vector in order (offset = the sizes before it)."""
    if not isinstance(header, dict) or not isinstance(header.get("model"), str) or \
            not isinstance(header.get("layout"), list) or not header["layout"]:
        raise ValueError(f"{path} is not a refsim trace header (it needs format_version, model "
                         f"and layout)")
    layout, offset = [], 0
    for entry in header["layout"]:
        ok = isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str) and \
            isinstance(entry[1], list) and all(type(d) is int and d >= 0 for d in entry[1]) \
            and entry[2] == offset
        if not ok:
            raise ValueError(f"{path}: layout entry {entry!r} is not [name, shape, offset] "
                             f"with offset {offset} (the sizes before it)")
        layout.append(ParamSpec(entry[0], tuple(entry[1]), offset))
        offset += layout[-1].size
    model = reference_model(header["model"])  # a damaged name or shape that still parses
    if model is not None and tuple(layout) != tuple(model.layout):
        diff = next((f"{tuple(g)!r} against {tuple(w)!r}"
                     for g, w in zip(layout, model.layout) if g != w),
                    f"{len(layout)} tensors against {len(model.layout)}")
        raise ValueError(f"{path}: its layout is not that of model {header['model']} "
                         f"(first difference: {diff}); the file is damaged or was edited")
    return tuple(layout)


def _weights(arrays: dict[str, np.ndarray], path: str) -> np.ndarray:
    if "weights" not in arrays:
        raise ValueError(f"{path}: no 'weights' array (not the init.npz of a refsim trace)")
    return arrays["weights"]


def _read_trace_header(tdir: str) -> tuple[dict, tuple[ParamSpec, ...]]:
    """(header, layout) of the trace's ``init.json``; see :func:`read_trace_header`."""
    path = os.path.join(tdir, "init.json")
    header = _read_json(path)
    if isinstance(header, dict) and header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: trace format_version {header.get('format_version')!r}, "
                         f"this refsim reads {FORMAT_VERSION}")
    return header, _trace_layout(path, header)


def read_trace_header(tdir: str) -> dict:
    """The trace's ``init.json``, checked: JSON, this refsim's format version, a model name and
    a layout that tiles the flat vector and, for a reference model, is that model's own
    (ValueError naming the file otherwise)."""
    return _read_trace_header(tdir)[0]


def _load_trace(tdir: str) -> WeightSeries:
    header, layout = _read_trace_header(tdir)
    init = os.path.join(tdir, "init.npz")
    snapshots = [Snapshot(0, _split(_weights(read_npz(init), init), layout, f"{init} weights"))]
    rounds = sorted((int(m.group(1)), name) for name in os.listdir(tdir)
                    if (m := TRACE_ROUND_FILE.fullmatch(name)))
    for t, name in rounds:
        z = read_npz(os.path.join(tdir, name))
        if "weights" in z:  # only rounds with t % trace_every == 0 and the last
            tensors = _split(z["weights"], layout, f"{tdir}/{name} weights")
            snapshots.append(Snapshot(t, tensors))
    return WeightSeries(tdir, "refsim trace", tuple(snapshots), header["model"], layout,
                        f"flat vectors cut by the layout in init.json ({header['model']})")


def _load_checkpoint(path: str) -> WeightSeries:
    done, params, _, meta = load_checkpoint(path)
    model = reference_model(meta.get("model", ""))
    if model is None:
        raise ValueError(f"{path}: checkpoint of model {meta.get('model')!r}, which is not one of "
                         f"refsim's reference models; compare its trace directory instead")
    snapshot = Snapshot(done, _split(params, model.layout, f"{path} params"))
    return WeightSeries(path, "refsim checkpoint", (snapshot,), model.name, model.layout,
                        f"params cut by the layout of {model.name} (named in meta)")


def _load_flat(path: str, other: WeightSeries | None) -> WeightSeries:
    flat = read_npy(path)
    if flat.ndim != 1:
        raise ValueError(f"{path}: a .npy input must be a flat refsim parameter vector (P,), "
                         f"got shape {flat.shape}")
    if other is not None and other.layout is not None and \
            sum(s.size for s in other.layout) == flat.size:
        layout, model, how = other.layout, other.model, f"the layout of {other.path}"
    else:
        models = [m for m in _reference_models() if m.num_params == flat.size]
        if not models:
            counts = ", ".join(f"{m.name} {m.num_params}" for m in _reference_models())
            raise ValueError(f"{path}: {flat.size} parameters match no reference model "
                             f"({counts}) and the other input has no layout of that size")
        layout, model = models[0].layout, models[0].name
        how = f"the layout of {model} ({flat.size} parameters)"
    snapshot = Snapshot(None, _split(flat, layout, path))
    return WeightSeries(path, "flat vector", (snapshot,), model, layout, f"cut by {how}")


# -- named arrays and the PyTorch layout --------------------------------------------------------

def _named_snapshots(path: str, z: dict[str, np.ndarray]) -> tuple[str, list[Snapshot]]:
    arrays = {k: _checked_float(v, f"{path}: array {k!r}") for k, v in z.items()}
    per_round = {k: ROUND_KEY.fullmatch(k) for k in arrays}
    if not any(per_round.values()):
        return "named arrays", [Snapshot(None, arrays)]
    plain = [k for k, m in per_round.items() if m is None]
    if plain:
        raise ValueError(f"{path}: mixes per-round keys (round_<t>/<tensor>) with plain keys "
                         f"{plain[:3]}; use one convention per file")
    rounds: dict[int, dict[str, np.ndarray]] = {}
    for key, m in per_round.items():
        rounds.setdefault(int(m.group(1)), {})[m.group(2)] = arrays[key]
    return "named arrays per round", [Snapshot(t, rounds[t]) for t in sorted(rounds)]


def _shapes(model: Model, torch_layout: bool) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape in refsim's or PyTorch's layout (dense weights reversed)."""
    return {s.name: (s.shape[::-1] if torch_layout and len(s.shape) == 2 else s.shape)
            for s in model.layout}


def _fits(model: Model, tensors: dict[str, np.ndarray], torch_layout: bool) -> bool:
    return {k: v.shape for k, v in tensors.items()} == _shapes(model, torch_layout)


def _from_torch(model: Model, snapshots: list[Snapshot], path: str) -> list[Snapshot]:
    out = []
    for snap in snapshots:
        if not _fits(model, snap.tensors, torch_layout=True):
            raise ValueError(f"{path}, round {snap.round}: the names and shapes are not the "
                             f"PyTorch state dict of {model.name}, as in the first snapshot "
                             f"(expected {_shapes(model, torch_layout=True)})")
        ordered = {s.name: snap.tensors[s.name] for s in model.layout}  # the converter's order
        try:
            flat = from_torch_state_dict(model, ordered)
        except (TypeError, ValueError) as error:
            raise type(error)(f"{path}, round {snap.round}: {error}") from error
        out.append(Snapshot(snap.round, {k: v.copy() for k, v in model.views(flat).items()}))
    return out


def resolve_layout(path: str, snapshots: list[Snapshot], layout: Layout,
                   model_name: str | None = None) -> tuple[list[Snapshot], str | None, str]:
    """Named-array snapshots read from ``path`` in refsim's layout, as the module docstring
    says: (snapshots, the model they fit or None, how they were read, in words).

    model_name : the reference model they must be (e.g. the one the other input names);
    None tries every reference model.
    """
    named = model_name
    named_model = reference_model(named) if named else None
    candidates = [named_model] if named_model else _reference_models()
    first = snapshots[0].tensors
    as_refsim = [m for m in candidates if _fits(m, first, torch_layout=False)]
    as_torch = [m for m in candidates if _fits(m, first, torch_layout=True)]
    if layout is Layout.REFSIM:
        model = as_refsim[0].name if as_refsim else None
        return snapshots, model, "as stored (--layout refsim)"
    if layout is Layout.TORCH:
        if not as_torch:
            which = (f"{named_model.name} (expected {_shapes(named_model, torch_layout=True)})"
                     if named_model else "any reference model")
            raise ValueError(f"{path}: --layout torch, but its names and shapes are not the "
                             f"PyTorch state dict of {which}")
        model = as_torch[0]
        return (_from_torch(model, snapshots, path), model.name,
                f"PyTorch state dict (--layout torch): from_torch_state_dict({model.name}), "
                f"dense weights transposed to (I, O)")
    if as_refsim and as_torch:
        raise ValueError(f"{path}: fits {as_refsim[0].name} in both refsim's and PyTorch's layout "
                         f"(every dense weight is square); pass --layout refsim or --layout torch")
    if as_refsim:
        name = as_refsim[0].name
        return snapshots, name, f"as stored (names and shapes of {name} in refsim's layout)"
    if as_torch:
        model = as_torch[0]
        return (_from_torch(model, snapshots, path), model.name,
                f"PyTorch state dict detected by names and shapes: "
                f"from_torch_state_dict({model.name}), dense weights transposed to (I, O)")
    return snapshots, None, "as stored (the names and shapes fit no reference model)"


# -- entry points -------------------------------------------------------------------------------

def _is_refsim_file(path: str) -> bool:
    """A trace directory or a checkpoint: inputs that carry their own layout."""
    if os.path.isdir(path):
        return True
    if path.endswith(".npz") and os.path.isfile(path):
        try:
            return {"params", "round", "meta"} <= read_npz(path).keys()
        except (DamagedFileError, OSError):  # load_weights reports it
            return False
    return False


def load_weights(path: str | os.PathLike, layout: Layout = Layout.AUTO,
                 other: WeightSeries | None = None) -> WeightSeries:
    """Read ``path`` in any of the formats of the module docstring.

    layout : how named arrays are laid out (ignored for refsim's own files).
    other : the other input of a comparison, whose model and layout decide how a flat vector is
        cut and which model a PyTorch state dict is converted with.

    Raises FileNotFoundError for a missing path, ValueError for a file that is none of the
    formats (naming the problem) and TypeError for non-float arrays.
    """
    path = os.fspath(path)
    if not isinstance(layout, Layout):
        raise TypeError(f"layout must be a Layout, got {layout!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        tdir = find_trace_dir(path)
        if tdir is None:
            raise ValueError(f"{path}: a directory without a refsim trace (no init.json in it or "
                             f"in its trace/); pass checkpoint.npz or final_weights.npy instead")
        return _load_trace(tdir)
    if path.endswith(".npy"):
        return _load_flat(path, other)
    if not path.endswith(".npz"):
        raise ValueError(f"{path}: expected a trace directory, an .npz or an .npy file")
    z = read_npz(path)
    if {"params", "round", "meta"} <= z.keys():
        return _load_checkpoint(path)
    if {"clients", "weights"} <= z.keys():
        raise ValueError(f"{path}: one round file of a refsim trace; pass the trace "
                         f"directory, which also holds the layout (init.json)")
    if not z:
        raise ValueError(f"{path}: the npz holds no arrays")
    kind, snapshots = _named_snapshots(path, z)
    snapshots, model, mapping = resolve_layout(path, snapshots, layout,
                                               other.model if other is not None else None)
    return WeightSeries(path, kind, tuple(snapshots), model, None, mapping)


def load_pair(a: str | os.PathLike, b: str | os.PathLike,
              layout: Layout = Layout.AUTO) -> tuple[WeightSeries, WeightSeries]:
    """Load both inputs of a comparison; refsim's own files first, so that each named-array
    or flat-vector input is read with the model and layout of the other side."""
    a, b = os.fspath(a), os.fspath(b)
    if _is_refsim_file(b) and not _is_refsim_file(a):
        series_b = load_weights(b, layout)
        return load_weights(a, layout, other=series_b), series_b
    series_a = load_weights(a, layout)
    return series_a, load_weights(b, layout, other=series_a)
