"""The ``refsim`` command line. The only module that prints, reads files it is not handed by
path, and turns errors into exit codes.

``refsim info`` prints the version, the array backends available on this machine and the
reference models with their parameter counts.

``refsim run`` runs FederatedAveraging (McMahan et al., AISTATS 2017, arXiv:1602.05629,
Algorithm 1; ``refsim.fedavg``) offline on the embedded MNIST. With no arguments it runs the
comparison of ``docs/fedavg.md``: the paper's 2NN, K = 100, C = 0.1, E = 1, B = 10, IID and
pathological non-IID, each with float32 updates and with 8-bit stochastic quantization +
Huffman, and prints a table. Every setting is a flag and can come from a TOML file
(``--config``; explicit flags win over the file, the file over the defaults).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tomllib
from importlib import resources

import numpy as np

import refsim
from refsim.backend import Purpose, available_backends, make_rng
from refsim.compress import Codec, QuantizerConfig
from refsim.data import load_mnist, partition
from refsim.fedavg import (DType, FedAvgConfig, InitScheme, NanPolicy, NonFiniteUpdateError,
                           ServerOpt, ServerOptConfig, Weighting, from_images, metrics_csv,
                           metrics_jsonl, rounds_to_targets, run_fedavg)
from refsim.fedavg.config import check_int
from refsim.nn import cnn_cifar, cnn_mnist, logistic, mlp_2nn

MODELS = {"2nn": mlp_2nn, "cnn": cnn_mnist, "logistic": logistic}
PARTITIONS = ("iid", "shards")
CODECS = ("float", "quant", "quant-huffman")

# The defaults of ``refsim run`` (the comparison); every key is also a flag and a TOML key.
RUN_DEFAULTS = {
    "model": "2nn", "partition": ["iid", "shards"], "codec": ["float", "quant-huffman"],
    "clients": 100, "shards_per_client": 2, "fraction": 0.1, "epochs": 1, "batch_size": 10,
    "lr": 0.1, "lr_decay": 1.0, "rounds": 50, "weighting": "examples", "server_opt": "sgd",
    "server_lr": 1.0, "server_momentum": 0.0, "server_beta1": 0.9, "server_beta2": 0.99,
    "server_tau": 1e-9, "server_bias_correction": False, "bits": 8, "eval_every": 1, "eval_holdout": 0.0, "seed": 0,
    "dtype": "float32", "init": "keras", "nan_policy": "raise", "train_limit": None,
    "test_limit": None, "targets": [0.95, 0.97], "out": None, "trace": False,
    "trace_every": 1, "resume": False, "quiet": False, "plot": "auto",
}
# The flag that sets each FedAvgConfig field (validation errors name the flag).
FIELD_FLAGS = {"fraction": "--fraction", "epochs": "--epochs", "batch_size": "--batch-size",
               "lr": "--lr", "lr_decay": "--lr-decay", "rounds": "--rounds",
               "eval_every": "--eval-every", "eval_holdout": "--eval-holdout", "seed": "--seed", "server.lr": "--server-lr",
               "server.momentum": "--server-momentum", "server.beta1": "--server-beta1",
               "server.beta2": "--server-beta2", "server.tau": "--server-tau",
               "server.bias_correction": "--server-bias-correction", "bits": "--bits"}


class UsageError(Exception):
    """A bad flag or config value: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would also print the usage)
        self.exit(2, f"{self.prog}: error: {message}\n")


# -- refsim info -------------------------------------------------------------------------------

def _info(args: argparse.Namespace) -> int:
    import numba
    import scipy

    print(f"refsim {refsim.__version__}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"numba {numba.__version__}")
    print(f"backends: {', '.join(available_backends())}")
    print("models:")
    for factory in (cnn_mnist, mlp_2nn, logistic, cnn_cifar):
        model = factory()
        shape = "x".join(map(str, model.input_shape))
        print(f"  {model.name:<10} input {shape:<8} {model.num_params:>10,} parameters")
    return 0


# -- refsim run: settings ----------------------------------------------------------------------

def _batch_size(text):
    """B as a flag or TOML value: a positive integer, or "inf" / "none" (whole client)."""
    if isinstance(text, str) and text.lower() in ("inf", "none"):
        return None
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'inf', got {text!r}")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _load_toml(path: str) -> dict:
    """Settings from a TOML file, or from a shipped config named without ``.toml``."""
    if not os.path.exists(path) and not path.endswith(".toml"):
        shipped = resources.files("refsim.fedavg") / "configs" / f"{path}.toml"
        if shipped.is_file():
            return tomllib.loads(shipped.read_text())
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"--config: cannot read {path!r}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--config: {path}: invalid TOML: {e}") from None
    for key in table:
        if key not in RUN_DEFAULTS or key == "config":
            raise UsageError(f"--config: {path}: unknown key {key!r} (allowed: "
                             f"{', '.join(sorted(RUN_DEFAULTS))})")
    return table


