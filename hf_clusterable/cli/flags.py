"""Error messages phrased for the command line.

The library names its own parameters in its errors (`n_clusters must be ...`, `pick one with gguf_file`), which is
right for Python callers. Each command maps those names to the flags a user types (`-k/--clusters`,
`--gguf-file`): every option whose destination is a Python-style name (`max_steps` -> `--max-steps`) maps itself,
and a command adds aliases for parameters spelled differently from its options (`n_clusters`, `coupled=False`).
`cli.main` rewrites the message of any error a command raises through its map, so no message is written twice.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping


def parameter_flags(parser: argparse.ArgumentParser, aliases: Mapping[str, str] | None = None) -> dict[str, str]:
    """Parameter name -> flag(s) as written in help, for every option of `parser` whose destination contains an
    underscore (a name that cannot be an ordinary word), plus `aliases` (which win)."""
    flags = {}
    for action in parser._actions:  # argparse has no public accessor for a parser's options
        if action.option_strings and "_" in action.dest:
            flags[action.dest] = "/".join(sorted(action.option_strings, key=len))
    return {**flags, **(aliases or {})}


def cli_message(message: str, flags: Mapping[str, str]) -> str:
    """`message` with every parameter name of `flags` that stands alone (not part of a word, a path, a module name
    or a quoted value) replaced by its flag; `name=value` becomes `flag value`."""
    if not flags:
        return message
    names = sorted(flags, key=len, reverse=True)  # `coupled=False` before `coupled`
    pattern = re.compile(
        r"(?<![\w\-./'\"`])(" + "|".join(map(re.escape, names)) + r")(?:(=)(?=[^\s=])|(?![\w'\"`(=]))"
    )
    return pattern.sub(lambda m: flags[m.group(1)] + (" " if m.group(2) else ""), message)
