"""``refsim compare-steps CANDIDATE TRACE --round T --client K``: is each of a candidate's local
SGD steps refsim's step from the candidate's own weights? And ``--server``: is its server step
refsim's from its own client updates?

The check, its tolerance and the near-tie diagnosis are defined in ``refsim.validation.steps``
and ``refsim.validation.server_step``; ``docs/validation.md`` says when to use it (float32, where
whole trajectories part) and how to record the candidate's steps.

Exit codes: 0 every step agrees (tie flips included), 1 a step diverges (the first is named
with its tensor, element and both values), 2 a usage or input error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile

from refsim.cli._common import UsageError
from refsim.cli.run_settings import DATASETS, load_images
from refsim.validation.server_step import ServerCheck, check_server_step, load_server_inputs
from refsim.validation.step_inputs import (load_client_round, load_steps, read_json,
                                           trace_dir_of, trace_model)
from refsim.validation.steps import (C_DEFAULT, FLOOR_ULPS, StepCheck, StepsReport,
                                     StepTolerance, TensorCheck, check_client_steps)
from refsim.validation.weight_files import Layout

__all__ = ["add_subcommand", "compare_steps", "format_steps_report", "format_server_report"]

PROG = "refsim compare-steps"
RULE = ("a tensor agrees when max|a - r64| <= c * S + floor, S = max(|r32 - r64|, |q32 - r64|) "
        "(refsim's step from the candidate's w_j in float64, float32, float32 with running "
        "bias sums), floor = {f:g} ulp of max|r64|; c = {c:g}")


def _dataset_of(trace: str) -> str:
    """The dataset the trace's run trained on, from the run's summary.json (mnist if none)."""
    tdir = trace_dir_of(trace)
    for run_dir in (os.path.dirname(os.path.abspath(tdir)), tdir):
        path = os.path.join(run_dir, "summary.json")
        if os.path.isfile(path):
            return read_json(path).get("settings", {}).get("dataset", "mnist")
    return "mnist"


def _tensor_line(t: TensorCheck) -> str:
    return (f"tensor {t.name} {t.shape}: max|a - r64| {t.err:.3g} = {t.ratio:.3g} x its bound "
            f"{t.bound:.3g}; worst element {list(t.worst_index)}: candidate {t.candidate!r}, "
            f"refsim {t.refsim64!r} (float32 {t.refsim32!r})")


def _step_row(c: StepCheck) -> str:
    w = c.worst
    return (f"{c.step:>5}  {c.epoch:>5}  {c.batch:>5}  {c.status:<9}  {w.name:<14}  "
            f"{w.ratio:>9.3g}  {c.note}").rstrip()


def format_steps_report(r: StepsReport) -> str:
    """The text ``refsim compare-steps`` prints for a client's steps."""
    cl, cand = r.client, r.candidate
    lines = [f"candidate: {cand.path} (w_{cand.steps[0]}..w_{cand.steps[-1]}, {cand.dtype}; "
             f"read as {cand.mapping})",
             f"reference: {cl.trace_dir} round {cl.round}, client {cl.client}: {cl.model.name}, "
             f"n_k {cl.num_examples}, B {cl.batch_size}, {cl.num_steps} local steps, "
             f"lr {cl.lr!r}",
             "rule: " + RULE.format(c=r.tolerance.c, f=r.tolerance.floor_ulps)
             + "; over it, near-ties of ReLU and max-pool are flipped (docs/validation.md)",
             "", " step  epoch  batch  status     worst tensor    err/bound  note"]
    lines += [_step_row(c) for c in r.checks]
    lines.append("")
    first = r.first_divergence
    counts = (f"{len(r.checks)} step(s) checked in {r.seconds:.1f} s: {r.count('agree')} agree, "
              f"{r.count('tie flip')} tie flip(s), {r.count('diverge')} diverge")
    if first is None:
        lines.append(f"AGREE: {counts}")
        return "\n".join(lines)
    lines.append(f"first divergence: step {first.step} (epoch {first.epoch}, batch "
                 f"{first.batch}), {_tensor_line(first.worst)}; {first.note}")
    if r.stopped_early:
        lines.append("stopped at the first divergence (--all-steps checks the rest)")
    lines.append(f"DIVERGE: {counts}; the candidate's step {first.step} is not refsim's step "
                 f"from the same weights")
    return "\n".join(lines)


