"""Writing files so that a crash or a bad argument never leaves a half-written file or a lost one.

Every file the package writes goes through `atomic_write`; every command checks its output paths with
`check_writable_folder` or `check_output_file` before it does any work.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any


TEMP_MARK = "hfc"  # in the name of every temporary file we write: `.NAME.hfc-PID-RANDOM.tmp`
_TEMP_NAME = re.compile(rf"\..+\.{TEMP_MARK}-(\d+)-[^.]+\.tmp")
_TEMP_NAME_EXTRA = len(f"..{TEMP_MARK}-4194304-12345678.tmp")  # what a temporary name adds to the file's name


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write through a temp file in the same folder, flushed to disk, then rename and sync the folder, so a crash
    or a power cut leaves either the old file or the new one, never a half-written one.

    Temporary files that a killed process of ours left in the folder are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{TEMP_MARK}-{os.getpid()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def sync_folder(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself has still happened
    finally:
        os.close(fd)


def remove_orphans(folder: str | os.PathLike) -> None:
    """Delete temporary files `atomic_write` left in `folder` when its process was killed mid-write.

    Only our own names (`.NAME.hfc-PID-RANDOM.tmp`) are touched, and only when process PID no longer runs, so a
    concurrent writer's file in progress is left alone.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        match = _TEMP_NAME.fullmatch(entry.name)
        if match and not process_alive(int(match.group(1))):
            Path(entry.path).unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """True when a process with this id runs on this machine (or its state cannot be told)."""
    if pid == os.getpid() or os.name == "nt":  # on Windows, os.kill ends the process: never probe there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or an id we cannot probe: keep the file
    return True


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
    """Fail before any work if a file cannot be written at `value` (None: no file asked for): a folder or a device
    is there, its folder is missing, is a file or is read-only, or its name is too long for a temporary name."""
    if value is None:
        return None
    path = Path(value).expanduser()
    if path.is_dir():
        raise ValueError(f"{flag} {value} is a folder; give a file path.")
    if path.exists() and not path.is_file():
        raise ValueError(f"{flag} {value} is not a regular file; give the path of a file to write.")
    parent = path.absolute().parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag} {value}: {existing} is a file, not a folder.")
    if existing != parent:
        raise ValueError(f"{flag} {value}: folder {path.parent} does not exist; create it first.")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{flag} {value}: folder {path.parent} is not writable.")
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    if len(os.fsencode(path.name)) + _TEMP_NAME_EXTRA > name_max:
        raise ValueError(f"{flag} {value}: the file name is too long (at most {name_max - _TEMP_NAME_EXTRA} bytes).")
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
