"""``refsim golden``: write the golden vectors, or check a directory of them.

    refsim golden                regenerate every file here and check it against the copy
                                 shipped with refsim (does this install reproduce them?)
    refsim golden --out DIR      write the golden files and index.json into DIR
    refsim golden --check DIR    check DIR's files against the shipped copy

Checks print one line per file and exit 0 when every file passes, 1 otherwise; bad input
(a missing or unreadable directory or file, an --out directory holding other files) prints
one line ``refsim golden: error: ...`` on stderr and exits 2. Files, tolerances and the
checking rule: ``docs/golden.md``.
"""

from __future__ import annotations

import argparse
import sys

from refsim.validation.golden import FORMAT_VERSION, golden_files, read_golden_dir, write_golden
from refsim.validation.golden_check import check_files

__all__ = ["add_subcommand"]


def golden(args: argparse.Namespace) -> int:
    """Run ``refsim golden`` (see the module docstring); returns the exit code."""
    try:
        if args.out is not None:
            index = write_golden(args.out)
            print(f"wrote {len(index['files'])} golden files and index.json to {args.out} "
                  f"(format_version {index['format_version']})")
            return 0
        if args.check is not None:
            what, results = args.check, check_files(read_golden_dir(args.check))
        else:
            what, results = "a fresh regeneration", check_files(golden_files())
    except (ValueError, TypeError, OSError) as e:
        print(f"refsim golden: error: {e}", file=sys.stderr)
        return 2
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{r.name:<{width}}  {'ok  ' if r.ok else 'FAIL'}  {r.detail}")
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(results)} golden files of {what} fail: {', '.join(failed)}")
        return 1
    print(f"all {len(results)} golden files of {what} match the shipped copy "
          f"(format_version {FORMAT_VERSION})")
    return 0


def add_subcommand(subparsers) -> None:
    """Register ``refsim golden``."""
    sub = subparsers.add_parser(
        "golden", help="write or check the golden vectors (docs/golden.md)",
        description="Without options: regenerate the golden vectors and check them against the "
                    "copy shipped with refsim. Exit code 0: all match; 1: a file differs beyond "
                    "its tolerance; 2: bad input.")
    where = sub.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR",
                       help="write the golden files and index.json into DIR (new, empty, or "
                            "holding an earlier copy)")
    where.add_argument("--check", metavar="DIR",
                       help="check the golden files in DIR against the shipped copy")
    sub.set_defaults(func=golden)