def _check_choice(key, value, allowed):
    if value not in allowed:
        raise UsageError(f"{_flag(key)}: {value!r} is not one of {', '.join(allowed)}")


def _check_int(key, value, lo, hi=None):
    try:
        check_int(key, value, lo, hi)
    except (TypeError, ValueError) as e:  # the config's own check, reported against the flag
        raise UsageError(f"{_flag(key)}: {e}") from None


def _settings(args: argparse.Namespace) -> dict:
    """defaults < TOML file < explicit flags, then every value checked (UsageError)."""
    explicit = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config")}
    s = dict(RUN_DEFAULTS)
    if getattr(args, "config", None):
        s.update(_load_toml(args.config))
    s.update(explicit)
    if not isinstance(s["batch_size"], (int, type(None))) or isinstance(s["batch_size"], bool):
        try:
            s["batch_size"] = _batch_size(s["batch_size"])
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"--batch-size: {e}") from None
    _check_choice("model", s["model"], tuple(MODELS))
    for key, allowed in (("partition", PARTITIONS), ("codec", CODECS)):
        if isinstance(s[key], str):
            s[key] = [s[key]]
        if not s[key]:
            raise UsageError(f"{_flag(key)}: give at least one of {', '.join(allowed)}")
        for v in s[key]:
            _check_choice(key, v, allowed)
    for key, enum in (("weighting", Weighting), ("server_opt", ServerOpt), ("dtype", DType),
                      ("init", InitScheme), ("nan_policy", NanPolicy)):
        _check_choice(key, s[key], tuple(m.value for m in enum))
    _check_choice("plot", s["plot"], ("auto", "yes", "no"))
    _check_int("clients", s["clients"], 1)
    _check_int("shards_per_client", s["shards_per_client"], 1)
    _check_int("bits", s["bits"], 1, 16)
    _check_int("trace_every", s["trace_every"], 1)
    for key in ("train_limit", "test_limit"):
        if s[key] is not None:
            _check_int(key, s[key], 1)
    if not isinstance(s["targets"], list) or not all(
            isinstance(t, (int, float)) and 0 < t <= 1 for t in s["targets"]):
        raise UsageError(f"--targets: accuracies in (0, 1], got {s['targets']!r}")
    return s


def _config(s: dict, codec_kind: str) -> FedAvgConfig:
    """FedAvgConfig from settings; a config error becomes a UsageError naming the flag."""
    try:
        codec = {
            "float": Codec(None),
            "quant": Codec(QuantizerConfig(s["bits"], stochastic=True)),
            "quant-huffman": Codec(QuantizerConfig(s["bits"], stochastic=True), huffman=True),
        }[codec_kind]
        server = ServerOptConfig(ServerOpt(s["server_opt"]), s["server_lr"], s["server_momentum"],
                                 s["server_beta1"], s["server_beta2"], s["server_tau"],
                                 s["server_bias_correction"])
        return FedAvgConfig(
            fraction=s["fraction"], epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"],
            lr_decay=s["lr_decay"], rounds=s["rounds"], weighting=Weighting(s["weighting"]),
            server=server, codec=codec, eval_every=s["eval_every"],
            eval_holdout=s["eval_holdout"], seed=s["seed"],
            dtype=DType(s["dtype"]), init=InitScheme(s["init"]),
            nan_policy=NanPolicy(s["nan_policy"]))
    except (ValueError, TypeError) as e:
        field = str(e).split(" ")[0]
        raise UsageError(f"{FIELD_FLAGS.get(field, field)}: {e}") from None


def _partition(kind: str, s: dict, labels: np.ndarray) -> list[np.ndarray]:
    rng = make_rng(s["seed"], Purpose.PARTITION)
    try:
        if kind == "iid":
            return partition.iid(labels, s["clients"], rng)
        return partition.shards(labels, s["clients"], s["shards_per_client"], rng)
    except ValueError as e:
        raise UsageError(f"--clients/--shards-per-client/--train-limit: {e}") from None


def _default_out(s: dict) -> str:
    b = "inf" if s["batch_size"] is None else s["batch_size"]
    return os.path.join("runs", f"mnist-{s['model']}-K{s['clients']}-C{s['fraction']}-"
                                f"E{s['epochs']}-B{b}-lr{s['lr']}-seed{s['seed']}")


# -- refsim run: the runs, the files and the table ---------------------------------------------

