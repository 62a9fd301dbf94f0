"""``refsim compare A B``: do two sets of weights agree, round by round and tensor by tensor?

A is the candidate (for example your framework's weights) and B the reference (for example a
refsim trace); either may be a refsim run or trace directory, a ``checkpoint.npz``, a flat
``.npy`` vector, an ``.npz`` of named arrays (a PyTorch state dict included) or an ``.npz`` of
``round_<t>/<tensor>`` arrays (``refsim.validation.weight_files``). The differences and the
tolerance rule are defined in ``refsim.validation.compare``; ``docs/validation.md`` walks
through a validation.

Exit codes: 0 the inputs agree within the tolerance, 1 they diverge (the first divergence and
a per-round table are printed), 2 a usage or input error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import zipfile

from refsim.cli.compare_curves import compare_curves
from refsim.validation.compare import Comparison, RoundSummary, compare_paths
from refsim.validation.weight_files import Layout, WeightSeries

__all__ = ["add_subcommand", "compare", "format_report"]

PROG = "refsim compare"


def _rounds_text(rounds) -> str:
    """Ascending ints as ranges: (0, 1, 2, 5) -> '0-2, 5'; None (no round) -> '-'."""
    if not rounds or rounds[0] is None:
        return "-"
    runs = [[rounds[0], rounds[0]]]  # [first, last] of each run of consecutive rounds
    for r in rounds[1:]:
        if r == runs[-1][1] + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _describe(label: str, s: WeightSeries) -> list[str]:
    model = f", model {s.model}" if s.model else ""
    return [f"{label}: {s.path} ({s.kind}{model}, rounds {_rounds_text(s.rounds)}, "
            f"{'/'.join(s.dtypes)})",
            f"   read as: {s.mapping}"]


def _row(r: RoundSummary) -> str:
    label = "-" if r.round is None else str(r.round)
    return (f"{label:>5}  {r.num_tensors:>7}  {r.max_abs:>10.3g}  {r.max_rel:>10.3g}  "
            f"{r.num_exceeding_tensors:>15}  {r.worst_tensor or '-'}")


def format_report(c: Comparison, tolerance_note: str = "") -> str:
    """The text ``refsim compare`` prints: inputs, tolerance, per-round table, verdict."""
    lines = [*_describe("A", c.a), *_describe("B", c.b),
             f"tolerance: |a - b| <= atol + rtol * |b| elementwise (numpy.isclose), "
             f"rtol {c.rtol:g}, atol {c.atol:g}{tolerance_note}; NaN or Inf never agree"]
    if c.rounds_only_in_a:
        lines.append(f"not compared, only in A: rounds {_rounds_text(c.rounds_only_in_a)}")
    if c.rounds_only_in_b:
        lines.append(f"not compared, only in B: rounds {_rounds_text(c.rounds_only_in_b)}")
    lines += ["", "round  tensors   max |a-b|     max rel  tensors over tol  largest max rel"]
    lines += [_row(r) for r in c.by_round()]
    lines.append("")
    first = c.first_divergence
    if first is None:
        lines.append(f"AGREE: A matches B within the tolerance in {len(c.rounds)} round(s) x "
                     f"{len(c.diffs) // max(len(c.rounds), 1)} tensor(s)")
    else:
        where = "-" if first.round is None else first.round
        lines.append(f"first divergence: round {where}, tensor {first.name} {first.shape}: "
                     f"{first.num_exceeding} of {first.size} elements exceed; "
                     f"max |a-b| {first.max_abs:.3g}, max rel {first.max_rel:.3g}; "
                     f"worst element {list(first.worst_index)}: a = {first.worst_a!r}, "
                     f"b = {first.worst_b!r}")
        lines.append(f"DIVERGE: A and B differ beyond the tolerance from round {where}, "
                     f"tensor {first.name}")
        f32 = c.float32_divergence()
        if f32 is not None:
            last = "-" if f32["last_round"] is None else f32["last_round"]
            lines.append(f"float32: over the tolerance from round {where} (max rel "
                         f"{f32['max_rel_from']:.3g} there, {f32['max_rel_last']:.3g} at round "
                         f"{last}, the last compared).")
            lines += textwrap.wrap(f32["advice"] + ".", 96, initial_indent="  ",
                                   subsequent_indent="  ")
    return "\n".join(lines)


def compare(args: argparse.Namespace) -> int:
    """Run the comparison; print the report (or JSON); exit 0 agree, 1 diverge, 2 error."""
    if args.curves:
        return compare_curves(args)
    try:
        result = compare_paths(args.a, args.b, args.rtol, args.atol, Layout(args.layout))
    except (ValueError, TypeError, OSError, KeyError, zipfile.BadZipFile) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        given = args.rtol is not None or args.atol is not None
        print(format_report(result, "" if given else " (the dtype's default)"))
    return 0 if result.agree else 1


def add_subcommand(subparsers) -> None:
    """Register ``refsim compare``."""
    sub = subparsers.add_parser(
        "compare", help="compare two traces or weight files round by round (exit 1 if they "
                        "diverge)",
        description="Compare weights A (candidate) with B (reference) round by round and "
                    "tensor by tensor: exit 0 if they agree, 1 if they diverge, 2 on an "
                    "input error. See docs/validation.md.")
    sub.add_argument("a", metavar="A", help="candidate: trace or run directory, .npz or .npy")
    sub.add_argument("b", metavar="B", help="reference: trace or run directory, .npz or .npy")
    sub.add_argument("--rtol", type=float, default=None,
                     help="relative tolerance (default: 1e-9 for float64, 1e-4 for float32)")
    sub.add_argument("--atol", type=float, default=None,
                     help="absolute tolerance (default: 1e-12 for float64, 1e-6 for float32)")
    sub.add_argument("--layout", choices=[x.value for x in Layout], default=Layout.AUTO.value,
                     help="layout of named-array inputs: torch = a PyTorch state dict (dense "
                          "weights (out, in)); auto (default) decides by names and shapes")
    sub.add_argument("--json", action="store_true", help="print the full result as JSON")
    sub.add_argument("--curves", action="store_true",
                     help="compare A's per-round test-accuracy curve (a CSV with round and "
                          "test_accuracy columns) with refsim's seed band of the job B, rerun "
                          "with --seeds seeds (exit 1 if A leaves the band)")
    sub.add_argument("--seeds", type=int, default=5,
                     help="with --curves: refsim runs in the band, B's own seed included "
                          "(default 5)")
    sub.add_argument("--alpha", type=float, default=0.05,
                     help="with --curves: the band's level is 1 - alpha/R over R rounds "
                          "(default 0.05)")
    sub.set_defaults(func=compare)
