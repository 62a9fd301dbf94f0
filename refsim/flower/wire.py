"""What refsim's round looks like inside Flower messages: one function pair per record.

A **payload** (``refsim.fedavg.transport``: codec bytes, or a raw float vector without a codec)
travels as one Flower ``Array``:

* codec bytes: ``Array(dtype="uint8", shape=(len(bytes),), stype="refsim/codec-v1",
  data=bytes)``; the bytes are refsim's update codec, format version 1 (``docs/formats.md``),
  untouched, so ``8 * len(data)`` is exactly the uplink cost refsim counts;
* a raw vector: Flower's own NumPy array (stype ``"numpy.ndarray"``, ``np.save`` bytes).

Messages (message type, then the records of the content):

* ``query`` (server -> every node, once per run): empty; reply ``"node"`` ConfigRecord
  ``{partition-id, num-partitions}`` from the node config.
* ``train`` (server -> the node of client k, round t): ``"arrays"`` ArrayRecord
  ``{"weights": payload of w_t}`` (the broadcast, raw or downlink-coded) and ``"config"``
  ConfigRecord ``{server-round: t, refsim-client: k}``; with ``client-opt-state = "keep"`` and
  a state the server holds for k (k has trained before), also ``"opt-state"`` ArrayRecord
  ``{name: NumPy array}``, client k's optimizer state (``client_opt.init_client_state``'s
  names: ``step`` () int64 and (P,) buffers). Reply: ``"update"`` ArrayRecord
  ``{"delta": payload of delta_k}`` (absent when the update had NaN/Inf), ``"report"``
  MetricRecord ``{partition-id, num-examples, num-batches, loss-sum, num-correct, num-seen,
  entropy-bits (absent when None), setup-seconds, train-seconds}``, and with ``keep`` the
  client's new optimizer state as ``"opt-state"``.
* ``evaluate`` (server -> every node at the evaluation cadence, when ``eval-holdout`` > 0):
  ``"arrays"`` ``{"weights": raw w_{t+1}}`` and ``"config"`` ``{server-round, refsim-client}``;
  reply ``"eval"`` MetricRecord ``{partition-id, num-examples, loss, accuracy}``.

``num-examples`` is Flower's ``weighted_by_key``. Floats travel as IEEE doubles and integers as
int64, so every number arrives bit for bit. Malformed content raises ValueError naming it.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from refsim.fedavg import ClientReport
from refsim.safe_npz import read_npy

__all__ = ["CODEC_STYPE", "NUMPY_STYPE", "payload_to_array", "array_to_payload", "payload_bits",
           "instruction_content", "read_instruction_content", "report_content",
           "read_report_content",
           "query_reply_content", "read_query_reply", "evaluate_reply_content",
           "read_evaluate_reply", "opt_state_record", "read_opt_state"]

CODEC_STYPE = "refsim/codec-v1"
NUMPY_STYPE = "numpy.ndarray"  # Flower's tag for np.save bytes (flwr.common.constant.SType)


def payload_to_array(payload: bytes | np.ndarray) -> Array:
    """A payload as a Flower Array (codec bytes tagged ``refsim/codec-v1``, or a NumPy vector).

    >>> payload_to_array(b"RSC").stype, payload_to_array(b"RSC").shape
    ('refsim/codec-v1', (3,))
    """
    if isinstance(payload, np.ndarray):
        return Array(payload)
    data = bytes(payload)
    return Array(dtype="uint8", shape=(len(data),), stype=CODEC_STYPE, data=data)


def array_to_payload(arr: Array, coded: bool, what: str) -> bytes | np.ndarray:
    """The payload a Flower Array carries; ``coded`` says which kind the run uses (a codec
    configured: bytes; none: a raw vector). ValueError naming ``what`` on a wrong tag, dtype,
    shape or unreadable bytes (the codec bytes themselves are checked when decoded)."""
    if not isinstance(arr, Array):
        raise ValueError(f"{what}: expected a flwr Array, got {type(arr).__name__}")
    want = CODEC_STYPE if coded else NUMPY_STYPE
    if arr.stype != want:
        raise ValueError(f"{what}: array type tag {arr.stype!r}, expected {want!r} (the run "
                         f"{'has' if coded else 'has no'} codec on this link)")
    if coded:
        if arr.dtype != "uint8" or tuple(arr.shape) != (len(arr.data),):
            raise ValueError(f"{what}: a {CODEC_STYPE} array must be uint8 of shape "
                             f"({len(arr.data)},), got {arr.dtype} {tuple(arr.shape)}")
        return bytes(arr.data)
    try:
        out = read_npy(bytes(arr.data), "the array")
    except ValueError as e:
        raise ValueError(f"{what}: unreadable {NUMPY_STYPE} bytes ({e})") from None
    if not isinstance(out, np.ndarray) or str(out.dtype) != arr.dtype or \
            tuple(out.shape) != tuple(arr.shape):
        raise ValueError(f"{what}: the array's bytes do not match its header "
                         f"({arr.dtype} {tuple(arr.shape)})")
    return out


def payload_bits(payload: bytes | np.ndarray) -> int:
    """The uplink/downlink bits refsim counts for a payload: 8 * len(bytes), or 8 * itemsize *
    P for a raw vector (as ``transport.encode_tensors``)."""
    if isinstance(payload, np.ndarray):
        return 8 * payload.itemsize * payload.size
    return 8 * len(payload)


def _single(record: ArrayRecord, key: str, what: str) -> Array:
    if not isinstance(record, ArrayRecord) or list(record.keys()) != [key]:
        keys = list(record.keys()) if isinstance(record, ArrayRecord) else type(record).__name__
        raise ValueError(f"{what}: expected an ArrayRecord holding only {key!r}, got {keys}")
    return record[key]


def _int_entry(record, key: str, what: str) -> int:
    v = record.get(key) if hasattr(record, "get") else None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{what}: {key!r} must be an integer, got {v!r}")
    return v


def _float_entry(record, key: str, what: str) -> float:
    v = record.get(key)
    if not isinstance(v, float):
        raise ValueError(f"{what}: {key!r} must be a float, got {v!r}")
    return v


def _record(content: RecordDict, key: str, cls, what: str):
    if key not in content or not isinstance(content[key], cls):
        raise ValueError(f"{what}: no {cls.__name__} {key!r} in the message "
                         f"(records: {list(content.keys())})")
    return content[key]


def instruction_content(payload: bytes | np.ndarray, round_: int, client: int,
                        opt_state: dict | None = None) -> RecordDict:
    """The content of client k's ``train`` (or ``evaluate``) message in round t, with client
    k's optimizer state when given (``client-opt-state = "keep"``)."""
    content = RecordDict({"arrays": ArrayRecord({"weights": payload_to_array(payload)}),
                          "config": ConfigRecord({"server-round": round_,
                                                  "refsim-client": client})})
    if opt_state is not None:
        content["opt-state"] = opt_state_record(opt_state)
    return content


