"""Argument checks shared by the config, the core and the command line, each with one message format."""

from __future__ import annotations

from typing import Any


def require_int(name: str, value: Any, minimum: int, why: str = "") -> None:
    """One message for every integer setting: bools are refused (True is an int in Python), as are floats."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}{'; ' + why if why else ''}.")
