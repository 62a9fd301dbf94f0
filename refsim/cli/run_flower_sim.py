"""``refsim run --engine flower-sim``: each run of ``refsim run`` on Flower's Simulation Engine.

For every (partition, E, B, codec) of the settings, the FedAvgConfig ``refsim run`` would use is
turned into the Flower app's run config (``refsim.flower.settings.RUN_CONFIG``), and
``python -m refsim.flower.simulation`` runs it in a child process with K = ``--clients`` virtual
SuperNodes (``docs/scale-out.md``). The child checks that the app builds exactly that
FedAvgConfig and refuses otherwise (exit 2, one line), so no setting is silently dropped. The
ServerApp writes metrics.csv, metrics.jsonl, final_weights.npy and summary.json in the run's
directory, equal to the in-process run's files (summary: the same accuracy and bit facts).
``refsim run`` then writes comparison.txt, comparison.json and the plots of the runs from
those files, as for ``--engine local`` (the same bytes: the tests compare them).
A failed run ends with one line (exit 1; a NaN update under nan-policy raise, a client whose
Ray actor died) and the ServerApp's traceback in error.txt; with ``--quiet`` Flower's and Ray's
logs go to the run's flower_sim.log instead of the console.

K is ``--clients``, or for the writers partition the number of writers (FEMNIST by writer: 207
virtual SuperNodes, each evaluated on its writer's test set, as ``refsim run``).

What the app does not offer is refused here, with one line: CIFAR-10 (read from a folder, not
embedded), tff-compression, --backend cupy, --client-stack > 1, --client-threads > 1,
--progress tff, --normalize (the app trains on x / 255), the robust aggregators. The client optimizers (``--client-opt``, ``--client-opt-state``), ``--resume``
(from the run directory's checkpoint.npz, which the ServerApp writes after every round in the
in-process format) and ``--trace`` / ``--trace-every`` (the in-process ``trace/`` files) are
carried in the run config; a checkpoint that does not fit the run is refused here (exit 2, as
the in-process run refuses it), before Ray starts, and the ServerApp checks it again.

Ray's child processes inherit one BLAS thread per CPU of a client (``--client-cpus``), so
concurrent clients do not oversubscribe the cores.

This module does not import ``flwr`` (the layering of setup.cfg).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import numpy as np

from refsim.backend import Purpose, make_rng
from refsim.cli._common import UsageError
from refsim.cli.run_settings import batch_label
from refsim.fedavg import History, RoundMetrics
from refsim.fedavg.loop import resume_point

# Ray 2.55 turns a node IP of 127.0.0.1 into the machine's address and its gRPC servers listen on
# every interface; with its single-machine mode (meant for Windows and macOS) the node IP stays
# 127.0.0.1 and every Ray server listens on loopback only (checked by
# tests/test_flower_simulation.py). Read by Ray when it is imported, so set in the child.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

__all__ = ["ENGINES", "LOOPBACK_ENV", "check_engine_settings", "run_config", "run_flower_sim"]

ENGINES = ("local", "flower-sim")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _importable(package: str) -> bool:
    """Whether ``package`` is installed (a folder of that name in the working directory, such
    as Ray's /tmp/ray session folder, is a namespace package, not the package)."""
    spec = importlib.util.find_spec(package)
    return spec is not None and spec.origin not in (None, "namespace")


def check_engine_settings(s: dict) -> None:
    """UsageError for a setting --engine flower-sim cannot honour (the local engine: none)."""
    if s["engine"] not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, got {s['engine']!r}")
    if not isinstance(s["client_cpus"], (int, float)) or not s["client_cpus"] > 0:
        raise UsageError(f"--client-cpus must be > 0, got {s['client_cpus']!r}")
    if s["engine"] == "local":
        if s["ray_address"] is not None or s["client_cpus"] != 1:
            raise UsageError("--ray-address and --client-cpus need --engine flower-sim")
        return
    missing = [p for p in ("flwr", "ray") if not _importable(p)]
    if missing:
        raise UsageError(f"--engine flower-sim needs Flower's Simulation Engine ({', '.join(missing)} "
                         "not installed): pip install 'refsim[flower]'")
    refused = [(f"--dataset {s['dataset']}", s["dataset"] not in ("mnist", "femnist")),
               ("--codec tff-compression", "tff-compression" in s["codec"]),
               ("--backend cupy", s["backend"] != "numpy"),
               ("--client-stack > 1", s["client_stack"] != 1),
               ("--client-threads > 1", s["client_threads"] != 1),
               ("--progress tff", s.get("progress") == "tff"),
               ("--normalize", s["normalize"] is not None)]
    for what, bad in refused:
        if bad:
            raise UsageError(f"--engine flower-sim: {what} is not offered by the Flower app "
                             f"(use --engine local)")


def run_config(cfg, s: dict, partition: str, codec: str, out_dir: str) -> dict:
    """The Flower app's run config of one run (``cfg``: its FedAvgConfig)."""
    sv, co = cfg.server, cfg.client_opt
    return {"dataset": s["dataset"], "model": s["model"], "partition": partition,
            "shards-per-client": s["shards_per_client"], "codec": codec, "bits": s["bits"],
            "downlink": s["downlink"], "downlink-bits": s["downlink_bits"],
            "fraction": cfg.fraction, "epochs": cfg.epochs,
            "batch-size": "inf" if cfg.batch_size is None else cfg.batch_size, "lr": cfg.lr,
            "lr-decay": cfg.lr_decay, "rounds": cfg.rounds, "weighting": cfg.weighting.value,
            "server-opt": sv.kind.value, "server-lr": sv.lr, "server-momentum": sv.momentum,
            "server-beta1": sv.beta1, "server-beta2": sv.beta2, "server-tau": sv.tau,
            "server-bias-correction": sv.bias_correction, "eval-every": cfg.eval_every,
            "eval-holdout": cfg.eval_holdout, "fraction-evaluate": cfg.fraction_evaluate,
            "seed": cfg.seed, "dtype": cfg.dtype.value,
            "init": cfg.init.value, "nan-policy": cfg.nan_policy.value,
            "client-opt": co.kind.value, "client-momentum": co.momentum,
            "client-beta1": co.beta1, "client-beta2": co.beta2, "client-eps": co.eps,
            "client-opt-state": co.state.value,
            "train-limit": s["train_limit"] or 0, "test-limit": s["test_limit"] or 0,
            "out-dir": os.path.abspath(out_dir), "resume": bool(s["resume"]),
            "trace": bool(s["trace"]), "trace-every": s["trace_every"], "timeout": 3600.0}


def _child_env(client_cpus: float, ray_address: str | None) -> dict:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", FLWR_TELEMETRY_ENABLED="0")
    if not ray_address:  # a local Ray: loopback only (refsim.flower.simulation.LOOPBACK_ENV)
        env.update(LOOPBACK_ENV)
    threads = str(max(1, int(client_cpus)))
    env.update({v: threads for v in THREAD_VARS})
    return env


def _last_error(log_path: str, code: int) -> str:
    """The child's one-line error from its log (``--quiet``), or a line saying where the log is."""
    with open(log_path, errors="replace") as f:
        lines = [ln for ln in f.read().splitlines() if ln.startswith("refsim run: error: ")]
    return lines[-1] if lines else (f"refsim run: error: --engine flower-sim: the simulation "
                                    f"exited with code {code}; its log: {log_path}")


def _history(run_dir: str, cfg, model):
    """The run's History from the ServerApp's files (metrics.jsonl, final_weights.npy), for
    ``refsim run``'s comparison table and plots."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rounds = tuple(RoundMetrics.from_dict(json.loads(line)) for line in f if line.strip())
    w0 = model.init(make_rng(cfg.seed, Purpose.INIT), cfg.init.value, cfg.dtype.np)  # (P,)
    return History(rounds, np.load(os.path.join(run_dir, "final_weights.npy")), w0)


def run_flower_sim(s: dict, pairs, configs, parts, model, out: str):
    """Every run of the settings on the Simulation Engine: (exit code of ``refsim run``,
    [(name, History)], {name: wall seconds}); ``refsim run`` then writes the comparison of the
    runs as for ``--engine local`` (``parts``: {partition name: the K index arrays ``refsim
    run`` would train on})."""
    runs, walls = [], {}
    for p, e, b, c in ((p, e, b, c) for p in s["partition"] for e, b in pairs
                       for c in s["codec"]):
        name = f"{p}-{c}" + (f"-E{e}-B{batch_label(b)}" if len(pairs) > 1 else "")
        run_dir = os.path.join(out, name)
        os.makedirs(run_dir, exist_ok=True)
        for stale in ("summary.json", "error.txt"):  # of an earlier run in this directory
            if os.path.exists(os.path.join(run_dir, stale)):
                os.remove(os.path.join(run_dir, stale))
        cfg = configs[(c, e, b)]
        ckpt = os.path.join(run_dir, "checkpoint.npz")
        if s["resume"] and os.path.exists(ckpt):  # refused here, before Ray starts
            w0 = model.init(make_rng(cfg.seed, Purpose.INIT), cfg.init.value, cfg.dtype.np)
            try:
                resume_point(ckpt, cfg, model, len(parts[p]), w0)
            except ValueError as err:  # as the in-process run: exit 2
                print(f"refsim run: error: {name}: {err}", file=sys.stderr)
                return 2, runs, walls
        request = {"run_config": run_config(cfg, s, p, c, run_dir),
                   "expected": json.loads(json.dumps(cfg.to_dict())),
                   "num_clients": len(parts[p]), "client_cpus": float(s["client_cpus"]),
                   "ray_address": s["ray_address"], "num_cpus": os.cpu_count()}
        req_path = os.path.join(run_dir, "flower_sim_request.json")
        with open(req_path, "w") as f:
            json.dump(request, f, indent=1)
        if not s["quiet"]:
            print(f"[{name}] Flower Simulation Engine, K = {len(parts[p])} virtual SuperNodes",
                  flush=True)
        log_path = os.path.join(run_dir, "flower_sim.log")
        argv = [sys.executable, "-m", "refsim.flower.simulation", req_path]
        env = _child_env(s["client_cpus"], s["ray_address"])
        started = time.perf_counter()
        if s["quiet"]:  # Flower's and Ray's logs go to the file
            with open(log_path, "w") as log:
                child = subprocess.run(argv, env=env, stdout=log, stderr=log)
        else:
            child = subprocess.run(argv, env=env)
        if child.returncode != 0:
            if s["quiet"]:
                print(_last_error(log_path, child.returncode), file=sys.stderr)
            return (2 if child.returncode == 2 else 1), runs, walls
        walls[name] = time.perf_counter() - started  # Ray's start and end included
        runs.append((name, _history(run_dir, cfg, model)))
        if not s["quiet"]:
            with open(os.path.join(run_dir, "summary.json")) as f:
                summary = json.load(f)
            print(f"[{name}] final acc {summary['final_accuracy']:.4f}  best acc "
                  f"{summary['best_accuracy']:.4f}  uplink {summary['uplink_bits'] / 1e6:.1f} "
                  f"Mbit  {summary['wall_time_s']:.1f} s in the ServerApp; run directory: "
                  f"{run_dir}", flush=True)
    return 0, runs, walls