def opt_state_record(state: dict) -> ArrayRecord:
    """A client optimizer's state as an ArrayRecord: one NumPy Array per entry (``np.save``
    bytes, so every value arrives bit for bit; the step travels as a () int64 array).

    >>> rec = opt_state_record({"step": np.int64(3), "momentum_buffer": np.zeros(4, np.float32)})
    >>> [(k, a.dtype, a.shape) for k, a in rec.items()]
    [('step', 'int64', ()), ('momentum_buffer', 'float32', (4,))]
    """
    return ArrayRecord({name: Array(np.asarray(v)) for name, v in state.items()})


def read_opt_state(content: RecordDict, like: dict, what: str) -> dict | None:
    """The client optimizer state in a message's ``"opt-state"`` record, or None when it has
    none. ``like`` (``client_opt.init_client_state(opt, w)``) gives the names, dtypes and
    shapes the state must have; anything else is a ValueError naming ``what`` (which says
    which client). A () array comes back as its NumPy scalar (the step, as the client
    optimizer makes it)."""
    if "opt-state" not in content:
        return None
    rec = _record(content, "opt-state", ArrayRecord, what)
    if sorted(rec.keys()) != sorted(like):
        raise ValueError(f"{what}: optimizer state holds {sorted(rec.keys())}, expected "
                         f"{sorted(like)}")
    state = {}
    for name in like:
        a = array_to_payload(rec[name], False, f"{what} optimizer state {name!r}")
        want = np.asarray(like[name])
        if a.dtype != want.dtype or a.shape != want.shape:
            raise ValueError(f"{what}: optimizer state {name!r} is {a.dtype} {a.shape}, "
                             f"expected {want.dtype} {want.shape}")
        state[name] = a[()] if a.ndim == 0 else a
    return state


