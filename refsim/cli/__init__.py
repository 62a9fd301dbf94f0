"""The ``refsim`` command line: the only package that prints, reads files it is not handed by
path, and turns errors into exit codes. One module per subcommand:

``refsim info``   version, BLAS, backends, models (``info.py``)
``refsim run``    FedAvg on the embedded MNIST, the main job (``run.py``, ``run_settings.py``)
``refsim compare``  where two traces or weight files diverge (``compare.py``)
``refsim compare-steps``  each local SGD step of a candidate, from its own weights
                  (``compare_steps.py``)
``refsim golden`` write or check the golden vectors of ``docs/golden.md`` (``golden.py``)
``refsim flower-app``  the Flower app folder and the commands to run it (``flower_app.py``)
"""

from __future__ import annotations

import os
import sys

from refsim.cli import compare, compare_steps, flower_app, golden, info, run
from refsim.cli._common import ArgParser

__all__ = ["build_parser", "main"]


def build_parser() -> ArgParser:
    """The ``refsim`` parser with every subcommand registered."""
    parser = ArgParser(prog="refsim", description="refsim: a transparent reference simulator "
                                                  "for federated learning")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgParser)
    for module in (info, run, compare, compare_steps, golden, flower_app):
        module.add_subcommand(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, return its exit code.

    A reader that closes the output early (``refsim info | head -1``) ends the command with
    exit code 1 and no traceback, as the Python documentation advises for SIGPIPE: stdout is
    pointed at os.devnull so the interpreter's final flush cannot fail again."""
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be caught
        return code
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
