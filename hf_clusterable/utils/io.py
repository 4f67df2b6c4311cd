"""Writing files so that a crash or a bad argument never leaves a half-written file or a lost one.

Every file the package writes goes through `atomic_write`; every command checks its output paths with
`check_writable_folder` or `check_output_file` before it does any work.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write through a temp file in the same folder and rename, so a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable_folder(path: str | os.PathLike, flag: str) -> Path:
    """Fail before any work if `path` cannot be the folder we write into: it is a file, or its nearest existing
    ancestor is not a writable folder. Returns the path."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file; give a folder.")
    parent = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {path}: {parent} is not a writable folder.")
    return path


def check_output_file(value: str | os.PathLike | None, flag: str) -> Path | None:
    """Fail before any work if a file cannot be written at `value` (None: no file asked for)."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        raise ValueError(f"{flag} {value} is a folder; give a file path.")
    if not path.parent.exists():
        raise ValueError(f"{flag} {value}: folder {path.parent} does not exist; create it first.")
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"{flag} {value}: folder {path.parent} is not writable.")
    return path


def json_text(data: Any) -> str:
    """Indented JSON in which NaN and infinities (our "nothing to measure") are null, so strict parsers read it."""
    return json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"


def json_safe(data: Any) -> Any:
    """`data` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def check_output_dir(
    path: str | os.PathLike, flag: str, *, overwrite: bool, overwrite_flag: str = "--overwrite"
) -> Path:
    """The folder to write into, after refusing a file, an unwritable place, or a non-empty folder (unless
    `overwrite`), before any work is done."""
    out = check_writable_folder(path, flag)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(
            f"{flag} {path} is not empty; pass {overwrite_flag} to replace its files or choose another {flag}."
        )
    return out
