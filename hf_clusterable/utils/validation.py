"""Argument checks shared by the config, the core and the command line, each with one message format."""

from __future__ import annotations

from typing import Any


def require_int(name: str, value: Any, minimum: int, why: str = "") -> None:
    """One message for every integer setting: bools are refused (True is an int in Python), as are floats."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}{'; ' + why if why else ''}.")


def compile_regex(name: str, pattern: Any):
    """`pattern` compiled by the `regex` engine (Python's `re` syntax; matching can be given a time limit), or one
    line naming the setting and what is wrong with it."""
    import regex

    if not isinstance(pattern, str):
        raise TypeError(f"{name} must be a regex string, got {type(pattern).__name__} {pattern!r}.")
    try:
        return regex.compile(pattern)
    except (regex.error, OverflowError, RecursionError, ValueError) as err:
        raise ValueError(f"{name} {pattern!r} is not a valid regex: {err}.") from err
