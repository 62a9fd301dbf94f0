"""The Flower app's two configurations, turned into refsim's objects.

* The **run config** (Flower's ``[tool.flwr.app.config]`` in ``refsim/flower_app/pyproject.toml``,
  overridden with ``flwr run ... --run-config 'key=value ...'``) holds the settings of
  ``refsim run`` under the same names, hyphenated (``batch-size`` for ``--batch-size``); every
  process of a run (the ServerApp and each ClientApp) reads the same values and builds the same
  :class:`~refsim.fedavg.FedAvgConfig` from them (:func:`fedavg_config`).
  Besides the FedAvgConfig, three keys say what the ServerApp writes in ``out-dir``, as
  ``refsim run``'s flags do: ``resume`` (continue from ``out-dir/checkpoint.npz``; the
  checkpoint is written after every round either way), ``trace`` and ``trace-every``.
* The **node config** of each SuperNode (``flower-supernode --node-config 'partition-id=k
  num-partitions=K'``) says which refsim client the node is: k in [0, K), and K, the number of
  clients of the partition (:func:`node_client`).

The data never travels: each process loads the embedded dataset (``dataset`` = mnist or femnist,
``refsim.fedavg.named.images_named``), and a client recomputes the partition of all K clients
exactly as ``refsim run`` does (``make_rng(seed, Purpose.PARTITION)``, or one client per writer,
then ``holdout_split``) and keeps its own index arrays (:func:`client_indices`): its training
examples, its held-out ones, and for FEMNIST by writer its own test examples (the writer's
LEAF test set, ``refsim run``'s per-writer test sets). The ServerApp holds only the test set
(:func:`server_data`).

A process keeps the data and the partition it computed (:func:`load_data`,
:func:`client_indices`), so the Simulation Engine's long-lived actors, which run the ClientApp
for many clients and rounds, read the dataset once instead of once per message. Both are pure
functions of the run config, the arrays are read-only, and no result depends on the cache.

This module does not import ``flwr``; errors are ValueError / TypeError naming the key.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from refsim.fedavg import (DType, FedAvgConfig, FedData, InitScheme, NanPolicy, ServerOpt,
                           ServerOptConfig, Weighting, from_images, holdout_split)
from refsim.fedavg.client_opt import ClientOpt, ClientOptConfig, ClientStatePolicy
from refsim.fedavg.named import (CODEC_NAMES, MODELS, codec_named, images_named, partition_named,
                                 writer_test_sets)
from refsim.nn import Model

__all__ = ["RUN_CONFIG", "MODELS", "DATASETS", "PARTITIONS", "CODECS", "AppSettings",
           "app_settings", "fedavg_config", "node_client", "load_data",
           "client_indices", "client_test_indices", "has_client_test_sets", "train_partition",
           "server_data"]

# The embedded datasets (CIFAR-10 is read from a folder refsim cannot ship, so it is not offered)
DATASETS = ("mnist", "femnist")
PARTITIONS = ("iid", "shards", "writers")
# The app trains on embedded 28x28 digits, so only the models of 1x28x28 inputs (not cnn-cifar).
APP_MODELS = tuple(name for name, make in MODELS.items() if make().input_shape == (1, 28, 28))
# "raw": no codec, the update travels as a float array; the others as refsim's codec bytes.
CODECS = CODEC_NAMES

# The run config and its defaults, exactly the [tool.flwr.app.config] table of the shipped
# pyproject.toml (tests/test_flower_app.py keeps the two equal). TOML has no null, so two
# values stand in for refsim run's None: batch-size "inf" (B = infinity, one batch of the whole
# client) and train-limit / test-limit 0 (all examples). out-dir "" means runs/flower-<run id>.
RUN_CONFIG = {
    "dataset": "mnist", "model": "2nn", "partition": "iid", "shards-per-client": 2, "codec": "quant-huffman",
    "bits": 8, "downlink": "raw", "downlink-bits": 8, "fraction": 0.1, "epochs": 1,
    "batch-size": 10, "lr": 0.1, "lr-decay": 1.0, "rounds": 50, "weighting": "examples",
    "server-opt": "sgd", "server-lr": 1.0, "server-momentum": 0.0, "server-beta1": 0.9,
    "server-beta2": 0.99, "server-tau": 1e-9, "server-bias-correction": False,
    "eval-every": 1, "eval-holdout": 0.0, "fraction-evaluate": 1.0, "seed": 0, "dtype": "float32", "init": "keras",
    "nan-policy": "raise", "client-opt": "sgd", "client-momentum": 0.9, "client-beta1": 0.9,
    "client-beta2": 0.999, "client-eps": 1e-8, "client-opt-state": "reset",
    "train-limit": 0, "test-limit": 0, "out-dir": "", "resume": False, "trace": False,
    "trace-every": 1, "timeout": 600.0,
}


@dataclass(frozen=True)
class AppSettings:
    """Everything a process of the app derives from the run config."""
    config: FedAvgConfig
    dataset: str              # "mnist" or "femnist"
    model_name: str           # a key of MODELS
    partition: str            # "iid", "shards" or "writers"
    shards_per_client: int
    train_limit: int | None   # None: all training examples
    test_limit: int | None
    out_dir: str              # "" : the ServerApp chooses runs/flower-<run id>
    timeout: float            # seconds the ServerApp waits for nodes and for replies
    resume: bool              # continue from out_dir/checkpoint.npz when it exists
    trace: bool               # write out_dir/trace/ (refsim run --trace)
    trace_every: int          # weights in the trace every trace_every rounds (and at T)

    def model(self) -> Model:
        return MODELS[self.model_name]()


def _get(run_config: Mapping, key: str):
    if key not in run_config:
        raise ValueError(f"run config: missing key {key!r} (the app's pyproject.toml defines "
                         f"every key; is this the refsim app?)")
    return run_config[key]


def _choice(run_config: Mapping, key: str, allowed) -> str:
    value = _get(run_config, key)
    if value not in allowed:
        raise ValueError(f"run config: {key} = {value!r} is not one of {', '.join(allowed)}")
    return value


def _int(run_config: Mapping, key: str, lo: int) -> int:
    value = _get(run_config, key)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"run config: {key} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _real(run_config: Mapping, key: str) -> float:
    value = _get(run_config, key)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"run config: {key} must be a number, got {value!r}")
    return float(value)


def _flag(run_config: Mapping, key: str) -> bool:
    value = _get(run_config, key)
    if not isinstance(value, bool):
        raise ValueError(f"run config: {key} must be true or false, got {value!r}")
    return value


def fedavg_config(run_config: Mapping) -> FedAvgConfig:
    """The FedAvgConfig of the run; the same values give ``refsim run`` the same config.

    >>> cfg = fedavg_config(RUN_CONFIG)
    >>> cfg.fraction, cfg.batch_size, cfg.codec.huffman, cfg.downlink is None
    (0.1, 10, True, True)
    >>> fedavg_config({**RUN_CONFIG, "batch-size": "inf"}).batch_size is None
    True
    """
    rc = run_config
    b = _get(rc, "batch-size")
    if b == "inf":
        batch_size = None
    else:
        batch_size = _int(rc, "batch-size", 1)
    bits, down_bits = _int(rc, "bits", 1), _int(rc, "downlink-bits", 1)
    try:
        server = ServerOptConfig(ServerOpt(_choice(rc, "server-opt", [o.value for o in ServerOpt])),
                                 _real(rc, "server-lr"), _real(rc, "server-momentum"),
                                 _real(rc, "server-beta1"), _real(rc, "server-beta2"),
                                 _real(rc, "server-tau"), _get(rc, "server-bias-correction"))
        client_opt = ClientOptConfig(
            ClientOpt(_choice(rc, "client-opt", [o.value for o in ClientOpt])),
            _real(rc, "client-momentum"), _real(rc, "client-beta1"), _real(rc, "client-beta2"),
            _real(rc, "client-eps"),
            ClientStatePolicy(_choice(rc, "client-opt-state",
                                      [p.value for p in ClientStatePolicy])))
        return FedAvgConfig(
            fraction=_real(rc, "fraction"), epochs=_int(rc, "epochs", 1), batch_size=batch_size,
            lr=_real(rc, "lr"), lr_decay=_real(rc, "lr-decay"), rounds=_int(rc, "rounds", 1),
            weighting=Weighting(_choice(rc, "weighting", [w.value for w in Weighting])),
            server=server, codec=codec_named(_choice(rc, "codec", CODECS), bits),
            downlink=codec_named(_choice(rc, "downlink", CODECS), down_bits),
            eval_every=_int(rc, "eval-every", 1), eval_holdout=_real(rc, "eval-holdout"),
            fraction_evaluate=_real(rc, "fraction-evaluate"),
            seed=_int(rc, "seed", 0), dtype=DType(_choice(rc, "dtype", [d.value for d in DType])),
            init=InitScheme(_choice(rc, "init", [i.value for i in InitScheme])),
            nan_policy=NanPolicy(_choice(rc, "nan-policy", [n.value for n in NanPolicy])),
            client_opt=client_opt)
    except (TypeError, ValueError) as e:
        if str(e).startswith("run config:"):
            raise
        raise ValueError(f"run config: {e}") from None


def app_settings(run_config: Mapping) -> AppSettings:
    """Check the whole run config and return its :class:`AppSettings` (ValueError naming the
    key otherwise; unknown keys are errors too, so a misspelt override cannot pass unseen).

    >>> s = app_settings({**RUN_CONFIG, "model": "logistic", "train-limit": 3000})
    >>> s.model().name, s.train_limit, s.test_limit
    ('logistic', 3000, None)
    """
    unknown = sorted(set(run_config) - set(RUN_CONFIG))
    if unknown:
        raise ValueError(f"run config: unknown keys {unknown} (allowed: {', '.join(RUN_CONFIG)})")
    train_limit, test_limit = _int(run_config, "train-limit", 0), _int(run_config, "test-limit", 0)
    out_dir = _get(run_config, "out-dir")
    if not isinstance(out_dir, str):
        raise ValueError(f"run config: out-dir must be a string, got {out_dir!r}")
    timeout = _real(run_config, "timeout")
    if not timeout > 0:
        raise ValueError(f"run config: timeout must be > 0 seconds, got {timeout!r}")
    dataset = _choice(run_config, "dataset", DATASETS)
    partition = _choice(run_config, "partition", PARTITIONS)
    if dataset == "femnist" and partition != "writers":
        raise ValueError(f"run config: dataset = 'femnist' is split by writer: partition must be "
                         f"'writers', got {partition!r}")
    config = fedavg_config(run_config)
    if partition == "writers" and dataset == "femnist" and config.eval_holdout > 0:
        raise ValueError("run config: FEMNIST by writer is evaluated on each writer's own test "
                         "set: eval-holdout must be 0")
    return AppSettings(config, dataset, _choice(run_config, "model", APP_MODELS), partition,
                       _int(run_config, "shards-per-client", 1), train_limit or None,
                       test_limit or None, out_dir, timeout, _flag(run_config, "resume"),
                       _flag(run_config, "trace"), _int(run_config, "trace-every", 1))


def node_client(node_config: Mapping) -> tuple[int, int]:
    """(k, K) of a SuperNode: its refsim client id and the number of clients.

    >>> node_client({"partition-id": 2, "num-partitions": 3})
    (2, 3)
    >>> node_client({"partition-id": 3, "num-partitions": 3})
    Traceback (most recent call last):
    ...
    ValueError: node config: partition-id = 3 is out of range [0, 3) (num-partitions = 3)
    """
    hint = "start the SuperNode with --node-config 'partition-id=<k> num-partitions=<K>'"
    values = []
    for key in ("partition-id", "num-partitions"):
        if key not in node_config:
            raise ValueError(f"node config: missing {key!r} ({hint})")
        v = node_config[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"node config: {key} must be an integer, got {v!r} ({hint})")
        values.append(int(v))
    k, num = values
    if num < 1:
        raise ValueError(f"node config: num-partitions must be >= 1, got {num}")
    if not 0 <= k < num:
        raise ValueError(f"node config: partition-id = {k} is out of range [0, {num}) "
                         f"(num-partitions = {num})")
    return k, num


@functools.lru_cache(maxsize=2)
def _data(dataset: str, dtype: str, train_limit: int | None, test_limit: int | None
          ) -> tuple[FedData, np.ndarray | None, np.ndarray | None]:
    """(data, writer of each training example, of each test example), read-only: what
    ``refsim run --dataset ... --train-limit/--test-limit`` trains on (``make_data``)."""
    images = images_named(dataset)
    data = from_images(images, np.dtype(dtype), train_limit, test_limit)
    writers = [None if g is None else g[:limit] for g, limit in
               ((images.groups_train, train_limit), (images.groups_test, test_limit))]
    for a in (*data, *(g for g in writers if g is not None)):
        a.flags.writeable = False
    return data, writers[0], writers[1]


def load_data(s: AppSettings) -> FedData:
    """The dataset as ``refsim run --dataset/--train-limit/--test-limit`` uses it (read-only,
    kept by the process: see the module docstring)."""
    return _data(s.dataset, s.config.dtype.value, s.train_limit, s.test_limit)[0]


@functools.lru_cache(maxsize=2)
def _partition(s: AppSettings, num: int) -> tuple[list, list, list | None]:
    """(train, held-out, own test indices or None) of every client, as ``refsim run``."""
    data, writers_train, writers_test = _data(s.dataset, s.config.dtype.value, s.train_limit,
                                              s.test_limit)
    parts = partition_named(s.partition, data.y_train, num, s.config.seed, s.shards_per_client,
                            writers_train)
    if len(parts) != num:
        raise ValueError(f"num-partitions = {num}, but the {s.partition} partition of "
                         f"{s.dataset} (train-limit {s.train_limit or 0}) has {len(parts)} "
                         f"clients: start {len(parts)} SuperNodes")
    train, held = holdout_split(parts, s.config.eval_holdout, s.config.seed)
    tests = writer_test_sets(s.partition, writers_train, writers_test)
    for a in (*train, *held, *(tests or ())):
        a.flags.writeable = False
    return train, held, tests


def client_indices(s: AppSettings, num_clients: int, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices) of client k of K, as ``run_fedavg`` computes them:
    the partition of ``refsim run`` (``make_rng(seed, Purpose.PARTITION)``, or by writer), then
    ``holdout_split(partition, eval_holdout, seed)``, of ``load_data(s).y_train`` (computed
    once per process)."""
    train, held, _ = _partition(s, num_clients)
    return train[k], held[k]


