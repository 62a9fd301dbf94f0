"""Round time of refsim on Flower's Simulation Engine against the in-process loop, same run.

Each measurement is a ``refsim run`` child process (so its BLAS thread count is its own):

* ``local-1t`` / ``local-2t``: ``--engine local`` at 1 and 2 BLAS threads; a round's time is
  the gap between consecutive rounds' end times (``on_round``), so round 1 (warm-up) is not
  one of the rounds timed;
* ``sim``: ``--engine flower-sim --client-cpus 1`` (floor(cores) clients train at once, one
  BLAS thread each); a round's time is the ServerApp's ``train_wall_s`` + ``evaluate_wall_s``
  (summary.json), rounds 2.. (round 1 starts the actors).

The median over the timed rounds of a run is that run's figure; ``--reps`` runs of each give
the median of medians. Sweeps: the model (2NN, CNN) at K = 100, C = 0.1; K in ``--ks`` at
fixed m = ``--m`` clients a round (C = m / K); m in ``--ms`` at K = 100. Every sim run's metrics.csv
must equal the 1-thread local run's (the oracle; both get the same ``refsim run`` flags), and
repeated runs must give the same file.

    PYTHONPATH=. python bench/flower_sim.py --rounds 4 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# --engine local with refsim run's own settings; prints the gaps between round ends and the
# metrics.csv text (the oracle of the sim run)
LOCAL = r"""
import argparse, json, sys, time
from refsim.cli import run_settings as rs
from refsim.fedavg import metrics_csv, run_fedavg
p = argparse.ArgumentParser()
rs.add_arguments(p)
s = rs.settings(p.parse_args(json.loads(sys.argv[1])))
(e, b), = rs.grid(s)
cfg = rs.make_config(s, s["codec"][0], e, b)
data, writers, _ = rs.make_data(s)
part = rs.make_partition(s["partition"][0], s, data.y_train, writers)
ends = []
h = run_fedavg(cfg, rs.MODELS[s["model"]](), data, part,
               on_round=lambda r: ends.append(time.perf_counter()))
print(json.dumps({"rounds": [b - e for e, b in zip(ends, ends[1:])],
                  "csv": metrics_csv(h.rounds)}))
"""


def _env(threads: int) -> dict:
    return dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **{v: str(threads) for v in THREAD_VARS})


def _args(model: str, k: int, c: float, rounds: int, limit: int) -> list[str]:
    """The ``refsim run`` flags of a sweep point (both engines get the same)."""
    return ["--model", model, "--partition", "iid", "--codec", "quant-huffman", "--clients",
            str(k), "--fraction", str(c), "--rounds", str(rounds), "--train-limit", str(limit),
            "--test-limit", "1000", "--plot", "no", "--quiet"]


def local_rounds(model: str, k: int, c: float, rounds: int, limit: int, threads: int
                 ) -> tuple[list, str]:
    """(seconds of rounds 2.., metrics.csv text) of ``--engine local`` at ``threads``."""
    arg = json.dumps(_args(model, k, c, rounds, limit))
    out = subprocess.run([sys.executable, "-c", LOCAL, arg], env=_env(threads), check=True,
                         capture_output=True, text=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    return got["rounds"], got["csv"]


def sim_rounds(model: str, k: int, c: float, rounds: int, limit: int, work: str
               ) -> tuple[list, str]:
    """(seconds of rounds 2.., metrics.csv text) of ``--engine flower-sim --client-cpus 1``."""
    out = tempfile.mkdtemp(dir=work)
    cmd = [os.path.join(os.path.dirname(sys.executable), "refsim"), "run", "--engine",
           "flower-sim", "--client-cpus", "1", *_args(model, k, c, rounds, limit), "--out", out]
    subprocess.run(cmd, env=_env(1), check=True, capture_output=True)
    run_dir = os.path.join(out, "iid-quant-huffman")
    with open(os.path.join(run_dir, "summary.json")) as f:
        per = json.load(f)["timing"]["per_round"]
    with open(os.path.join(run_dir, "metrics.csv")) as f:
        csv = f.read()
    return [r["train_wall_s"] + r.get("evaluate_wall_s", 0.0) for r in per[1:]], csv


def median_of(runs: list[list]) -> float:
    return statistics.median(statistics.median(r) for r in runs)


def measure(model, k, c, rounds, limit, reps, work, which=("local-1t", "local-2t", "sim")):
    """{variant: median of the runs' medians}; AssertionError when a sim run's metrics.csv is
    not the 1-thread local run's (the oracle: equal bit for bit)."""
    row, csvs = {}, {}
    for name in which:
        runs = []
        for _ in range(reps):
            if name == "sim":
                times, csv = sim_rounds(model, k, c, rounds, limit, work)
            else:
                times, csv = local_rounds(model, k, c, rounds, limit, int(name[-2]))
            runs.append(times)
            csvs.setdefault(name, csv)
            if name in ("sim", "local-1t") and csvs[name] != csv:
                raise AssertionError(f"{model} K={k} C={c}: {name} is not deterministic")
        row[name] = median_of(runs)
    if "sim" in csvs and "local-1t" in csvs and csvs["sim"] != csvs["local-1t"]:
        raise AssertionError(f"{model} K={k} C={c}: the sim's metrics.csv is not the local run's")
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--models", nargs="*", default=["2nn", "cnn"])
    p.add_argument("--ks", type=int, nargs="*", default=[10, 100, 1000])
    p.add_argument("--ms", type=int, nargs="*", default=[2, 10, 20])
    p.add_argument("--m", type=int, default=10)
    p.add_argument("--train-limit", type=int, default=60000)
    a = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="refsim-flower-sim-bench-")
    result = {"models": {}, "K": {}, "m": {}}
    for model in a.models:
        r = measure(model, 100, 0.1, a.rounds, a.train_limit, a.reps, work)
        result["models"][model] = r
        print(f"{model} K=100 C=0.1: " + "  ".join(f"{n} {v:.3f} s" for n, v in r.items())
              + f"  sim/local-1t {r['sim'] / r['local-1t']:.2f}", flush=True)
    for k in a.ks:
        r = measure("2nn", k, a.m / k, a.rounds, a.train_limit, a.reps, work, ("local-1t", "sim"))
        result["K"][k] = r
        print(f"2nn K={k} m={a.m}: local-1t {r['local-1t']:.3f} s  sim {r['sim']:.3f} s",
              flush=True)
    for m in a.ms:
        r = measure("2nn", 100, m / 100, a.rounds, a.train_limit, a.reps, work,
                    ("local-1t", "sim"))
        result["m"][m] = r
        print(f"2nn K=100 m={m}: local-1t {r['local-1t']:.3f} s  sim {r['sim']:.3f} s",
              flush=True)
    return result


if __name__ == "__main__":
    main()
