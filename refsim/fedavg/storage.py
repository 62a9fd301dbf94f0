"""Run-directory files the FedAvg loop writes when given a path: checkpoints and traces.

Every file is written atomically: to a temporary file in the same directory, flushed and
fsynced, then ``os.replace``d over the target, so a crash leaves either the old file or the
new one, never a torn one. Formats (``format_version`` 1) are specified in ``docs/fedavg.md``.

checkpoint.npz (rewritten after every completed round)
    params (P,)   w_t after round t
    state_<name>  server optimizer state arrays (e.g. state_v for momentum)
    round ()      t, the last completed round
    meta ()       JSON text: format_version, config, model, num_clients, metrics (list of rows)

trace/ (``trace=True``)
    init.npz      weights (P,) w_0; client_<k> (n_k,) dataset indices of client k, for all k
    init.json     format_version, config, model, layout, num_clients, clients_per_round, rules
    round_<t>.npz clients (m,) sampled ids (ascending); order_<k> (E, n_k) batch index order of
                  each sampled client; weights (P,) w_t (only on trace rounds, see docs)
    round_<t>.json round, lr, clients, dropped, batch_size, epochs, has_weights, and
                  batch_order {k: [[...epoch 0...], ...]} (the same orders as lists)
"""

from __future__ import annotations

import io
import json
import os
import tempfile

import numpy as np

__all__ = ["FORMAT_VERSION", "atomic_write_bytes", "save_checkpoint", "load_checkpoint",
           "write_npz", "write_json"]

FORMAT_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and os.replace."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` (uncompressed) of ``arrays``, written atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj) -> None:
    """JSON (indent 1, keys in insertion order, trailing newline), written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode())


def save_checkpoint(path: str | os.PathLike, round_: int, params: np.ndarray,
                    state: dict[str, np.ndarray], meta: dict) -> None:
    """Write checkpoint.npz (see the module docstring)."""
    arrays = {"params": params, "round": np.int64(round_),
              "meta": np.array(json.dumps({"format_version": FORMAT_VERSION, **meta}))}
    arrays.update({f"state_{k}": v for k, v in state.items()})
    write_npz(path, arrays)


def load_checkpoint(path: str | os.PathLike):
    """-> (round, params, state, meta) from a file written by :func:`save_checkpoint`."""
    with np.load(os.fspath(path), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format_version {meta.get('format_version')}, "
                             f"expected {FORMAT_VERSION}")
        state = {k[len("state_"):]: z[k].copy() for k in z.files if k.startswith("state_")}
        return int(z["round"]), z["params"].copy(), state, meta
