"""The ServerApp: find the K clients among the connected nodes, run T rounds of
:class:`~refsim.flower.strategy.RefsimFedAvg`, and write refsim's run files.

1. **Discovery** (:func:`discover_clients`): every connected node gets one ``query`` message and
   answers its (partition-id k, num-partitions K) from its node config. The run starts once
   every k in 0..K-1 has answered (all nodes must agree on K; two nodes with the same k, or a k
   out of range, are errors). Flower's node ids are assigned by the SuperLink and change between
   runs; refsim's client ids are the partition ids, so this map is what lets the server apply
   refsim's sampling rule S_t to Flower nodes.
2. **Rounds**: ``RefsimFedAvg.start`` (Flower's loop) with ``evaluate_fn`` = the strategy's
   ``evaluate_round``; w_0 = ``model.init(make_rng(seed, Purpose.INIT), ...)`` as in
   ``run_fedavg``. Replies are pulled every 0.2 s (:class:`PollingGrid`) instead of Flower's 3 s.
3. **Files** in ``out-dir`` (default ``runs/flower-<run id>`` under the ServerApp's working
   directory, which is the SuperLink's): ``metrics.csv`` and ``metrics.jsonl`` (the format of
   ``refsim run``, byte-identical to an in-process run of the same config), ``final_weights.npy``,
   and ``summary.json`` (settings, the client -> node map, accuracy, bits, and per-round wall
   times; written last, so its presence means the run finished). If the run fails,
   ``error.txt`` holds the traceback instead (the SuperLink's executor does not show the
   ServerApp's output).
4. **Checkpoint, resume, trace**, as ``run_fedavg`` with a run directory: ``checkpoint.npz``
   after every round (``storage.save_checkpoint``, the in-process file: w_{t+1}, the server
   optimizer state and the kept client optimizer states, the metrics rows); with ``resume``
   the run continues from it (``loop.resume_point``: same config, model and K, else
   ValueError) and gives the uninterrupted run's files bit for bit; with ``trace`` the
   ``trace/`` files of ``loop._trace_init`` / ``loop._trace_round`` (the ServerApp then
   loads the training labels, to recompute the partition the trace records; no example
   travels). The ServerApp holds ``out-dir``'s lock (``run_lock.lock_run_dir``) for the whole
   run, as ``run_fedavg`` holds its run directory's: a second run on the same out-dir stops
   with RunDirBusy naming the first (and writes no error.txt into the directory it does not
   own); the lock holder first deletes the temporary files of a killed writer and the
   summary.json / error.txt of an earlier run.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import traceback

import flwr
import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

import refsim
from refsim.fedavg import metrics_csv, metrics_jsonl, rounds_to_targets
from refsim.fedavg.loop import _trace_init, _trace_round, checkpoint_meta, resume_point
from refsim.fedavg.run_lock import RunDirBusy, lock_run_dir
from refsim.fedavg.storage import (atomic_write_bytes, remove_partial_writes, save_checkpoint,
                                   write_json)
from refsim.flower.settings import (AppSettings, app_settings, has_client_test_sets,
                                    server_data, train_partition)
from refsim.flower.strategy import RefsimFedAvg
from refsim.flower.wire import read_query_reply

__all__ = ["app", "PollingGrid", "discover_clients", "run_server"]

app = ServerApp()
TARGETS = (0.95, 0.97)  # the accuracy targets summary.json reports, as refsim run's defaults
POLL_S = 0.2  # seconds between pulls for replies (Flower's Grid waits 3 s)


class PollingGrid(Grid):
    """The run's Grid, except that ``send_and_receive`` pulls replies every ``poll`` seconds.

    Flower 1.42's ``HttpGrid.send_and_receive`` sleeps 3 s between pulls, so every message
    round (the query, each round's train and evaluate messages) would wait up to 3 s after the
    last reply arrived. Everything else is the wrapped grid's; no result depends on the poll.
    """

    def __init__(self, grid: Grid, poll: float = POLL_S):
        self._grid, self._poll = grid, poll

    def set_run(self, run) -> None:
        self._grid.set_run(run)

    @property
    def run(self):
        return self._grid.run

    def create_message(self, *args, **kwargs) -> Message:
        return self._grid.create_message(*args, **kwargs)

    def get_node_ids(self):
        return self._grid.get_node_ids()

    def get_nodes(self):
        return self._grid.get_nodes()

    def push_messages(self, messages):
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        """Push, then pull until every message has its reply or ``timeout`` s have passed
        (the replies that came, as Flower's Grid returns them)."""
        waiting = set(self.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            got = list(self.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if not waiting or (end is not None and time.monotonic() >= end):
                break
            time.sleep(self._poll)
        return replies


def discover_clients(grid: Grid, timeout: float, poll: float = 0.5) -> dict[int, int]:
    """{refsim client id k: Flower node id} for k = 0..K-1 (see the module docstring).

    Raises ValueError for inconsistent node configs, RuntimeError when a node answers with an
    error, TimeoutError when not every client has answered within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    clients: dict[int, int] = {}
    asked: set[int] = set()
    num_clients = None
    while num_clients is None or len(clients) < num_clients:
        new = [n for n in grid.get_node_ids() if n not in asked]
        left = deadline - time.monotonic()
        if new and left > 0:
            msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY)
                    for n in new]
            for reply in grid.send_and_receive(msgs, timeout=left):
                node = reply.metadata.src_node_id
                if reply.has_error():
                    raise RuntimeError(f"node {node} failed to answer the query: "
                                       f"{reply.error.reason}")
                k, num = read_query_reply(reply.content, node)
                if num_clients is None:
                    num_clients = num
                if num != num_clients:
                    raise ValueError(f"node {node} has num-partitions = {num}, other nodes "
                                     f"{num_clients}: every SuperNode needs the same K")
                if not 0 <= k < num:
                    raise ValueError(f"node {node} has partition-id {k}, outside [0, {num})")
                if k in clients:
                    raise ValueError(f"nodes {clients[k]} and {node} both have partition-id {k}")
                clients[k] = node
                asked.add(node)
        if num_clients is not None and len(clients) == num_clients:
            break
        if time.monotonic() >= deadline:
            have = sorted(clients)
            raise TimeoutError(f"{len(have)} of {num_clients or '?'} clients answered within "
                               f"{timeout} s (partition ids {have}); start one SuperNode per "
                               f"partition id")
        time.sleep(poll)
    return clients


def _versions() -> dict:
    return {"refsim": refsim.__version__, "flwr": flwr.__version__,
            "python": sys.version.split()[0], "numpy": np.__version__,
            "platform": platform.platform()}


def run_server(grid: Grid, s: AppSettings, out: str, run_config: dict, run_id: int) -> None:
    """Discovery, T rounds, and the files of the module docstring, with ``out`` locked."""
    with lock_run_dir(out):
        remove_partial_writes(out)  # what a writer killed mid-write left
        for stale in ("summary.json", "error.txt"):  # of an earlier run in this directory
            if os.path.exists(os.path.join(out, stale)):
                os.remove(os.path.join(out, stale))
        _run_locked(grid, s, out, run_config, run_id)


def _run_locked(grid: Grid, s: AppSettings, out: str, run_config: dict, run_id: int) -> None:
    """The body of :func:`run_server` (its arguments), with ``out`` locked."""
    start = time.perf_counter()
    clients = discover_clients(grid, s.timeout)
    discovered = time.perf_counter()
    cfg, model = s.config, s.model()
    K = len(clients)
    meta = checkpoint_meta(cfg, model, K)
    ckpt, tdir = os.path.join(out, "checkpoint.npz"), os.path.join(out, "trace")
    partition = train_partition(s, K) if s.trace else None

    def after_round(row) -> None:  # as run_fedavg's loop, after each round
        if s.trace:
            keep = row.round % s.trace_every == 0 or row.round == cfg.rounds
            _trace_round(tdir, cfg, partition, row, strategy.params if keep else None)
        save_checkpoint(ckpt, row.round, strategy.params, strategy.state,
                        {**meta, "metrics": [x.to_dict() for x in strategy.rows]})

    strategy = RefsimFedAvg(cfg, model, clients, server_data(s),
                            client_test_sets=has_client_test_sets(s), on_round=after_round)
    if s.resume and os.path.exists(ckpt):
        strategy.restore(*resume_point(ckpt, cfg, model, K, strategy.initial_params))
    if s.trace:
        _trace_init(tdir, cfg, model, partition, strategy.initial_params)
    strategy.start(grid, ArrayRecord({"weights": Array(strategy.params)}),
                   num_rounds=cfg.rounds - strategy.done, timeout=s.timeout,
                   evaluate_fn=strategy.evaluate_round)
    rows = strategy.rows
    os.makedirs(out, exist_ok=True)
    atomic_write_bytes(os.path.join(out, "metrics.csv"), metrics_csv(rows).encode())
    atomic_write_bytes(os.path.join(out, "metrics.jsonl"), metrics_jsonl(rows).encode())
    np.save(os.path.join(out, "final_weights.npy"), strategy.params)
    tested = [r.test_accuracy for r in rows if r.test_accuracy is not None]
    wall = time.perf_counter() - start
    write_json(os.path.join(out, "summary.json"), {
        "run": "flower", "run_id": run_id, "model": model.name, "partition": s.partition,
        "config": cfg.to_dict(), "seed": cfg.seed, "num_clients": len(clients),
        "run_config": run_config, "nodes": {str(k): clients[k] for k in sorted(clients)},
        "versions": _versions(), "rounds": len(rows), "resumed_after_round": strategy.done,
        "final_accuracy": tested[-1],
        "best_accuracy": max(tested), "rounds_to_target": rounds_to_targets(rows, TARGETS),
        "uplink_bits": rows[-1].uplink_bits_cum,
        "total_broadcast_bits": rows[-1].broadcast_bits_cum,
        "wall_time_s": wall,
        "timing": {"discovery_s": discovered - start, "rounds_s": wall - (discovered - start),
                   "per_round": strategy.timing}})


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The ServerApp's entry point (``refsim.flower:server_app``)."""
    out = os.path.join("runs", f"flower-{context.run_id}")
    try:
        s = app_settings(context.run_config)
        out = s.out_dir or out
        run_server(PollingGrid(grid), s, out, dict(context.run_config), context.run_id)
    except RunDirBusy:  # out-dir is another run's: leave its files alone
        raise
    except BaseException:
        os.makedirs(out, exist_ok=True)
        atomic_write_bytes(os.path.join(out, "error.txt"), traceback.format_exc().encode())
        raise