def format_server_report(c: ServerCheck) -> str:
    """The text ``refsim compare-steps --server`` prints."""
    lines = [f"candidate: {c.path}",
             f"reference: {c.trace_dir} round {c.round}: clients {list(c.clients)}, weights "
             f"{[int(w) if w.is_integer() else w for w in c.weights]}, server "
             f"{c.server.kind.value} lr {c.server.lr!r}",
             "rule: " + RULE.format(c=c.tolerance.c, f=c.tolerance.floor_ulps).replace(
                 "refsim's step from the candidate's w_j in float64, float32, float32 with "
                 "running bias sums", "refsim's server step from the candidate's inputs in "
                 "float64, float32, float32 with a float32 mean"),
             "", "tensor            err/bound"]
    lines += [f"{t.name:<16}  {t.ratio:>9.3g}" for t in c.tensors]
    lines.append("")
    if c.agree:
        lines.append(f"AGREE: the server step of round {c.round} is refsim's within the bound")
    else:
        first = next(t for t in c.tensors if t.exceeds)
        lines.append(f"first divergence: {_tensor_line(first)}")
        lines.append(f"DIVERGE: the candidate's w_(t+1) is not refsim's server step of round "
                     f"{c.round} from the same inputs")
    return "\n".join(lines)


def compare_steps(args: argparse.Namespace) -> int:
    """Run the check; print the report (or JSON); exit 0 agree, 1 diverge, 2 error."""
    try:
        if (args.client is None) == (not args.server):
            raise UsageError("give --client K (a client's local steps) or --server (the "
                             "server step), one of them")
        tol = StepTolerance(args.c, args.floor_ulps, args.max_tries)
        layout = Layout(args.layout)
        if args.server:
            model = trace_model(trace_dir_of(args.trace))
            inputs = load_server_inputs(args.candidate, model, layout)
            result = check_server_step(inputs, args.trace, args.round, tol)
            text, data, agree = format_server_report(result), result.to_dict(), result.agree
        else:
            client = load_client_round(args.trace, args.round, args.client)
            candidate = load_steps(args.candidate, client.model, layout)
            dataset = args.dataset or _dataset_of(args.trace)
            images = load_images(dataset)
            report = check_client_steps(candidate, client, images.x_train, images.y_train, tol,
                                        stop_at_first=not args.all_steps)
            text, data, agree = format_steps_report(report), report.to_dict(), report.agree
    except (UsageError, ValueError, TypeError, OSError, KeyError,
            zipfile.BadZipFile) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(data, indent=1) if args.json else text)
    return 0 if agree else 1


def add_subcommand(subparsers) -> None:
    """Register ``refsim compare-steps``."""
    sub = subparsers.add_parser(
        "compare-steps", help="check a candidate's local SGD steps (or server step) one at a "
                              "time from its own weights (exit 1 if one diverges)",
        description="Check each local SGD step w_j -> w_(j+1) of one client in one round, as "
                    "the candidate recorded it, against refsim's step from the candidate's own "
                    "w_j on the traced batch; or, with --server, the candidate's server step. "
                    "Exit 0 if all agree, 1 if one diverges, 2 on an input error. See "
                    "docs/validation.md.")
    sub.add_argument("candidate", metavar="CANDIDATE",
                     help="npz of step_<j>/<tensor> weights (or, with --server, start/, "
                          "update_<k>/ or client_<k>/, global/)")
    sub.add_argument("trace", metavar="TRACE", help="refsim run directory or its trace/")
    sub.add_argument("--round", type=int, required=True, help="the round t (1-based)")
    sub.add_argument("--client", type=int, default=None, help="the client k whose steps these are")
    sub.add_argument("--server", action="store_true", help="check the server step instead")
    sub.add_argument("--dataset", choices=DATASETS, default=None,
                     help="the training set the trace indexes (default: the run's, from its "
                          "summary.json, else mnist)")
    sub.add_argument("--c", type=float, default=C_DEFAULT,
                     help=f"tolerance factor c on the rounding scale (default {C_DEFAULT:g})")
    sub.add_argument("--floor-ulps", type=float, default=FLOOR_ULPS,
                     help=f"floor in ulps of each tensor's largest weight (default "
                          f"{FLOOR_ULPS:g})")
    sub.add_argument("--max-tries", type=int, default=64,
                     help="near-ties tried one at a time when a step exceeds its bound")
    sub.add_argument("--all-steps", action="store_true",
                     help="check every step, also after the first divergence")
    sub.add_argument("--layout", choices=[x.value for x in Layout], default=Layout.AUTO.value,
                     help="layout of the candidate's tensors (auto: decided by names and "
                          "shapes, as refsim compare does)")
    sub.add_argument("--json", action="store_true", help="print the full result as JSON")
    sub.set_defaults(func=compare_steps)
