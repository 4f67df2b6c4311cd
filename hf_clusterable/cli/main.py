"""hf-clusterable command line: demo, train, measure, push, analyze, extract.

Each command checks its arguments and output paths before doing work, and a user error ends as one line on stderr
with exit status 2 instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import analyze, demo, extract, measure, push, train
from .flags import cli_message


COMMANDS = (demo, train, measure, push, analyze, extract)


class _StderrHandler(logging.Handler):
    """Writes to whatever `sys.stderr` is at the time, so redirection (and pytest's capture) is respected."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-clusterable", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    library_log = logging.getLogger("hf_clusterable")
    if not library_log.handlers:  # the library's progress lines (e.g. what a push uploads) go to stderr
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("hf-clusterable: %(message)s"))
        library_log.addHandler(handler)
        library_log.setLevel(logging.INFO)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ImportError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        message = cli_message(message, getattr(args, "flags", {}))  # parameter names as the command's flags
        print(f"hf-clusterable: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
