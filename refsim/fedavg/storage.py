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
import secrets

import numpy as np

from refsim.safe_npz import DamagedFileError, read_npz

__all__ = ["FORMAT_VERSION", "atomic_write_bytes", "save_checkpoint", "load_checkpoint",
           "check_resumable", "remove_partial_writes", "write_npz", "write_json"]

FORMAT_VERSION = 1
CHECKPOINT_ADVICE = "delete it to start over, or restore a copy"
TMP_PREFIX = ".tmp-"  # atomic_write_bytes's temporary files


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and os.replace.

    Killed at any moment (``kill -9`` included), this leaves ``path`` either as it was or
    with all of ``data``; what it may leave besides is a ``.tmp-*`` file, which
    :func:`remove_partial_writes` deletes. The file gets the permissions ``open`` would give
    it (0666 less the umask), and the directory entry is fsynced after the rename.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    while True:
        tmp = os.path.join(directory, f"{TMP_PREFIX}{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            break
        except FileExistsError:
            continue
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
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where directories cannot be
    opened, as on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_partial_writes(run_dir: str | os.PathLike) -> list[str]:
    """Delete the temporary files a killed :func:`atomic_write_bytes` left in ``run_dir`` and
    ``run_dir/trace``; returns their paths. Call it only while holding the directory's lock
    (``run_lock.lock_run_dir``): a running writer's temporary file looks the same."""
    removed = []
    for directory in (os.fspath(run_dir), os.path.join(os.fspath(run_dir), "trace")):
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            full = os.path.join(directory, name)
            if name.startswith(TMP_PREFIX) and os.path.isfile(full):
                os.unlink(full)
                removed.append(full)
    return removed


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
    """-> (round, params, state, meta) from a file written by :func:`save_checkpoint`.

    Every byte is checked first (``refsim.safe_npz.read_npz``). ValueError naming the file
    when it is empty, truncated, corrupt (e.g. "checkpoint.npz is corrupt (CRC mismatch in
    params.npy); delete it to start over, or restore a copy"), not a checkpoint, or of another
    format_version.
    """
    path = os.fspath(path)
    try:
        z = read_npz(path)
    except DamagedFileError as err:
        raise DamagedFileError(f"{err}; {CHECKPOINT_ADVICE}") from None
    meta = _checkpoint_meta(path, z)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format_version {meta.get('format_version')}, "
                         f"expected {FORMAT_VERSION}")
    state = {k[len("state_"):]: v for k, v in z.items() if k.startswith("state_")}
    return int(z["round"]), z["params"], state, meta


def _checkpoint_meta(path: str, z: dict[str, np.ndarray]) -> dict:
    """The meta dict of checkpoint arrays ``z``, after checking that ``params``, ``round`` and
    ``meta`` are there with the kinds save_checkpoint writes."""
    missing = sorted({"params", "round", "meta"} - z.keys())
    if missing:
        raise ValueError(f"{path} is not a refsim checkpoint (no {', '.join(missing)} array); "
                         f"{CHECKPOINT_ADVICE}")
    if z["round"].shape != () or z["round"].dtype.kind not in "iu" or z["params"].ndim != 1 \
            or z["meta"].shape != () or z["meta"].dtype.kind != "U":
        raise ValueError(f"{path} is not a refsim checkpoint (round, params or meta has the "
                         f"wrong kind); {CHECKPOINT_ADVICE}")
    try:
        meta = json.loads(str(z["meta"]))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is corrupt (meta is not JSON: {err}); "
                         f"{CHECKPOINT_ADVICE}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is corrupt (meta is not a JSON object); {CHECKPOINT_ADVICE}")
    return meta


def check_resumable(path: str, round_: int, params: np.ndarray, state: dict[str, np.ndarray],
                    meta: dict, like_params: np.ndarray, like_state: dict[str, np.ndarray],
                    rounds: int) -> None:
    """ValueError unless a loaded checkpoint fits the run resuming from it: params and every
    state array with the run's shapes and dtypes, 0 <= round <= rounds, one metrics row per
    completed round. (Its config, model and K are compared by the loop.)"""
    def kind(a):
        return f"{a.dtype} {a.shape}"

    theirs = {"params": kind(params), **{k: kind(v) for k, v in state.items()}}
    ours = {"params": kind(like_params), **{k: kind(v) for k, v in like_state.items()}}
    if theirs != ours:
        raise ValueError(f"{path}: arrays {theirs} do not fit this run's {ours}; "
                         f"{CHECKPOINT_ADVICE}")
    rows = meta.get("metrics")
    if not 0 <= round_ <= rounds or not isinstance(rows, list) or len(rows) != round_:
        raise ValueError(f"{path}: round {round_} with "
                         f"{len(rows) if isinstance(rows, list) else 'no'} metrics rows does "
                         f"not fit a run of {rounds} rounds; {CHECKPOINT_ADVICE}")