def client_test_indices(s: AppSettings, num_clients: int, k: int) -> np.ndarray | None:
    """Client k's own test examples (indices into ``load_data(s).x_test``) where the dataset
    has per-writer test sets (FEMNIST by writer, as ``refsim run``'s ``eval_partition``);
    None otherwise."""
    tests = _partition(s, num_clients)[2]
    return None if tests is None else tests[k]


def has_client_test_sets(s: AppSettings) -> bool:
    """Whether the clients are evaluated on their own test sets (FEMNIST by writer): the
    federated evaluation then runs on them at the evaluation cadence, as in ``refsim run``."""
    _, writers_train, writers_test = _data(s.dataset, s.config.dtype.value, s.train_limit,
                                           s.test_limit)
    return writer_test_sets(s.partition, writers_train, writers_test) is not None


def train_partition(s: AppSettings, num_clients: int) -> list[np.ndarray]:
    """The training index arrays of all K clients (client k's is ``client_indices(...)[0]``):
    what the ServerApp writes to ``trace/init.npz`` and orders the trace's batches by, as
    ``run_fedavg`` does after ``holdout_split``. Only the trace needs it; no data travels."""
    return list(_partition(s, num_clients)[0])


def server_data(s: AppSettings) -> FedData:
    """What the ServerApp holds: the test set, and no training example ((0, 1, 28, 28))."""
    data = load_data(s)
    return FedData(data.x_train[:0], data.y_train[:0], data.x_test, data.y_test)
