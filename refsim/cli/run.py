"""``refsim run``: FederatedAveraging on the embedded MNIST, its files, table and plots.

Runs FederatedAveraging (McMahan et al., AISTATS 2017, arXiv:1602.05629, Algorithm 1;
``refsim.fedavg``) offline. With no arguments it runs the comparison of ``docs/fedavg.md``: the
paper's 2NN, K = 100, C = 0.1, E = 1, B = 10, IID and pathological non-IID, each with float32
updates and with 8-bit stochastic quantization + Huffman, and prints a table. Every setting is a
flag and can come from a TOML file (``run_settings.py``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np

from refsim.cli._common import UsageError, versions, write_text
from refsim.cli.run_settings import (MODELS, add_arguments, batch_label, default_out,
                                     eval_partition, grid, make_config, make_data,
                                     make_partition, settings)
from refsim.cli.run_flower_sim import check_engine_settings, run_flower_sim
from refsim.cli.run_tff import tff_round_line
from refsim.fedavg import (NonFiniteUpdateError, metrics_csv, metrics_jsonl, rounds_to_targets,
                           run_fedavg)
from refsim.fedavg.run_lock import RunLockError, lock_run_dir
from refsim.fedavg.storage import atomic_write_bytes, remove_partial_writes

__all__ = ["add_subcommand", "run", "format_table"]


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


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


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


class _Progress:
    """The console line of each round (the progress indicator): metrics, elapsed seconds and
    the estimated seconds left (elapsed / rounds done so far * rounds to go); with
    ``tff_epochs`` (``--progress tff``) the line in the TFF tutorials' terms instead (its
    cumulative aggregated bits count from the first round of this invocation)."""

    def __init__(self, name: str, total: int, quiet: bool, tff_epochs: int | None = None):
        self.name, self.total, self.quiet = name, total, quiet
        self.start, self.first = time.perf_counter(), None
        self.tff_epochs, self.aggregated = tff_epochs, 0

    def __call__(self, row) -> None:
        self.aggregated += row.uplink_bits if row.tff_uplink_bits is None else row.tff_uplink_bits
        if self.quiet:
            return
        if self.tff_epochs is not None:
            print(f"[{self.name}] {tff_round_line(row, self.tff_epochs, self.aggregated)}",
                  flush=True)
            return
        self.first = self.first or row.round  # a resumed run starts later
        elapsed = time.perf_counter() - self.start
        left = elapsed / (row.round - self.first + 1) * (self.total - row.round)
        acc = "" if row.test_accuracy is None else f"  test acc {row.test_accuracy:.4f}"
        print(f"[{self.name}] round {row.round}/{self.total}  train loss {row.train_loss:.4f}"
              f"{acc}  uplink {row.uplink_bits_cum / 1e6:.1f} Mbit  {elapsed:.0f} s, "
              f"~{left:.0f} s left", flush=True)


def run(args: argparse.Namespace) -> int:
    """``refsim run``: exit 0, 1 when a run fails (NaN update), 2 for bad settings."""
    try:
        s = settings(args)
        check_engine_settings(s)
        pairs = grid(s)
        configs = {(c, e, b): make_config(s, c, e, b) for c in s["codec"] for e, b in pairs}
        data, writers_train, writers_test = make_data(s)
        parts = {p: make_partition(p, s, data.y_train, writers_train) for p in s["partition"]}
        evals = {p: eval_partition(p, writers_train, writers_test) for p in s["partition"]}
    except UsageError as e:
        print(f"refsim run: error: {e}", file=sys.stderr)
        return 2
    model = MODELS[s["model"]]()
    out = s["out"] or default_out(s)
    try:
        with lock_run_dir(out) as stale:  # one refsim run per --out (docs/fedavg.md)
            if stale is not None:
                print(f"refsim run: note: took over the lock of {out} left by {stale}, which "
                      f"is no longer running", file=sys.stderr)
            remove_partial_writes(out)
            if s["engine"] == "flower-sim":
                code, runs, walls = run_flower_sim(s, pairs, configs, parts, model, out)
                if code:
                    return code
                rows = [_table_row(name, h, model.num_params, s["targets"]) for name, h in runs]
                return _compare(s, out, runs, rows, walls)
            return _run_locked(s, pairs, configs, data, parts, evals, model, out)
    except RunLockError as err:  # another run holds it, or no lock file can be made there
        print(f"refsim run: error: {err}", file=sys.stderr)
        return 2


def _run_locked(s, pairs, configs, data, parts, evals, model, out: str) -> int:
    """The runs of ``refsim run`` and their files, with ``out`` locked (see ``run``)."""
    runs, rows, walls = [], [], {}
    for p, e, b, c in ((p, e, b, c) for p in s["partition"] for e, b in pairs
                       for c in s["codec"]):
        name = f"{p}-{c}" + (f"-E{e}-B{batch_label(b)}" if len(pairs) > 1 else "")
        run_dir = os.path.join(out, name)
        cfg = configs[(c, e, b)]

        show = _Progress(name, cfg.rounds, s["quiet"],  # also the run's start time
                         cfg.epochs if s["progress"] == "tff" else None)
        try:
            h = run_fedavg(cfg, model, data, parts[p],
                           eval_partition=evals[p],
                           run_dir=run_dir, resume=s["resume"], trace=s["trace"],
                           trace_every=s["trace_every"], on_round=show)
        except NonFiniteUpdateError as err:
            print(f"refsim run: error: {name}: {err}", file=sys.stderr)
            return 1
        except ValueError as err:  # e.g. --resume with a checkpoint of another run
            print(f"refsim run: error: {name}: {err}", file=sys.stderr)
            return 2
        walls[name] = time.perf_counter() - show.start
        row = _table_row(name, h, model.num_params, s["targets"])
        rows.append(row)
        runs.append((name, h))
        write_text(os.path.join(run_dir, "metrics.csv"), metrics_csv(h.rounds))
        write_text(os.path.join(run_dir, "metrics.jsonl"), metrics_jsonl(h.rounds))
        atomic_write_bytes(os.path.join(run_dir, "final_weights.npy"), _npy_bytes(h.params))
        summary = {"run": name, "model": model.name, "partition": p, "codec": c,
                   "config": cfg.to_dict(), "seed": cfg.seed, "num_clients": len(parts[p]),
                   "settings": {k: v for k, v in s.items() if k != "resume"},
                   "versions": versions(), **row,
                   "total_broadcast_bits": h.rounds[-1].broadcast_bits_cum,
                   "wall_time_s": walls[name]}
        write_text(os.path.join(run_dir, "summary.json"), json.dumps(summary, indent=1) + "\n")
    return _compare(s, out, runs, rows, walls)


def _compare(s: dict, out: str, runs: list, rows: list[dict], walls: dict) -> int:
    """comparison.txt / .json and the plots of all runs in ``out``, the table on the console
    (both engines: ``runs`` are (name, History), ``rows`` their ``_table_row``)."""
    table = format_table(rows, s["targets"])
    write_text(os.path.join(out, "comparison.txt"), table)
    write_text(os.path.join(out, "comparison.json"), json.dumps(rows, indent=1) + "\n")
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


def add_subcommand(subparsers) -> None:
    """Register ``refsim run``."""
    sub = subparsers.add_parser("run", help="FedAvg on the embedded MNIST (the comparison by "
                                            "default)")
    add_arguments(sub)
    sub.set_defaults(func=run)