def _versions() -> dict:
    import numba
    import scipy
    return {"refsim": refsim.__version__, "python": sys.version.split()[0],
            "numpy": np.__version__, "scipy": scipy.__version__, "numba": numba.__version__,
            "platform": platform.platform()}


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def _table_row(name, history, num_params, targets) -> dict:
    rounds = history.rounds
    reports = sum(len(r.clients) - len(r.dropped) for r in rounds)
    up = rounds[-1].uplink_bits_cum
    ent = [r.uplink_entropy_bits for r in rounds]
    tested = [r.test_accuracy for r in rounds if r.test_accuracy is not None]
    return {"run": name, "rounds": len(rounds), "final_accuracy": tested[-1],
            "best_accuracy": max(tested), "rounds_to_target": rounds_to_targets(rounds, targets),
            "uplink_bits": up, "compression_ratio": 32 * num_params * reports / up,
            "bits_per_parameter": up / (num_params * reports),
            "entropy_bits_per_parameter": (None if ent[0] is None else
                                           sum(ent) / (num_params * reports))}


def format_table(rows: list[dict], targets) -> str:
    """The comparison table (plain text, deterministic)."""
    tcols = [f"rounds>={t:g}" for t in targets]
    head = (f"{'run':<22}{'rounds':>7}{'final acc':>10}{'best acc':>10}"
            + "".join(f"{c:>14}" for c in tcols)
            + f"{'uplink Mbit':>13}{'ratio':>7}{'bits/param':>11}{'entropy':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        hit = ["-" if r["rounds_to_target"][str(t)] is None else str(r["rounds_to_target"][str(t)])
               for t in targets]
        ent = r["entropy_bits_per_parameter"]
        lines.append(f"{r['run']:<22}{r['rounds']:>7}{r['final_accuracy']:>10.4f}"
                     f"{r['best_accuracy']:>10.4f}" + "".join(f"{h:>14}" for h in hit)
                     + f"{r['uplink_bits'] / 1e6:>13.1f}{r['compression_ratio']:>7.2f}"
                     f"{r['bits_per_parameter']:>11.3f}"
                     + (f"{ent:>9.3f}" if ent is not None else f"{'-':>9}"))
    return "\n".join(lines) + "\n"


def _plots(out: str, runs: list, mode: str) -> str | None:
    """PNG plots (matplotlib, the ``plot`` extra). Returns a note when skipped."""
    if mode == "no":
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if mode == "yes":
            raise ImportError("plots need matplotlib: pip install 'refsim[plot]'") from None
        return "plots skipped: matplotlib is not installed (pip install 'refsim[plot]')"
    panels = [("accuracy.png", "round", "test accuracy", "round", "test_accuracy"),
              ("loss.png", "round", "test loss", "round", "test_loss"),
              ("accuracy_vs_bits.png", "cumulative uplink bits", "test accuracy",
               "uplink_bits_cum", "test_accuracy")]
    for fname, xlabel, ylabel, xkey, ykey in panels:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, h in runs:
            pts = [(getattr(r, xkey), getattr(r, ykey)) for r in h.rounds
                   if getattr(r, ykey) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out, fname), dpi=100)
        plt.close(fig)
    return None


