"""The settings of ``refsim run``: defaults, TOML files, flags, their checks, and the objects
they build (``FedAvgConfig``, the partition).

Precedence: defaults < ``--config`` TOML file < explicit flags. Every key of ``RUN_DEFAULTS`` is
both a flag (``batch_size`` -> ``--batch-size``) and a TOML key. A bad value raises
:class:`UsageError` naming the flag and the allowed range.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from importlib import resources

import numpy as np

from refsim.cli._common import UsageError, flag
from refsim.cli.run_tff import (TFF_CODEC, TFF_RUN_DEFAULTS, add_tff_arguments,
                                     aggregator_config, check_tff_settings, server_config)
from refsim.fedavg import (DType, FedAvgConfig, FedData, InitScheme, NanPolicy, ServerOpt,
                           Weighting, from_images)
from refsim.fedavg.client_opt import ClientOpt, ClientOptConfig, ClientStatePolicy
from refsim.fedavg.config import check_int
from refsim.fedavg.named import (CODEC_NAMES, DATASET_NAMES, MODELS, PARTITION_NAMES,
                                 codec_named, images_named, partition_named,
                                 writer_test_sets)

__all__ = ["RUN_DEFAULTS", "MODELS", "settings", "grid", "make_config", "make_partition",
           "make_data", "load_images", "eval_partition", "batch_label", "default_out",
           "add_arguments"]

DATASETS = DATASET_NAMES
# The model input each dataset gives (C, H, W).
DATASET_INPUT = {"mnist": (1, 28, 28), "femnist": (1, 28, 28), "cifar10": (3, 32, 32)}
PARTITIONS = PARTITION_NAMES
CODECS = tuple(c for c in CODEC_NAMES if c != "raw") + (TFF_CODEC,)  # uplink: refsim's format
DOWNLINKS = CODEC_NAMES

# The defaults of ``refsim run`` (the comparison); every key is also a flag and a TOML key.
RUN_DEFAULTS = {
    "model": "2nn", "partition": ["iid", "shards"], "codec": ["float", "quant-huffman"],
    "clients": 100, "shards_per_client": 2, "fraction": 0.1, "epochs": 1, "batch_size": 10,
    "lr": 0.1, "lr_decay": 1.0, "rounds": 50, "weighting": "examples", "server_opt": "sgd",
    "server_lr": 1.0, "server_momentum": 0.0, "server_beta1": None, "server_beta2": None,
    "server_tau": None, "server_bias_correction": False, "bits": 8, "downlink": "raw",
    "downlink_bits": 8, "eval_every": 1, "eval_holdout": 0.0, "fraction_evaluate": 1.0,
    "seed": 0, "dataset": "mnist", "data_dir": None, "normalize": None,
    "backend": "numpy", "client_stack": 1, "client_threads": 1, "dtype": "float32",
    "init": "keras", "nan_policy": "raise", "train_limit": None,
    "client_opt": "sgd", "client_momentum": 0.9, "client_beta1": 0.9, "client_beta2": 0.999,
    "client_eps": 1e-8, "client_opt_state": "reset",
    "test_limit": None, "targets": [0.95, 0.97], "out": None, "trace": False,
    "trace_every": 1, "resume": False, "quiet": False, "plot": "auto",
    "engine": "local", "client_cpus": 1, "ray_address": None,  # run_flower_sim.py
    **TFF_RUN_DEFAULTS,
}
# The flag that sets each FedAvgConfig field (validation errors name the flag).
FIELD_FLAGS = {"fraction": "--fraction", "epochs": "--epochs", "batch_size": "--batch-size",
               "lr": "--lr", "lr_decay": "--lr-decay", "rounds": "--rounds",
               "eval_every": "--eval-every", "eval_holdout": "--eval-holdout",
               "fraction_evaluate": "--fraction-evaluate", "seed": "--seed",
               "backend": "--backend", "client_stack": "--client-stack",
               "client_threads": "--client-threads",
               "server.lr": "--server-lr",
               "server.momentum": "--server-momentum", "server.beta1": "--server-beta1",
               "server.beta2": "--server-beta2", "server.tau": "--server-tau",
               "server.bias_correction": "--server-bias-correction", "bits": "--bits",
               "server.semantics": "--server-semantics",
               "server.initial_preconditioner": "--server-initial-preconditioner",
               "client_opt.momentum": "--client-momentum", "client_opt.beta1": "--client-beta1",
               "client_opt.beta2": "--client-beta2", "client_opt.eps": "--client-eps",
               "client_opt.state": "--client-opt-state"}
GRID_KEYS = ("epochs", "batch_size")  # may be lists: one run per (E, B) pair


# -- refsim run: settings ----------------------------------------------------------------------

def _batch_size(text):
    """B as a flag or TOML value: a positive integer, or "inf" / "none" (whole client)."""
    if isinstance(text, str) and text.lower() in ("inf", "none"):
        return None
    try:
        if not isinstance(text, (str, int)) or isinstance(text, bool):
            raise TypeError  # e.g. 1.5 in a TOML file, which int() would truncate
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'inf', got {text!r}")


def _load_toml(path: str) -> dict:
    """Settings from a TOML file, or from a shipped config named without ``.toml``."""
    if not os.path.exists(path) and not path.endswith(".toml"):
        shipped = resources.files("refsim.fedavg") / "configs" / f"{path}.toml"
        if shipped.is_file():
            return tomllib.loads(shipped.read_text())
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if not raw:
            raise UsageError(f"--config: {path} is empty (0 bytes); a file of comments only "
                             f"means no settings")
        table = tomllib.loads(raw.decode("utf-8"))
    except OSError as e:
        raise UsageError(f"--config: cannot read {path!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"--config: {path} is not a TOML file (not UTF-8 text: {e.reason} at "
                         f"byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--config: {path}: invalid TOML: {e}") from None
    for key in table:
        if key not in RUN_DEFAULTS or key == "config":
            raise UsageError(f"--config: {path}: unknown key {key!r} (allowed: "
                             f"{', '.join(sorted(RUN_DEFAULTS))})")
    return table


def _check_choice(key, value, allowed):
    if value not in allowed:
        raise UsageError(f"{flag(key)}: {value!r} is not one of {', '.join(allowed)}")


def _check_int(key, value, lo, hi=None):
    try:
        check_int(key, value, lo, hi)
    except (TypeError, ValueError) as e:  # the config's own check, reported against the flag
        raise UsageError(f"{flag(key)}: {e}") from None


def settings(args: argparse.Namespace) -> dict:
    """defaults < TOML file < explicit flags, then every value checked (UsageError)."""
    explicit = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config")}
    s = dict(RUN_DEFAULTS)
    if getattr(args, "config", None):
        s.update(_load_toml(args.config))
    s.update(explicit)
    for key in GRID_KEYS:  # E and B: one value or a list (the paper's E/B grid)
        values = s[key] if isinstance(s[key], list) else [s[key]]
        if not values:
            raise UsageError(f"{flag(key)}: give at least one value")
        s[key] = values
    try:
        s["batch_size"] = [b if b is None or (isinstance(b, int) and not isinstance(b, bool))
                           else _batch_size(b) for b in s["batch_size"]]
    except argparse.ArgumentTypeError as e:
        raise UsageError(f"--batch-size: {e}") from None
    _check_choice("model", s["model"], tuple(MODELS))
    _check_choice("dataset", s["dataset"], DATASETS)
    _check_choice("downlink", s["downlink"], DOWNLINKS)
    for key, allowed in (("partition", PARTITIONS), ("codec", CODECS)):
        if isinstance(s[key], str):
            s[key] = [s[key]]
        if not isinstance(s[key], list):
            raise UsageError(f"{flag(key)}: expected a name or a list of names, got {s[key]!r}")
        if not s[key]:
            raise UsageError(f"{flag(key)}: give at least one of {', '.join(allowed)}")
        for v in s[key]:
            _check_choice(key, v, allowed)
    for key, enum in (("weighting", Weighting), ("server_opt", ServerOpt), ("dtype", DType),
                      ("init", InitScheme), ("nan_policy", NanPolicy), ("client_opt", ClientOpt),
                      ("client_opt_state", ClientStatePolicy)):
        _check_choice(key, s[key], tuple(m.value for m in enum))
    _check_choice("plot", s["plot"], ("auto", "yes", "no"))
    for key in ("trace", "resume", "quiet", "server_bias_correction"):  # TOML may give any type
        if not isinstance(s[key], bool):
            raise UsageError(f"{flag(key)}: expected true or false, got {s[key]!r}")
    if s["out"] is not None and not isinstance(s["out"], str):
        raise UsageError(f"--out: expected a directory path, got {s['out']!r}")
    check_tff_settings(s)
    _check_int("clients", s["clients"], 1)
    _check_int("shards_per_client", s["shards_per_client"], 1)
    _check_int("bits", s["bits"], 1, 16)
    _check_int("downlink_bits", s["downlink_bits"], 1, 16)
    if s["dataset"] == "femnist" and s["partition"] != ["writers"]:
        raise UsageError("--partition: FEMNIST is split by writer: use --partition writers")
    _check_data_source(s)
    _check_int("trace_every", s["trace_every"], 1)
    for key in ("train_limit", "test_limit"):
        if s[key] is not None:
            _check_int(key, s[key], 1)
    if not isinstance(s["targets"], list) or not all(
            isinstance(t, (int, float)) and 0 < t <= 1 for t in s["targets"]):
        raise UsageError(f"--targets: accuracies in (0, 1], got {s['targets']!r}")
    return s


def _check_data_source(s: dict) -> None:
    """--data-dir (a dataset refsim does not ship), --normalize, and a model that fits."""
    if s["dataset"] == "cifar10":
        if not isinstance(s["data_dir"], str):
            raise UsageError("--data-dir: CIFAR-10 is not shipped: give the folder "
                             "cifar-10-batches-py or cifar-10-python.tar.gz (README.md)")
        if "writers" in s["partition"]:
            raise UsageError("--partition: CIFAR-10 has no writers: use iid or shards")
    elif s["data_dir"] is not None:
        raise UsageError(f"--data-dir: {s['dataset']} is embedded; --data-dir is for cifar10")
    norm = s["normalize"]
    if norm is not None and not (
            isinstance(norm, list) and len(norm) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in norm)
            and norm[1] > 0):
        raise UsageError(f"--normalize: expected MEAN STD with STD > 0, got {norm!r}")
    shape = MODELS[s["model"]]().input_shape
    if shape != DATASET_INPUT[s["dataset"]]:
        raise UsageError(f"--model: {s['model']} takes inputs {shape}, {s['dataset']} gives "
                         f"{DATASET_INPUT[s['dataset']]}")


def grid(s: dict) -> list[tuple[int, int | None]]:
    """The (E, B) pairs of the settings, E-major, in the order given."""
    return [(e, b) for e in s["epochs"] for b in s["batch_size"]]


def make_config(s: dict, codec_kind: str, epochs: int, batch_size: int | None) -> FedAvgConfig:
    """FedAvgConfig of one run (uplink codec, E and B chosen from the settings' lists); a config
    error becomes a UsageError naming the flag."""
    try:
        codec = None if codec_kind == TFF_CODEC else codec_named(codec_kind, s["bits"])
        server = server_config(s)
        return FedAvgConfig(
            fraction=s["fraction"], epochs=epochs, batch_size=batch_size, lr=s["lr"],
            lr_decay=s["lr_decay"], rounds=s["rounds"], weighting=Weighting(s["weighting"]),
            server=server, codec=codec, downlink=codec_named(s["downlink"], s["downlink_bits"]),
            eval_every=s["eval_every"], eval_holdout=s["eval_holdout"],
            fraction_evaluate=s["fraction_evaluate"], seed=s["seed"],
            dtype=DType(s["dtype"]), init=InitScheme(s["init"]),
            nan_policy=NanPolicy(s["nan_policy"]), backend=s["backend"],
            client_stack=s["client_stack"], client_threads=s["client_threads"],
            aggregator=aggregator_config(s, codec_kind),
            client_opt=ClientOptConfig(ClientOpt(s["client_opt"]), s["client_momentum"],
                                       s["client_beta1"], s["client_beta2"], s["client_eps"],
                                       ClientStatePolicy(s["client_opt_state"])))
    except (ValueError, TypeError) as e:
        field = str(e).split(" ")[0]
        raise UsageError(f"{FIELD_FLAGS.get(field, field)}: {e}") from None


def make_partition(kind: str, s: dict, labels: np.ndarray, writers: np.ndarray | None
                   ) -> list[np.ndarray]:
    """K index arrays: ``refsim.fedavg.named.partition_named`` (``writers``: one client per
    writer, K = the number of writers, ``--clients`` does not apply)."""
    try:
        return partition_named(kind, labels, s["clients"], s["seed"], s["shards_per_client"],
                               writers)
    except ValueError as e:
        raise UsageError(f"--clients/--shards-per-client/--train-limit: {e}") from None


def load_images(dataset: str, data_dir: str | None = None):
    """The uint8 images of ``dataset`` as ``refsim run`` trains on them
    (``refsim.fedavg.named.images_named``; ``make_data``); cifar10 is read from ``data_dir``
    (``load_cifar10``: restricted unpickler, published MD5 sums), and a damaged or missing file
    is a UsageError naming it."""
    if dataset not in DATASETS:
        raise UsageError(f"--dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    try:
        return images_named(dataset, data_dir)
    except ValueError as e:
        raise UsageError(f"--data-dir: {e}") from None


def make_data(s: dict) -> tuple[FedData, np.ndarray | None, np.ndarray | None]:
    """(data, writer of each training example, writer of each test example).

    mnist: the embedded MNIST with its QMNIST writers (train and test writers are disjoint).
    femnist: the embedded FEMNIST subset, digits only (the models have 10 outputs), inverted
    to MNIST's white-on-black (255 - x); train and test share writers.
    cifar10: the batches in ``--data-dir``, no writers. ``--normalize MEAN STD`` standardises
    x / 255 per channel (the Flower CIFAR-10 tutorial: 0.5 0.5).
    ``--train-limit`` / ``--test-limit`` keep the first examples (and their writers).
    """
    images = load_images(s["dataset"], s["data_dir"])
    norm = None if s["normalize"] is None else tuple(float(v) for v in s["normalize"])
    data = from_images(images, DType(s["dtype"]).np, s["train_limit"], s["test_limit"], norm)
    writers_train, writers_test = images.groups_train, images.groups_test
    if writers_train is not None:
        writers_train = writers_train[:s["train_limit"]]
        writers_test = writers_test[:s["test_limit"]]
    return data, writers_train, writers_test


def eval_partition(kind: str, writers_train, writers_test) -> list[np.ndarray] | None:
    """Per-client test sets where the dataset has them (FEMNIST by writer):
    ``refsim.fedavg.named.writer_test_sets``; None otherwise."""
    return writer_test_sets(kind, writers_train, writers_test)


def _label(values, fmt=str) -> str:
    return "-".join(fmt(v) for v in values)


def batch_label(b: int | None) -> str:
    """B as it appears in names: the integer, or "inf"."""
    return "inf" if b is None else str(b)


def default_out(s: dict) -> str:
    """runs/<dataset>-<model>-K..-C..-E..-B..-lr..-seed.. (lists joined by "-")."""
    e, b = _label(s["epochs"]), _label(s["batch_size"], batch_label)
    return os.path.join("runs", f"{s['dataset']}-{s['model']}-K{s['clients']}-C{s['fraction']}-"
                                f"E{e}-B{b}-lr{s['lr']}-seed{s['seed']}")


def add_arguments(run: argparse.ArgumentParser) -> None:
    """The flags of ``refsim run`` (all default to absent, see ``settings``)."""
    S = argparse.SUPPRESS  # absent unless given, so that --config values are not overridden
    d = RUN_DEFAULTS
    add = run.add_argument
    add("--config", default=None, help="TOML file of settings (keys = flag names with _), or a "
        "shipped config: mnist_2nn_iid, mnist_2nn_noniid, mnist_cnn_iid, mnist_cnn_noniid, "
        "tff_image_classification, tff_compression, flower_cifar10 (needs --data-dir)")
    add("--model", default=S, choices=tuple(MODELS), help=f"default {d['model']}")
    add("--partition", default=S, nargs="+", choices=PARTITIONS,
        help="iid, shards (pathological non-IID) and/or writers (one client per writer); "
             "default iid shards")
    add("--codec", default=S, nargs="+", choices=CODECS,
        help="uplink: float (raw), quant (b-bit stochastic, bit-packed), quant-huffman, "
             "tff-compression (TFF's compression aggregator); default float quant-huffman")
    add("--clients", default=S, type=int, help="K >= 1 (default 100)")
    add("--shards-per-client", default=S, type=int, help="shards partition (default 2)")
    add("--fraction", default=S, type=float, help="C in [0, 1] (default 0.1)")
    add("--epochs", default=S, type=int, nargs="+",
        help="E >= 1 (default 1); several values run a grid with every B")
    add("--batch-size", default=S, type=_batch_size, nargs="+",
        help="B >= 1 or 'inf' (default 10); several values run a grid with every E")
    add("--lr", default=S, type=float, help="client learning rate > 0 (default 0.1)")
    add("--lr-decay", default=S, type=float, help="per-round factor in (0, 1] (default 1)")
    add("--rounds", default=S, type=int, help=f"T >= 1 (default {d['rounds']})")
    add("--weighting", default=S, choices=[w.value for w in Weighting])
    add("--server-opt", default=S, choices=[o.value for o in ServerOpt])
    add("--server-lr", default=S, type=float, help="> 0 (default 1.0: FedAvg)")
    add("--server-momentum", default=S, type=float, help="in [0, 1) (momentum only)")
    add("--server-beta1", default=S, type=float,
        help="in [0, 1) (adam/yogi/adagrad; flower 0.9, tff 0.9, tff adagrad 0)")
    add("--server-beta2", default=S, type=float,
        help="in [0, 1) (adam/yogi; flower 0.99, tff 0.999)")
    add("--server-tau", default=S, type=float,
        help="> 0, tff's epsilon (flower 1e-9; tff adam/adagrad 1e-7, yogi 1e-3)")
    add("--server-bias-correction", default=S, action="store_true",
        help="adam: Flower FedAdam's bias-corrected server learning rate")
    add_tff_arguments(add, S)
    add("--client-opt", default=S, choices=[o.value for o in ClientOpt],
        help="the clients' local optimizer, torch.optim's rules: sgd (default, the paper), "
             "momentum, adam")
    add("--client-momentum", default=S, type=float, help="momentum: mu in (0, 1) (default 0.9)")
    add("--client-beta1", default=S, type=float, help="adam: in [0, 1) (default 0.9)")
    add("--client-beta2", default=S, type=float, help="adam: in [0, 1) (default 0.999)")
    add("--client-eps", default=S, type=float, help="adam: > 0 (default 1e-8)")
    add("--client-opt-state", default=S, choices=[p.value for p in ClientStatePolicy],
        help="reset: a fresh optimizer state every round (default, Flower's tutorial); keep: "
             "each client's state carried across rounds (and in checkpoints)")
    add("--bits", default=S, type=int, help="uplink quantizer bits in [1, 16] (default 8)")
    add("--downlink", default=S, choices=DOWNLINKS,
        help="broadcast of the weights: raw (default), float, quant, quant-huffman")
    add("--downlink-bits", default=S, type=int, help="downlink quantizer bits (default 8)")
    add("--dataset", default=S, choices=DATASETS,
        help="mnist (default), femnist (digits only, one client per writer, federated "
             "evaluation on each writer's test examples) or cifar10 (needs --data-dir)")
    add("--data-dir", default=S,
        help="cifar10: the cifar-10-batches-py folder or cifar-10-python.tar.gz")
    add("--normalize", default=S, type=float, nargs=2, metavar=("MEAN", "STD"),
        help="(x / 255 - MEAN) / STD on every channel (default none)")
    add("--backend", default=S, choices=("numpy", "cupy"), help="array backend (default numpy)")
    add("--client-stack", default=S, type=int,
        help="train up to N equal-sized clients side by side (default 1: one at a time; "
             "faster on a GPU, same results to float rounding)")
    add("--client-threads", default=S, type=int,
        help="train up to N clients at once on CPU threads (default 1); the same bits. Run "
             "with OPENBLAS_NUM_THREADS=1 and N = the number of cores")
    add("--eval-every", default=S, type=int, help="test-set evaluation cadence (default 1)")
    add("--eval-holdout", default=S, type=float,
        help="fraction in [0, 1) of each client held out for federated evaluation (default 0)")
    add("--fraction-evaluate", default=S, type=float,
        help="share in (0, 1] of the clients in each federated evaluation, drawn by refsim's "
             "rule (Flower's fraction_evaluate; default 1: all)")
    add("--seed", default=S, type=int, help="in [0, 2**32) (default 0)")
    add("--dtype", default=S, choices=[t.value for t in DType])
    add("--init", default=S, choices=[t.value for t in InitScheme])
    add("--nan-policy", default=S, choices=[t.value for t in NanPolicy])
    add("--train-limit", default=S, type=int, help="use the first N training examples")
    add("--test-limit", default=S, type=int, help="use the first M test examples")
    add("--targets", default=S, type=float, nargs="+", help="accuracy targets (0.95 0.97)")
    add("--out", default=S, help="run directory (default runs/<settings>)")
    add("--trace", default=S, action="store_true", help="write trace/ for replay")
    add("--trace-every", default=S, type=int, help="weights in the trace every k rounds")
    add("--resume", default=S, action="store_true", help="continue from checkpoint.npz")
    add("--quiet", default=S, action="store_true", help="no per-round lines")
    add("--plot", default=S, choices=("auto", "yes", "no"),
        help="PNG plots (needs pip install 'refsim[plot]'); auto: when available")
    add("--engine", default=S, choices=("local", "flower-sim"),
        help="local (default: in process) or flower-sim (Flower's Simulation Engine, one "
             "virtual SuperNode per client; pip install 'refsim[flower]')")
    add("--client-cpus", default=S, type=float,
        help="flower-sim: CPUs per client (Ray client_resources; default 1)")
    add("--ray-address", default=S,
        help="flower-sim: join this Ray cluster (host:port) instead of starting Ray")
