"""refsim.flower without Flower's engine: the ClientApp and the strategy called directly on
constructed messages, and Flower's own ``Strategy.start`` loop driven through an in-memory Grid
that hands each message to the ClientApp. The whole app must give ``run_fedavg``'s weights and
metrics bit for bit, with client optimizers, checkpoints, resume and traces too; malformed
messages must fail with errors that name the problem.
(The same app on a real SuperLink and SuperNodes: tests/test_flower_deployment.py.)"""

import json
import os
import re
import shutil
import tomllib

import numpy as np
import pytest

pytest.importorskip("flwr", reason="needs Flower: pip install 'refsim[flower]'")

from flwr.app import (Array, ArrayRecord, Context, Error, Message, MessageType,  # noqa: E402
                      MetricRecord, RecordDict)
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto  # noqa: E402
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

import refsim.flower  # noqa: E402
from refsim.backend import Purpose, make_rng  # noqa: E402
from refsim.cli import run_settings  # noqa: E402
from refsim.cli.flower_app import app_dir  # noqa: E402
from refsim.fedavg import (ClientHParams, decode_broadcast, encode_broadcast,  # noqa: E402
                           evaluation_clients, holdout_split, metrics_csv, run_fedavg,
                           train_client)
from refsim.flower import settings, wire  # noqa: E402
from refsim.flower.serverapp import discover_clients, run_server  # noqa: E402
from refsim.flower.strategy import RefsimFedAvg  # noqa: E402
from refsim.fedavg.run_lock import RunDirBusy, lock_run_dir  # noqa: E402
from refsim.fedavg.storage import load_checkpoint  # noqa: E402
from refsim.safe_npz import read_npz  # noqa: E402
from checks import assert_same_checkpoint, assert_same_trace  # noqa: E402

pytestmark = pytest.mark.flower

SMALL = {"model": "logistic", "train-limit": 1200, "test-limit": 300, "rounds": 2,
         "fraction": 0.67, "batch-size": 20}


