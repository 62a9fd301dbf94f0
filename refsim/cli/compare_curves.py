"""``refsim compare --curves CANDIDATE RUN``: is a candidate's per-round test-accuracy curve
inside refsim's seed-to-seed band?

RUN is one job of ``refsim run`` (a directory with ``summary.json`` and ``metrics.csv``, such as
``runs/<run>/iid-float``). refsim reruns that job's exact settings with seeds s0 + 1, ...,
s0 + n - 1 (s0 the job's own seed, whose curve is the job's ``metrics.csv``), keeps each rerun's
curve in ``RUN/seed_band/seed_<s>.csv`` (reused next time when its settings match), and compares
with ``refsim.validation.curves`` (the band's definition).

Exit codes: 0 inside the band in every compared round, 1 outside in some round, 2 a usage or
input error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from refsim.cli._common import UsageError, write_text
from refsim.cli.run_settings import (MODELS, eval_partition, make_config, make_data,
                                     make_partition)
from refsim.fedavg import metrics_csv, run_fedavg
from refsim.validation.curves import CurveComparison, compare_curve, read_curve
from refsim.validation.step_inputs import read_json

__all__ = ["compare_curves", "format_curves_report", "reference_curves"]

PROG = "refsim compare --curves"


def _job(run_dir: str) -> tuple[dict, dict]:
    path = os.path.join(run_dir, "summary.json")
    if not os.path.isfile(path):
        raise ValueError(f"{run_dir}: no summary.json; give one job directory of refsim run "
                         f"(e.g. runs/<run>/iid-float)")
    summary = read_json(path)
    s = dict(summary["settings"], partition=[summary["partition"]], codec=[summary["codec"]],
             resume=False, trace=False, out=None, quiet=True)
    return summary, s


def reference_curves(run_dir: str, seeds: int, say=print):
    """The job's curve and its reruns' with the next ``seeds - 1`` seeds (module docstring);
    returns (curves, the size of the test set)."""
    summary, s = _job(run_dir)
    cfg = summary["config"]
    data, writers_train, writers_test = make_data(s)
    p, c = summary["partition"], summary["codec"]
    evals = eval_partition(p, writers_train, writers_test)
    band_dir = os.path.join(run_dir, "seed_band")
    curves = [read_curve(os.path.join(run_dir, "metrics.csv"), f"seed {summary['seed']}")]
    for seed in range(summary["seed"] + 1, summary["seed"] + seeds):
        s_seed = dict(s, seed=seed)
        csv_path = os.path.join(band_dir, f"seed_{seed}.csv")
        meta_path = os.path.join(band_dir, f"seed_{seed}.json")
        key = json.loads(json.dumps(s_seed))
        if os.path.isfile(csv_path) and os.path.isfile(meta_path) and \
                read_json(meta_path) == key:
            say(f"seed {seed}: reusing {csv_path}")
        else:
            say(f"seed {seed}: running {summary['run']} with seed {seed} ...")
            config = make_config(s_seed, c, cfg["epochs"], cfg["batch_size"])
            parts = make_partition(p, s_seed, data.y_train, writers_train)  # seed-dependent
            history = run_fedavg(config, MODELS[s["model"]](), data, parts,
                                 eval_partition=evals)
            os.makedirs(band_dir, exist_ok=True)
            write_text(csv_path, metrics_csv(history.rounds))
            write_text(meta_path, json.dumps(key, indent=1) + "\n")
        curves.append(read_curve(csv_path, f"seed {seed}"))
    return curves, len(data.y_test)


def format_curves_report(c: CurveComparison) -> str:
    """The text ``refsim compare --curves`` prints."""
    lines = [f"candidate: {c.candidate.label}",
             f"reference: {len(c.references)} seeds ({', '.join(r.label for r in c.references)})",
             f"band: mean +- max(t_(n-1)(1 - {c.alpha:g}/(2R)) = {c.quantile:.3g} x sd x "
             f"sqrt(1 + 1/n), 1/num_test = {c.resolution:.3g}) over R = {len(c.rows)} rounds",
             "", "round  candidate      mean       low      high   seeds min-max   inside"]
    lines += [f"{r.round:>5}  {r.candidate:>9.4f}  {r.mean:>8.4f}  {r.low:>8.4f}  {r.high:>8.4f}"
              f"  {r.seeds_min:.4f}-{r.seeds_max:.4f}   {'yes' if r.inside else 'NO'}"
              for r in c.rows]
    lines.append("")
    if c.inside:
        lines.append(f"INSIDE: the candidate lies in refsim's seed band in all {len(c.rows)} "
                     f"compared rounds")
    else:
        out = c.outside_rounds
        lines.append(f"OUTSIDE: the candidate leaves refsim's seed band in {len(out)} of "
                     f"{len(c.rows)} rounds, first at round {out[0]}")
    return "\n".join(lines)


def compare_curves(args: argparse.Namespace) -> int:
    """``refsim compare --curves A B``: exit 0 inside, 1 outside, 2 error."""
    try:
        if args.seeds < 3:
            raise UsageError(f"--seeds must be >= 3 (a band needs 3 runs), got {args.seeds}")
        candidate = read_curve(args.a)
        say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
        curves, num_test = reference_curves(args.b, args.seeds, say)
        result = compare_curve(candidate, curves, num_test, args.alpha)
    except (UsageError, ValueError, TypeError, OSError, KeyError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=1) if args.json else format_curves_report(result))
    return 0 if result.inside else 1