def _run(args: argparse.Namespace) -> int:
    try:
        s = _settings(args)
        configs = {c: _config(s, c) for c in s["codec"]}
        images = load_mnist()
        data = from_images(images, DType(s["dtype"]).np, s["train_limit"], s["test_limit"])
        parts = {p: _partition(p, s, data.y_train) for p in s["partition"]}
    except UsageError as e:
        print(f"refsim run: error: {e}", file=sys.stderr)
        return 2
    model = MODELS[s["model"]]()
    out = s["out"] or _default_out(s)
    os.makedirs(out, exist_ok=True)
    runs, rows, walls = [], [], {}
    for p in s["partition"]:
        for c in s["codec"]:
            name = f"{p}-{c}"
            run_dir = os.path.join(out, name)
            cfg = configs[c]

            def show(row, name=name, total=cfg.rounds):
                if s["quiet"]:
                    return
                acc = "" if row.test_accuracy is None else f"  test acc {row.test_accuracy:.4f}"
                print(f"[{name}] round {row.round}/{total}  train loss {row.train_loss:.4f}"
                      f"{acc}  uplink {row.uplink_bits_cum / 1e6:.1f} Mbit", flush=True)

            start = time.perf_counter()
            try:
                h = run_fedavg(cfg, model, data, parts[p], run_dir=run_dir, resume=s["resume"],
                               trace=s["trace"], trace_every=s["trace_every"], on_round=show)
            except NonFiniteUpdateError as e:
                print(f"refsim run: error: {name}: {e}", file=sys.stderr)
                return 1
            except ValueError as e:  # e.g. --resume with a checkpoint of another run
                print(f"refsim run: error: {name}: {e}", file=sys.stderr)
                return 2
            walls[name] = time.perf_counter() - start
            row = _table_row(name, h, model.num_params, s["targets"])
            rows.append(row)
            runs.append((name, h))
            _write_text(os.path.join(run_dir, "metrics.csv"), metrics_csv(h.rounds))
            _write_text(os.path.join(run_dir, "metrics.jsonl"), metrics_jsonl(h.rounds))
            np.save(os.path.join(run_dir, "final_weights.npy"), h.params)
            summary = {"run": name, "model": model.name, "partition": p, "codec": c,
                       "config": cfg.to_dict(), "seed": cfg.seed, "num_clients": s["clients"],
                       "settings": {k: v for k, v in s.items() if k != "resume"},
                       "versions": _versions(), **row,
                       "total_broadcast_bits": h.rounds[-1].broadcast_bits_cum,
                       "wall_time_s": walls[name]}
            _write_text(os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=1) + "\n")
    table = format_table(rows, s["targets"])
    _write_text(os.path.join(out, "comparison.txt"), table)
    _write_text(os.path.join(out, "comparison.json"), json.dumps(rows, indent=1) + "\n")
    try:
        note = _plots(out, runs, s["plot"])
    except ImportError as e:
        print(f"refsim run: error: --plot yes: {e}", file=sys.stderr)
        return 2
    print()
    print(table, end="")
    print(f"wall time: {sum(walls.values()):.1f} s ("
          + ", ".join(f"{k} {v:.1f} s" for k, v in walls.items()) + f"); run directory: {out}")
    if note:
        print(note)
    return 0


def _add_run_arguments(run: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS  # absent unless given, so that --config values are not overridden
    d = RUN_DEFAULTS
    add = run.add_argument
    add("--config", default=None, help="TOML file of settings (keys = flag names with _), or a "
        "shipped config: mnist_2nn_iid, mnist_2nn_noniid, mnist_cnn_iid, mnist_cnn_noniid")
    add("--model", default=S, choices=tuple(MODELS), help=f"default {d['model']}")
    add("--partition", default=S, nargs="+", choices=PARTITIONS,
        help="iid and/or shards (pathological non-IID); default both")
    add("--codec", default=S, nargs="+", choices=CODECS,
        help="uplink: float (raw), quant (b-bit stochastic, bit-packed), quant-huffman; "
             "default float quant-huffman")
    add("--clients", default=S, type=int, help="K >= 1 (default 100)")
    add("--shards-per-client", default=S, type=int, help="shards partition (default 2)")
    add("--fraction", default=S, type=float, help="C in [0, 1] (default 0.1)")
    add("--epochs", default=S, type=int, help="E >= 1 (default 1)")
    add("--batch-size", default=S, type=_batch_size, help="B >= 1 or 'inf' (default 10)")
    add("--lr", default=S, type=float, help="client learning rate > 0 (default 0.1)")
    add("--lr-decay", default=S, type=float, help="per-round factor in (0, 1] (default 1)")
    add("--rounds", default=S, type=int, help=f"T >= 1 (default {d['rounds']})")
    add("--weighting", default=S, choices=[w.value for w in Weighting])
    add("--server-opt", default=S, choices=[o.value for o in ServerOpt])
    add("--server-lr", default=S, type=float, help="> 0 (default 1.0: FedAvg)")
    add("--server-momentum", default=S, type=float, help="in [0, 1) (momentum only)")
    add("--server-beta1", default=S, type=float, help="in [0, 1) (adam/yogi/adagrad; 0.9)")
    add("--server-beta2", default=S, type=float, help="in [0, 1) (adam/yogi; 0.99)")
    add("--server-tau", default=S, type=float, help="> 0 (adam/yogi/adagrad; 1e-9)")
    add("--server-bias-correction", default=S, action="store_true",
        help="adam: Flower FedAdam's bias-corrected server learning rate")
    add("--bits", default=S, type=int, help="quantizer bits in [1, 16] (default 8)")
    add("--eval-every", default=S, type=int, help="test-set evaluation cadence (default 1)")
    add("--eval-holdout", default=S, type=float,
        help="fraction in [0, 1) of each client held out for federated evaluation (default 0)")
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="refsim", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    info = sub.add_parser("info", help="version, backends and models")
    info.set_defaults(func=_info)
    run = sub.add_parser("run", help="FedAvg on the embedded MNIST (the comparison by default)")
    _add_run_arguments(run)
    run.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