@pytest.fixture(autouse=True)
def server_process():
    """Flower sets the identity of each process it starts; messages need it (run 7, node 0)."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _context(node: int, k: int | None, num: int, run_config: dict) -> Context:
    node_config = {} if k is None else {"partition-id": k, "num-partitions": num}
    return Context(run_id=7, node_id=node, node_config=node_config, state=RecordDict(),
                   run_config=run_config)


class InlineGrid(Grid):
    """Flower's Grid with no engine: a pushed message goes straight to the ClientApp of its node
    (contexts: {node id: Context}), and its reply waits to be pulled; an exception becomes an
    error reply, as flwr-clientapp sends. Message ids are given as Flower's InMemoryGrid gives
    them."""

    def __init__(self, contexts: dict[int, Context]):
        self.contexts, self.sent, self.replies = contexts, [], {}

    def set_run(self, run):
        pass

    @property
    def run(self):
        raise NotImplementedError("no Run without an engine")

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id)

    def get_node_ids(self):
        return list(self.contexts)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = f"m{len(self.sent)}"
            self.sent.append(msg)
            try:
                reply = refsim.flower.client_app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as e:  # what flwr-clientapp does with an exception
                reply = Message(Error(code=2, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
            self.replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    def send_and_receive(self, messages, *, timeout=None):
        return self.pull_messages(self.push_messages(messages))


def _deployment(run_config: dict, num: int = 3):
    """InlineGrid of K nodes (node id 100 + k is client k)."""
    return InlineGrid({100 + k: _context(100 + k, k, num, run_config) for k in range(num)})


def _in_process(run_config: dict, num: int = 3):
    s = settings.app_settings(run_config)
    data = settings.load_data(s)
    parts = run_settings.make_partition(s.partition, {"seed": s.config.seed, "clients": num,
                                                      "shards_per_client": s.shards_per_client},
                                        data.y_train, None)
    return s, data, parts, run_fedavg(s.config, s.model(), data, parts)


# -- the app's files and configurations --------------------------------------------------------

def test_shipped_pyproject_names_the_app_and_holds_exactly_the_run_config():
    with open(os.path.join(app_dir(), "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)
    app = pyproject["tool"]["flwr"]["app"]
    assert app["components"] == {"serverapp": "refsim.flower:server_app",
                                 "clientapp": "refsim.flower:client_app"}
    assert app["config"] == settings.RUN_CONFIG
    assert refsim.flower.server_app is not None and refsim.flower.client_app is not None


@pytest.mark.parametrize("codec, downlink, batch", [("quant-huffman", "raw", 10),
                                                    ("float", "quant", "inf")])
def test_run_config_builds_the_config_refsim_run_builds(codec, downlink, batch):
    rc = {**settings.RUN_CONFIG, "codec": codec, "downlink": downlink, "batch-size": batch,
          "server-opt": "momentum", "server-momentum": 0.9, "eval-holdout": 0.1, "seed": 5}
    s = {k.replace("-", "_"): v for k, v in rc.items()}
    s["batch_size"] = None if batch == "inf" else batch
    expected = run_settings.make_config({**run_settings.RUN_DEFAULTS, **s}, codec, 1,
                                        s["batch_size"])
    assert settings.fedavg_config(rc) == expected


@pytest.mark.parametrize("partition, holdout", [("iid", 0.0), ("shards", 0.25)])
def test_a_node_computes_its_part_of_refsim_runs_partition(partition, holdout):
    rc = {**settings.RUN_CONFIG, **SMALL, "partition": partition, "eval-holdout": holdout,
          "seed": 3}
    s = settings.app_settings(rc)
    labels = settings.load_data(s).y_train
    parts = run_settings.make_partition(partition, {"seed": 3, "clients": 4,
                                                    "shards_per_client": 2}, labels, None)
    train, held = holdout_split(parts, holdout, 3)
    for k in range(4):
        idx, ev = settings.client_indices(s, 4, k)
        np.testing.assert_array_equal(idx, train[k], err_msg=f"client {k}")
        np.testing.assert_array_equal(ev, held[k], err_msg=f"client {k}")
    assert settings.server_data(s).x_train.shape == (0, 1, 28, 28)


@pytest.mark.parametrize("change, message", [
    ({"model": "resnet"}, "model = 'resnet' is not one of"),
    ({"batch-size": "all"}, "batch-size must be an integer >= 1"),
    ({"fraction": 1.5}, "fraction must be in [0.0, 1.0]"),
    ({"typo-key": 1}, "unknown keys ['typo-key']"),
    ({"train-limit": -1}, "train-limit must be an integer >= 0"),
    ({"server-bias-correction": True}, "bias_correction applies to ServerOpt.ADAM only"),
    ({"dataset": "cifar10"}, "dataset = 'cifar10' is not one of mnist, femnist"),
    ({"dataset": "femnist"}, "dataset = 'femnist' is split by writer: partition must be "
                             "'writers', got 'iid'"),
    ({"dataset": "femnist", "partition": "writers", "eval-holdout": 0.1},
     "evaluated on each writer's own test set: eval-holdout must be 0"),
])
def test_a_bad_run_config_names_the_key(change, message):
    with pytest.raises(ValueError, match="^run config: ") as e:
        settings.app_settings({**settings.RUN_CONFIG, **change})
    assert message in str(e.value)


@pytest.mark.parametrize("node_config, message", [
    ({}, "missing 'partition-id'"),
    ({"partition-id": 0}, "missing 'num-partitions'"),
    ({"partition-id": 3, "num-partitions": 3}, "partition-id = 3 is out of range [0, 3)"),
    ({"partition-id": -1, "num-partitions": 3}, "out of range"),
    ({"partition-id": "0", "num-partitions": 3}, "partition-id must be an integer"),
    ({"partition-id": True, "num-partitions": 3}, "partition-id must be an integer"),
    ({"partition-id": 0, "num-partitions": 0}, "num-partitions must be >= 1"),
])
def test_a_bad_node_config_names_the_problem(node_config, message):
    with pytest.raises(ValueError, match="^node config: ") as e:
        settings.node_client(node_config)
    assert message in str(e.value)


# -- payloads and records ----------------------------------------------------------------------

def test_payloads_round_trip_through_flower_arrays_and_reject_the_wrong_kind():
    coded = b"RSC\x01" + bytes(range(40))
    arr = wire.payload_to_array(coded)
    assert (arr.stype, arr.dtype, arr.shape) == ("refsim/codec-v1", "uint8", (44,))
    assert wire.array_to_payload(arr, True, "x") == coded
    raw = np.arange(5, dtype=np.float32) / 3
    back = wire.array_to_payload(wire.payload_to_array(raw), False, "x")
    assert back.dtype == np.float32 and np.array_equal(back, raw)
    with pytest.raises(ValueError, match="update: array type tag 'numpy.ndarray', expected "
                                         "'refsim/codec-v1'"):
        wire.array_to_payload(wire.payload_to_array(raw), True, "update")
    with pytest.raises(ValueError, match="type tag 'refsim/huffman-v0'"):
        wire.array_to_payload(Array("uint8", (3,), "refsim/huffman-v0", b"abc"), True, "u")
    with pytest.raises(ValueError, match="must be uint8 of shape"):
        wire.array_to_payload(Array("uint8", (4,), "refsim/codec-v1", b"abc"), True, "u")
    with pytest.raises(ValueError, match="unreadable numpy.ndarray bytes"):
        wire.array_to_payload(Array("float32", (5,), "numpy.ndarray", b"not npy"), False, "u")
    assert wire.payload_bits(coded) == 8 * 44 and wire.payload_bits(raw) == 32 * 5


# -- the ClientApp -----------------------------------------------------------------------------

def _train_message(rc, t, k, node):
    s = settings.app_settings(rc)
    w = s.model().init(make_rng(s.config.seed, Purpose.INIT), "keras", np.float32)
    payload, _ = encode_broadcast(s.config.downlink, s.model(), w, s.config.seed, t)
    return Message(wire.instruction_content(payload, t, k), dst_node_id=node,
                   message_type=MessageType.TRAIN), s, w, payload


@pytest.mark.parametrize("downlink", ["raw", "quant"])
def test_client_app_replies_with_exactly_what_train_client_computes(downlink):
    rc = {**settings.RUN_CONFIG, **SMALL, "downlink": downlink}
    msg, s, w, payload = _train_message(rc, 2, 1, 101)
    reply = refsim.flower.client_app(msg, _context(101, 1, 3, rc))
    assert reply.metadata.src_node_id == 101 and not reply.has_error()
    got, seconds = wire.read_report_content(reply.content, 1, coded=True)
    data = settings.load_data(s)
    idx, _ = settings.client_indices(s, 3, 1)
    model, cfg = s.model(), s.config
    expected = train_client(decode_broadcast(payload, model, np.float32), data.x_train,
                            data.y_train, idx, ClientHParams(model, 1, 20, cfg.client_lr(2)),
                            cfg.codec, cfg.seed, 2, 1)
    assert got == expected  # every field, the payload bytes included
    assert set(seconds) == {"setup-seconds", "train-seconds"}
    assert reply.content["update"]["delta"].stype == "refsim/codec-v1"


def test_client_app_answers_the_query_and_refuses_messages_for_other_clients():
    rc = {**settings.RUN_CONFIG, **SMALL}
    q = Message(RecordDict(), dst_node_id=102, message_type=MessageType.QUERY)
    reply = refsim.flower.client_app(q, _context(102, 2, 3, rc))
    assert wire.read_query_reply(reply.content, 102) == (2, 3)
    msg, *_ = _train_message(rc, 1, 0, 102)
    with pytest.raises(ValueError, match="train message for client 0 reached the node of "
                                         "client 2"):
        refsim.flower.client_app(msg, _context(102, 2, 3, rc))
    with pytest.raises(ValueError, match="node config: missing 'partition-id'"):
        refsim.flower.client_app(q, _context(102, None, 3, rc))
    msg, *_ = _train_message(rc, 3, 2, 102)  # rounds = 2
    with pytest.raises(ValueError, match="round 3 is outside 1..2"):
        refsim.flower.client_app(msg, _context(102, 2, 3, rc))


# -- the whole app, engine-free ----------------------------------------------------------------

@pytest.mark.parametrize("change", [
    {},  # the deployment test's setting: Huffman-coded updates, raw broadcast
    {"codec": "raw", "downlink": "quant-huffman", "partition": "shards", "eval-holdout": 0.2,
     "eval-every": 2, "rounds": 3, "server-opt": "momentum", "server-momentum": 0.9},
    {"eval-holdout": 0.2, "fraction-evaluate": 0.5, "rounds": 3},  # 1 of 3 clients evaluates
])
def test_flowers_loop_over_the_app_gives_run_fedavg_bit_for_bit(change, tmp_path):
    rc = {**settings.RUN_CONFIG, **SMALL, **change}
    s, data, parts, expected = _in_process(rc)
    out = str(tmp_path / "out")
    grid = _deployment(rc)
    run_server(grid, s, out, rc, 7)  # discovery, Flower's Strategy.start, the files
    with open(os.path.join(out, "metrics.csv")) as f:
        assert f.read() == metrics_csv(expected.rounds)
    np.testing.assert_array_equal(np.load(os.path.join(out, "final_weights.npy")),
                                  expected.params)
    kinds = [m.metadata.message_type for m in grid.sent]
    m = len(expected.rounds[0].clients)
    evaluators = [evaluation_clients(s.config, r.round, 3).tolist() for r in expected.rounds
                  if r.fed_eval_loss is not None]
    assert kinds.count("query") == 3 and kinds.count("train") == m * s.config.rounds
    evaluated_by = [m.metadata.dst_node_id - 100 for m in grid.sent
                    if m.metadata.message_type == "evaluate"]
    assert evaluated_by == [k for ks in evaluators for k in ks]
    sent_to = [m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == "train"]
    assert sent_to == [100 + k for r in expected.rounds for k in r.clients]


# FEMNIST by writer: train-limit 800 keeps writers 0-9 (K = 10), test-limit 92 exactly their
# test examples, so every client has a test set of its own (refsim run's eval_partition).
FEMNIST = {"dataset": "femnist", "partition": "writers", "model": "logistic",
           "train-limit": 800, "test-limit": 92, "rounds": 3, "fraction": 0.3, "batch-size": 10,
           "eval-every": 2}


def test_femnist_by_writer_gives_refsim_runs_per_writer_evaluation_bit_for_bit(tmp_path):
    rc = {**settings.RUN_CONFIG, **FEMNIST}
    s = settings.app_settings(rc)
    run_s = {**run_settings.RUN_DEFAULTS, "dataset": "femnist", "train_limit": 800,
             "test_limit": 92, "normalize": None, "data_dir": None, "dtype": "float32"}
    data, writers_train, writers_test = run_settings.make_data(run_s)
    parts = run_settings.make_partition("writers", run_s, data.y_train, writers_train)
    evals = run_settings.eval_partition("writers", writers_train, writers_test)
    assert len(parts) == 10 and settings.has_client_test_sets(s)
    for k in range(10):
        np.testing.assert_array_equal(settings.client_test_indices(s, 10, k), evals[k])
    app_data = settings.load_data(s)
    for a, b in zip(app_data, data):
        np.testing.assert_array_equal(a, b)  # the same inverted FEMNIST digits
    expected = run_fedavg(s.config, s.model(), data, parts, eval_partition=evals)
    assert expected.rounds[1].fed_eval_accuracy is not None  # the test is not vacuous
    out = str(tmp_path / "out")
    grid = _deployment(rc, 10)
    run_server(grid, s, out, rc, 7)
    with open(os.path.join(out, "metrics.csv")) as f:
        assert f.read() == metrics_csv(expected.rounds)
    np.testing.assert_array_equal(np.load(os.path.join(out, "final_weights.npy")),
                                  expected.params)
    evaluated = sorted({m.metadata.dst_node_id - 100 for m in grid.sent
                        if m.metadata.message_type == "evaluate"})
    assert evaluated == list(range(10))


def test_a_node_count_that_is_not_the_number_of_writers_is_refused():
    s = settings.app_settings({**settings.RUN_CONFIG, **FEMNIST})
    with pytest.raises(ValueError, match="num-partitions = 4, but the writers partition of "
                                         "femnist .* has 10 clients: start 10 SuperNodes"):
        settings.client_indices(s, 4, 0)


def test_a_process_reads_the_data_once_and_nobody_can_change_it():
    s = settings.app_settings({**settings.RUN_CONFIG, **SMALL})
    data = settings.load_data(s)
    assert settings.load_data(s) is data
    train, _ = settings.client_indices(s, 3, 0)
    assert settings.client_indices(s, 3, 0)[0] is train
    for a in (*data, train):
        with pytest.raises(ValueError, match="read-only"):
            a[:1] = 0


def _round_one(rc):
    s = settings.app_settings(rc)
    strategy = RefsimFedAvg(s.config, s.model(), {k: 100 + k for k in range(3)},
                            settings.server_data(s))
    grid = _deployment(rc)
    msgs = list(strategy.configure_train(1, None, None, grid))
    return strategy, msgs, grid.send_and_receive(msgs)


def test_aggregation_rejects_corrupt_bytes_wrong_tags_and_missing_or_failed_clients():
    rc = {**settings.RUN_CONFIG, **SMALL}
    strategy, msgs, replies = _round_one(rc)
    assert [m.metadata.dst_node_id for m in msgs] == [101, 102]  # S_1 = {1, 2}

    def with_update(reply, array):
        content = RecordDict({"report": reply.content["report"],
                              "update": ArrayRecord({"delta": array})})
        return Message(content, reply_to=msgs[[101, 102].index(reply.metadata.src_node_id)])

    delta = replies[0].content["update"]["delta"]
    for corrupt in (delta.data[:-5], b"XYZ" + delta.data[3:]):  # truncated; bad magic
        strategy, msgs, replies = _round_one(rc)
        array = Array("uint8", (len(corrupt),), "refsim/codec-v1", corrupt)
        with pytest.raises(ValueError, match="codec"):
            strategy.aggregate_train(1, [with_update(replies[0], array), replies[1]])
    strategy, msgs, replies = _round_one(rc)
    retagged = Array("uint8", delta.shape, "refsim/huffman-v1", delta.data)
    with pytest.raises(ValueError, match="train reply of client 1 update: array type tag "
                                         "'refsim/huffman-v1'"):
        strategy.aggregate_train(1, [with_update(replies[0], retagged), replies[1]])
    strategy, msgs, replies = _round_one(rc)
    with pytest.raises(TimeoutError, match=r"round 1: no train reply from clients \[2\]"):
        strategy.aggregate_train(1, replies[:1])
    strategy, msgs, replies = _round_one(rc)
    failed = Message(Error(code=2, reason="ValueError: out of memory"), reply_to=msgs[1])
    with pytest.raises(RuntimeError, match=r"client 2 \(node 102\) failed in train: "
                                           "ValueError: out of memory"):
        strategy.aggregate_train(1, [replies[0], failed])
    strategy, msgs, replies = _round_one(rc)
    with pytest.raises(ValueError, match="unexpected train reply from node 101"):
        strategy.aggregate_train(1, [replies[0], replies[0], replies[1]])


def test_a_raw_update_travels_as_a_float_array():
    rc = {**settings.RUN_CONFIG, **SMALL, "codec": "raw"}
    strategy, _, replies = _round_one(rc)
    delta = replies[0].content["update"]["delta"]
    assert (delta.stype, delta.dtype, delta.shape) == ("numpy.ndarray", "float32", (7850,))
    params, _ = strategy.aggregate_train(1, replies)
    assert params["weights"].numpy().shape == (7850,)


def test_discovery_maps_partition_ids_to_nodes_and_rejects_inconsistent_nodes():
    rc = {**settings.RUN_CONFIG, **SMALL}
    grid = InlineGrid({7: _context(7, 2, 3, rc), 9: _context(9, 0, 3, rc),
                       4: _context(4, 1, 3, rc)})
    assert discover_clients(grid, timeout=5) == {0: 9, 1: 4, 2: 7}
    twins = InlineGrid({7: _context(7, 1, 3, rc), 9: _context(9, 1, 3, rc)})
    with pytest.raises(ValueError, match="nodes 7 and 9 both have partition-id 1"):
        discover_clients(twins, timeout=5)
    mixed = InlineGrid({7: _context(7, 0, 3, rc), 9: _context(9, 1, 4, rc)})
    with pytest.raises(ValueError, match="node 9 has num-partitions = 4, other nodes 3"):
        discover_clients(mixed, timeout=5)
    short = InlineGrid({7: _context(7, 0, 3, rc), 9: _context(9, 2, 3, rc)})
    with pytest.raises(TimeoutError,
                       match=r"2 of 3 clients answered .* \(partition ids \[0, 2\]\)"):
        discover_clients(short, timeout=0.3, poll=0.05)
    unconfigured = InlineGrid({7: _context(7, None, 3, rc)})
    with pytest.raises(RuntimeError, match="node 7 failed to answer the query: .*missing "
                                           "'partition-id'"):
        discover_clients(unconfigured, timeout=5)


def test_a_failing_server_app_leaves_error_txt(tmp_path):
    rc = {**settings.RUN_CONFIG, **SMALL, "out-dir": str(tmp_path / "out")}
    context = Context(run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config=rc)
    grid = InlineGrid({7: _context(7, 0, 2, rc), 9: _context(9, 0, 2, rc)})
    with pytest.raises(ValueError, match="both have partition-id 0"):
        refsim.flower.server_app(grid, context)
    error = (tmp_path / "out" / "error.txt").read_text()
    assert "both have partition-id 0" in error and not (tmp_path / "out" / "summary.json").exists()


def test_the_flower_records_carry_every_number_exactly():
    report_numbers = {"partition-id": 1, "num-examples": 400, "num-batches": 20,
                      "loss-sum": 0.1 + 0.2, "num-correct": 300, "num-seen": 400,
                      "entropy-bits": 1 / 3, "setup-seconds": 0.5, "train-seconds": 0.25}
    content = RecordDict({"report": MetricRecord(report_numbers),
                          "update": ArrayRecord({"delta": wire.payload_to_array(b"RSC")})})
    proto = recorddict_to_proto(content).SerializeToString()  # what travels
    back = recorddict_from_proto(ProtoRecordDict.FromString(proto))
    report, _ = wire.read_report_content(back, 1, coded=True)
    assert report.loss_sum == 0.1 + 0.2 and report.entropy_bits == 1 / 3
    assert report.uplink_bits == 24 and report.payload == b"RSC"
    bad = RecordDict({"report": MetricRecord({**report_numbers, "num-seen": 400.0})})
    with pytest.raises(ValueError, match="'num-seen' must be an integer"):
        wire.read_report_content(bad, 1, coded=True)
    with pytest.raises(ValueError, match="no ConfigRecord 'config'"):
        wire.read_instruction_content(RecordDict({"arrays": ArrayRecord()}), False, "train")
    with pytest.raises(ValueError, match="it comes from partition-id 1"):
        wire.read_report_content(content, 2, coded=True)


# -- client optimizers, checkpoint and resume, trace (feature parity with refsim run) ----------

OPTS = {"momentum-reset": {"client-opt": "momentum", "client-momentum": 0.8},
        "adam-keep": {"client-opt": "adam", "lr": 0.01, "client-opt-state": "keep"},
        "adam-tff-keep": {"client-opt": "adam-tff", "lr": 0.01, "client-eps": 1e-7,
                          "client-opt-state": "keep"}}


def _in_process_run_dir(run_config: dict, run_dir, num: int = 3, **kwargs):
    """run_fedavg of the run config with a run directory (checkpoint, trace), K = num."""
    s = settings.app_settings(run_config)
    data = settings.load_data(s)
    parts = run_settings.make_partition(s.partition, {"seed": s.config.seed, "clients": num,
                                                      "shards_per_client": s.shards_per_client},
                                        data.y_train, None)
    return run_fedavg(s.config, s.model(), data, parts, run_dir=run_dir, **kwargs)


def _same_files(out, expected) -> None:
    with open(os.path.join(out, "metrics.csv")) as f:
        assert f.read() == metrics_csv(expected.rounds)
    w = np.load(os.path.join(out, "final_weights.npy"))
    assert w.dtype == expected.params.dtype
    np.testing.assert_array_equal(w, expected.params)


def test_run_config_carries_the_client_optimizer_refsim_run_builds():
    rc = {**settings.RUN_CONFIG, **OPTS["adam-tff-keep"], "client-beta1": 0.8,
          "client-beta2": 0.99}
    s = {k.replace("-", "_"): v for k, v in rc.items()}
    expected = run_settings.make_config({**run_settings.RUN_DEFAULTS, **s}, rc["codec"], 1, 10)
    cfg = settings.fedavg_config(rc)
    assert cfg == expected and cfg.client_opt.to_dict() == {
        "kind": "adam-tff", "momentum": 0.9, "beta1": 0.8, "beta2": 0.99, "eps": 1e-7,
        "state": "keep"}
    with pytest.raises(ValueError, match="^run config: client-opt = 'lamb' is not one of"):
        settings.fedavg_config({**rc, "client-opt": "lamb"})
    with pytest.raises(ValueError, match="^run config: client_opt.state 'keep' needs a client "
                                         "optimizer with a state"):
        settings.fedavg_config({**rc, "client-opt": "sgd"})
    with pytest.raises(ValueError, match="^run config: trace must be true or false, got 1"):
        settings.app_settings({**settings.RUN_CONFIG, "trace": 1})


@pytest.mark.parametrize("opt", sorted(OPTS))
def test_client_optimizers_give_run_fedavg_bit_for_bit_and_its_checkpoint(opt, tmp_path):
    """reset: a fresh state on the node each round; keep: client k's state goes out with its
    train message and comes back with the reply, held (and checkpointed) by the server."""
    rc = {**settings.RUN_CONFIG, **SMALL, **OPTS[opt], "rounds": 3}
    expected = _in_process_run_dir(rc, tmp_path / "local")
    s = settings.app_settings(rc)
    grid = _deployment(rc)
    run_server(grid, s, str(tmp_path / "out"), rc, 7)
    _same_files(tmp_path / "out", expected)
    assert_same_checkpoint(tmp_path / "out" / "checkpoint.npz",
                           tmp_path / "local" / "checkpoint.npz")
    trains = [m for m in grid.sent if m.metadata.message_type == "train"]
    carried = [(int(m.content["config"]["server-round"]), m.metadata.dst_node_id - 100)
               for m in trains if "opt-state" in m.content]
    trained = [(r.round, k) for r in expected.rounds for k in r.clients]
    if opt.endswith("keep"):  # every client that trained before gets its state back
        assert carried == [(t, k) for t, k in trained if any(
            k2 == k and t2 < t for t2, k2 in trained)] and carried
        _, _, state, _ = load_checkpoint(tmp_path / "out" / "checkpoint.npz")
        assert {key.split(".")[0] for key in state} == {f"client{k}" for _, k in trained}
    else:
        assert carried == []


def test_a_client_optimizer_state_of_the_wrong_kind_is_refused_naming_the_client():
    rc = {**settings.RUN_CONFIG, **SMALL, **OPTS["adam-keep"]}
    strategy, msgs, replies = _round_one(rc)
    state = wire.read_opt_state(replies[0].content, {"step": np.int64(0),
                                                     "exp_avg": np.zeros(7850, np.float32),
                                                     "exp_avg_sq": np.zeros(7850, np.float32)},
                                "x")
    assert int(state["step"]) == 20 and isinstance(state["step"], np.int64)  # 400 / B 20

    def with_state(reply, opt_state):
        content = RecordDict({"report": reply.content["report"],
                              "update": reply.content["update"]})
        if opt_state is not None:
            content["opt-state"] = wire.opt_state_record(opt_state)
        return Message(content, reply_to=msgs[[101, 102].index(reply.metadata.src_node_id)])

    for bad, says in [({**state, "exp_avg": state["exp_avg"][:10]},
                       "optimizer state 'exp_avg' is float32 (10,), expected float32 (7850,)"),
                      ({**state, "exp_avg_sq": state["exp_avg_sq"].astype(np.float64)},
                       "optimizer state 'exp_avg_sq' is float64 (7850,), expected float32 (7850,)"),
                      ({**state, "step": np.int32(20)},
                       "optimizer state 'step' is int32 (), expected int64 ()"),
                      ({"step": state["step"]}, "optimizer state holds ['step'], expected"),
                      (None, "no optimizer state (client-opt-state is 'keep')")]:
        strategy, msgs, replies = _round_one(rc)
        with pytest.raises(ValueError, match=re.escape(f"train reply of client 1: {says}")):
            strategy.aggregate_train(1, [with_state(replies[0], bad), replies[1]])
    # The node checks what the server sends it the same way, and refuses a state under reset.
    msg, s, w, payload = _train_message(rc, 2, 1, 101)
    msg.content["opt-state"] = wire.opt_state_record({**state, "exp_avg": state["exp_avg"][:3]})
    with pytest.raises(ValueError, match="train message of client 1: optimizer state "
                                         "'exp_avg' is float32 \\(3,\\)"):
        refsim.flower.client_app(msg, _context(101, 1, 3, rc))
    reset = {**settings.RUN_CONFIG, **SMALL, "client-opt": "adam"}
    strategy, msgs, replies = _round_one(reset)
    with pytest.raises(ValueError, match="train reply of client 1: carries an optimizer state, "
                                         "but client-opt-state is 'reset'"):
        strategy.aggregate_train(1, [with_state(replies[0], state), replies[1]])
    msg, *_ = _train_message(reset, 2, 1, 101)
    msg.content["opt-state"] = wire.opt_state_record(state)
    with pytest.raises(ValueError, match="train message of client 1: carries an optimizer "
                                         "state, but client-opt-state is 'reset'"):
        refsim.flower.client_app(msg, _context(101, 1, 3, reset))


class FailingGrid(InlineGrid):
    """InlineGrid whose nodes fail every train message of round ``t``."""

    def __init__(self, contexts, t: int):
        super().__init__(contexts)
        self.t = t

    def push_messages(self, messages):
        messages = list(messages)
        for msg in messages:
            if msg.metadata.message_type == "train" and \
                    msg.content["config"]["server-round"] == self.t:
                msg.content["config"]["refsim-client"] = -1  # the node refuses it
        return super().push_messages(messages)


def test_an_interrupted_run_resumes_bit_for_bit_on_flower_and_in_process(tmp_path):
    """The ServerApp writes the in-process checkpoint after every round; a run stopped in round
    3 resumes from round 2 on Flower, and its checkpoint resumes the in-process loop too, and a
    checkpoint of the in-process loop resumes on Flower: all equal the uninterrupted run."""
    rc = {**settings.RUN_CONFIG, **SMALL, **OPTS["adam-keep"], "rounds": 4,
          "server-opt": "momentum", "server-momentum": 0.9}
    s = settings.app_settings(rc)
    full = _in_process_run_dir(rc, tmp_path / "full")
    contexts = _deployment(rc).contexts
    out = str(tmp_path / "flower")
    with pytest.raises(RuntimeError, match=r"round 3: client \d \(node 10\d\) failed in train"):
        refsim.flower.server_app(FailingGrid(contexts, 3),
                                 Context(run_id=7, node_id=0, node_config={}, state=RecordDict(),
                                         run_config={**rc, "out-dir": out}))
    assert (tmp_path / "flower" / "error.txt").exists()
    assert load_checkpoint(os.path.join(out, "checkpoint.npz"))[0] == 2
    shutil.copytree(out, tmp_path / "in-process")
    grid = _deployment(rc)
    run_server(grid, settings.app_settings({**rc, "resume": True}), out, rc, 8)
    _same_files(out, full)
    assert not (tmp_path / "flower" / "error.txt").exists()  # of the interrupted run
    assert_same_checkpoint(os.path.join(out, "checkpoint.npz"),
                           tmp_path / "full" / "checkpoint.npz")
    trained = {int(m.content["config"]["server-round"]) for m in grid.sent
               if m.metadata.message_type == "train"}
    assert trained == {3, 4}
    summary = json.loads((tmp_path / "flower" / "summary.json").read_text())
    assert summary["resumed_after_round"] == 2 and summary["rounds"] == 4
    assert [r["round"] for r in summary["timing"]["per_round"]] == [3, 4]
    # The Flower checkpoint resumes the in-process loop ...
    resumed = _in_process_run_dir(rc, tmp_path / "in-process", resume=True)
    assert metrics_csv(resumed.rounds) == metrics_csv(full.rounds)
    np.testing.assert_array_equal(resumed.params, full.params)

    # ... and an in-process checkpoint of round 2 resumes on Flower.
    def stop_after_2(row):
        if row.round == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _in_process_run_dir(rc, tmp_path / "local", on_round=stop_after_2)
    run_server(_deployment(rc), settings.app_settings({**rc, "resume": True}),
               str(tmp_path / "local"), rc, 9)
    _same_files(tmp_path / "local", full)
    # Without resume the run starts over; another run's checkpoint is refused.
    run_server(_deployment(rc), s, out, rc, 10)
    _same_files(out, full)
    other = {**rc, "lr": 0.02}
    with pytest.raises(ValueError, match="checkpoint.npz was written by a different run"):
        run_server(_deployment(other), settings.app_settings({**other, "resume": True}), out,
                   other, 11)


def test_the_trace_is_the_in_process_trace(tmp_path):
    rc = {**settings.RUN_CONFIG, **SMALL, "partition": "shards", "eval-holdout": 0.2,
          "rounds": 3, "epochs": 2, "trace": True, "trace-every": 2}
    expected = _in_process_run_dir(rc, tmp_path / "local", trace=True, trace_every=2)
    run_server(_deployment(rc), settings.app_settings(rc), str(tmp_path / "out"), rc, 7)
    _same_files(tmp_path / "out", expected)
    assert_same_trace(tmp_path / "out" / "trace", tmp_path / "local" / "trace")
    has = [read_npz(str(tmp_path / "out" / "trace" / f"round_{t:06d}.npz")).keys() >= {"weights"}
           for t in (1, 2, 3)]
    assert has == [False, True, True]  # every 2nd round and the last


def test_a_second_server_app_on_a_locked_out_dir_stops_and_leaves_its_files(tmp_path):
    rc = {**settings.RUN_CONFIG, **SMALL, "out-dir": str(tmp_path / "out")}
    context = Context(run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config=rc)
    with lock_run_dir(tmp_path / "out"):
        with pytest.raises(RunDirBusy, match=f"PID {os.getpid()}"):
            refsim.flower.server_app(_deployment(rc), context)
        assert os.listdir(tmp_path / "out") == ["run.lock"]  # no error.txt, no checkpoint