def read_instruction_content(content: RecordDict, coded: bool, what: str
                             ) -> tuple[bytes | np.ndarray, int, int]:
    """-> (weights payload, t, k) of a ``train`` or ``evaluate`` message (``coded``: the
    weights are downlink-coded bytes)."""
    arrays = _record(content, "arrays", ArrayRecord, what)
    config = _record(content, "config", ConfigRecord, what)
    payload = array_to_payload(_single(arrays, "weights", what), coded, f"{what} weights")
    return (payload, _int_entry(config, "server-round", what),
            _int_entry(config, "refsim-client", what))


def report_content(report: ClientReport, setup_seconds: float, train_seconds: float,
                   opt_state: dict | None = None) -> RecordDict:
    """A :class:`~refsim.fedavg.ClientReport` as the content of a ``train`` reply, with the
    client's optimizer state after its local steps when given (``keep``)."""
    metrics = {"partition-id": report.client, "num-examples": report.num_examples,
               "num-batches": report.num_batches, "loss-sum": float(report.loss_sum),
               "num-correct": report.num_correct, "num-seen": report.num_seen,
               "setup-seconds": float(setup_seconds), "train-seconds": float(train_seconds)}
    if report.entropy_bits is not None:
        metrics["entropy-bits"] = float(report.entropy_bits)
    content = RecordDict({"report": MetricRecord(metrics)})
    if report.payload is not None:
        content["update"] = ArrayRecord({"delta": payload_to_array(report.payload)})
    if opt_state is not None:
        content["opt-state"] = opt_state_record(opt_state)
    return content


def read_report_content(content: RecordDict, client: int, coded: bool
                        ) -> tuple[ClientReport, dict]:
    """-> (the ClientReport of client k, its timings {setup-seconds, train-seconds}).

    ``uplink_bits`` is measured on the payload received (``payload_bits``); the entropy bound
    is the client's (``report(bytes)`` of the symbols it coded). ValueError when the reply is
    from another client or a record is malformed.
    """
    what = f"train reply of client {client}"
    m = _record(content, "report", MetricRecord, what)
    if _int_entry(m, "partition-id", what) != client:
        raise ValueError(f"{what}: it comes from partition-id {m.get('partition-id')}")
    payload = None
    if "update" in content:
        arrays = _record(content, "update", ArrayRecord, what)
        payload = array_to_payload(_single(arrays, "delta", what), coded, f"{what} update")
    entropy = _float_entry(m, "entropy-bits", what) if "entropy-bits" in m else None
    report = ClientReport(client, _int_entry(m, "num-examples", what),
                          _int_entry(m, "num-batches", what), _float_entry(m, "loss-sum", what),
                          _int_entry(m, "num-correct", what), _int_entry(m, "num-seen", what),
                          payload, 0 if payload is None else payload_bits(payload), entropy)
    timings = {k: _float_entry(m, k, what) for k in ("setup-seconds", "train-seconds")}
    return report, timings


def query_reply_content(client: int, num_clients: int) -> RecordDict:
    """A node's answer to ``query``: which refsim client it is."""
    return RecordDict({"node": ConfigRecord({"partition-id": client,
                                             "num-partitions": num_clients})})


def read_query_reply(content: RecordDict, node_id: int) -> tuple[int, int]:
    """-> (k, K) a node reported."""
    what = f"query reply of node {node_id}"
    rec = _record(content, "node", ConfigRecord, what)
    return _int_entry(rec, "partition-id", what), _int_entry(rec, "num-partitions", what)


def evaluate_reply_content(client: int, num_examples: int, loss: float | None,
                           accuracy: float | None) -> RecordDict:
    """Client k's federated evaluation: (n, loss, accuracy) on its held-out examples (loss and
    accuracy absent when n = 0)."""
    m = {"partition-id": client, "num-examples": num_examples}
    if num_examples:
        m.update({"loss": float(loss), "accuracy": float(accuracy)})
    return RecordDict({"eval": MetricRecord(m)})


def read_evaluate_reply(content: RecordDict, client: int) -> tuple[int, float | None,
                                                                   float | None]:
    """-> (n, loss, accuracy) of client k (loss, accuracy None when n = 0)."""
    what = f"evaluate reply of client {client}"
    m = _record(content, "eval", MetricRecord, what)
    if _int_entry(m, "partition-id", what) != client:
        raise ValueError(f"{what}: it comes from partition-id {m.get('partition-id')}")
    n = _int_entry(m, "num-examples", what)
    if n == 0:
        return 0, None, None
    return n, _float_entry(m, "loss", what), _float_entry(m, "accuracy", what)
