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
fixed m = ``--m`` clients a round (C = m / K); m in ``--ms`` at K = 100. Every sim run is first
checked against its local run (metrics.csv equal: the oracle) when both ran at 1 thread.

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
LOCAL = r"""
import json, sys, time
from refsim.cli.run_settings import make_partition
from refsim.fedavg import FedAvgConfig, from_images, run_fedavg
from refsim.fedavg.named import MODELS, codec_named
from refsim.data import load_mnist
import numpy as np
a = json.loads(sys.argv[1])
data = from_images(load_mnist(), np.float32, a["train_limit"], 1000)
part = make_partition("iid", {"seed": 0, "clients": a["K"], "shards_per_client": 2},
                      data.y_train, None)
cfg = FedAvgConfig(fraction=a["C"], rounds=a["rounds"], batch_size=10,
                   codec=codec_named("quant-huffman", 8))
ends = []
run_fedavg(cfg, MODELS[a["model"]](), data, part, on_round=lambda r: ends.append(time.perf_counter()))
print(json.dumps([b - e for e, b in zip(ends, ends[1:])]))
"""


def _env(threads: int) -> dict:
    return dict(os.environ, RAY_USAGE_STATS_ENABLED="0", **{v: str(threads) for v in THREAD_VARS})


def local_rounds(model: str, k: int, c: float, rounds: int, limit: int, threads: int) -> list:
    arg = json.dumps({"model": model, "K": k, "C": c, "rounds": rounds, "train_limit": limit})
    out = subprocess.run([sys.executable, "-c", LOCAL, arg], env=_env(threads), check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def sim_rounds(model: str, k: int, c: float, rounds: int, limit: int, work: str) -> list:
    out = tempfile.mkdtemp(dir=work)
    cmd = [os.path.join(os.path.dirname(sys.executable), "refsim"), "run", "--engine",
           "flower-sim", "--client-cpus", "1", "--model", model, "--partition", "iid",
           "--codec", "quant-huffman", "--clients", str(k), "--fraction", str(c),
           "--rounds", str(rounds), "--train-limit", str(limit), "--test-limit", "1000",
           "--plot", "no", "--quiet", "--out", out]
    subprocess.run(cmd, env=_env(1), check=True, capture_output=True)
    with open(os.path.join(out, "iid-quant-huffman", "summary.json")) as f:
        per = json.load(f)["timing"]["per_round"]
    return [r["train_wall_s"] + r.get("evaluate_wall_s", 0.0) for r in per[1:]]


def median_of(runs: list[list]) -> float:
    return statistics.median(statistics.median(r) for r in runs)


def measure(model, k, c, rounds, limit, reps, work, which=("local-1t", "local-2t", "sim")):
    row = {}
    for name in which:
        runs = []
        for _ in range(reps):
            if name == "sim":
                runs.append(sim_rounds(model, k, c, rounds, limit, work))
            else:
                runs.append(local_rounds(model, k, c, rounds, limit, int(name[-2])))
        row[name] = median_of(runs)
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
