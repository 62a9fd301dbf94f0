"""What running refsim on Flower's deployment runtime costs, against the in-process loop.

Starts a SuperLink and N SuperNodes on 127.0.0.1 (``tests/flower_local.py``, the commands of
``refsim flower-app``), runs the refsim app for T rounds, and first checks its result against
``run_fedavg`` of the same config (metrics.csv and final weights bit for bit: the oracle).
Then it prints, from the ServerApp's ``summary.json`` timings and an in-process run timed in
this process:

* seconds per round, deployment: from pushing the round's train messages to aggregating the
  last reply (``train_wall_s``), per round and median;
* seconds per round and per client update, in process (warm: the second of two runs);
* overhead per client message = deployment round - in-process client update (the latency the
  runtime adds to each of the round's concurrent messages), split into the ClientApp process's
  setup (imports are not included: they precede the handler; data, partition, decoding), its
  training (in a fresh process, so with the codec kernels loaded for the first time) and the
  rest (Flower: the SuperNode's 3-s pull interval, process start, transfers).

Run from the repository root (needs ``pip install -e '.[flower]'``):

    PYTHONPATH=. python bench/flower_overhead.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np

from refsim.cli.run_settings import make_partition
from refsim.fedavg import metrics_csv, run_fedavg


def main() -> None:
    # Imported here, so that collecting bench/ for doctests needs neither flwr nor tests/.
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    from flower_local import LocalDeployment
    from refsim.flower.settings import RUN_CONFIG, app_settings, load_data

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--fraction", type=float, default=0.67)
    p.add_argument("--model", default="logistic")
    p.add_argument("--train-limit", type=int, default=3000)
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="refsim-flower-bench-")
    rc = {**RUN_CONFIG, "model": args.model, "codec": "quant-huffman", "fraction": args.fraction,
          "batch-size": 20, "rounds": args.rounds, "train-limit": args.train_limit,
          "test-limit": 1000, "timeout": 120.0, "out-dir": os.path.join(work, "out")}
    s = app_settings(rc)
    data = load_data(s)
    part = make_partition("iid", {"seed": s.config.seed, "clients": args.nodes,
                                  "shards_per_client": 2}, data.y_train, None)

    with LocalDeployment(work, args.nodes) as d:
        d.submit(rc)
        out = d.wait(timeout=60 + 20 * args.rounds)
    expected = run_fedavg(s.config, s.model(), data, part)
    with open(os.path.join(out, "metrics.csv")) as f:
        assert f.read() == metrics_csv(expected.rounds), "deployment != in-process metrics"
    assert np.array_equal(np.load(os.path.join(out, "final_weights.npy")), expected.params)
    print(f"oracle: {args.rounds} rounds, metrics.csv and weights equal the in-process run")

    for _ in range(2):  # time the second, warm run
        start, stamps = time.perf_counter(), []
        run_fedavg(s.config, s.model(), data, part,
                   on_round=lambda r: stamps.append(time.perf_counter()))
    rounds_in = np.diff([start, *stamps])
    m = len(expected.rounds[0].clients)
    in_round = statistics.median(rounds_in)
    in_client = in_round / m

    with open(os.path.join(out, "summary.json")) as f:
        timing = json.load(f)["timing"]
    walls = [r["train_wall_s"] for r in timing["per_round"]]
    setups = [c["setup-seconds"] for r in timing["per_round"] for c in r["clients"].values()]
    trains = [c["train-seconds"] for r in timing["per_round"] for c in r["clients"].values()]
    dep_round = statistics.median(walls)
    print(f"deployment: K = {args.nodes} SuperNodes, m = {m} clients per round, "
          f"{s.model().name}, {args.train_limit} training examples")
    print(f"  start-up: SuperLink up {d.timing['superlink_up_s']:.1f} s, flwr run "
          f"{d.timing['flwr_run_s']:.1f} s, client discovery {timing['discovery_s']:.1f} s, "
          f"whole run {d.timing['run_s']:.1f} s")
    print("  seconds per round: " + ", ".join(f"{w:.2f}" for w in walls)
          + f" (median {dep_round:.2f})")
    print(f"in process: {in_round * 1e3:.1f} ms per round, {in_client * 1e3:.1f} ms per client "
          f"update")
    setup, train = statistics.median(setups), statistics.median(trains)
    print(f"overhead per client message: {dep_round - in_client:.2f} s (median); of which "
          f"ClientApp setup {setup:.2f} s, training in a fresh process {train:.2f} s "
          f"(in process {in_client:.3f} s), Flower {dep_round - setup - train:.2f} s")


if __name__ == "__main__":
    main()
