"""Local data files as `datasets` objects: one reader for training recipes and for analysis.

Text (`.txt`, one example per line), CSV, JSON / JSON lines and Parquet files go through the `datasets` packaged
builders (so images in Parquet decode as images); a folder is read with `load_from_disk`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


# File extension -> `datasets` packaged builder.
FILE_BUILDERS = {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_data_files(files: Mapping[str, str | os.PathLike], flags: Mapping[str, str] | None = None):
    """A `DatasetDict` with one split per entry of `files` ({split: path}); every file must have the same format.

    `flags` names, per split, the argument the path came from, so errors point at what the user typed.
    """
    flags = dict(flags or {})
    builders = set()
    for split, path in files.items():
        flag = flags.get(split, f"{split} file")
        if not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file.")
        builder = FILE_BUILDERS.get(Path(path).suffix.lower())
        if builder is None:
            raise ValueError(f"{flag} {path}: unsupported extension; use one of {sorted(FILE_BUILDERS)}.")
        builders.add(builder)
    if len(builders) > 1:
        raise ValueError(
            f"{' and '.join(flags.get(s, s) for s in files)} must have the same format, got {sorted(builders)}."
        )
    from datasets import load_dataset

    try:
        return load_dataset(builders.pop(), data_files={k: str(v) for k, v in files.items()})
    except Exception as err:  # datasets and pyarrow raise many types for a malformed file; all become one line
        raise ValueError(
            f"could not read {', '.join(map(str, files.values()))}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from err


def load_local_dataset(path: str | os.PathLike, split: str | None = None, flag: str = "--dataset"):
    """One `datasets.Dataset` from a `save_to_disk` folder or a data file; `split` picks a split of a folder (default
    test, else validation)."""
    from datasets import DatasetDict, load_from_disk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{flag} {path}: no such dataset file or folder.")
    if path.is_dir():
        try:
            data = load_from_disk(str(path))
        except Exception as err:  # not a save_to_disk folder, or a damaged one
            raise ValueError(f"could not read dataset {path}: {type(err).__name__}: {err}".splitlines()[0]) from err
    else:
        data = load_data_files({"data": path}, {"data": flag})["data"]
    if isinstance(data, DatasetDict):
        name = split or ("test" if "test" in data else "validation" if "validation" in data else None)
        if name not in data:
            raise ValueError(f"{path} holds splits {list(data)}; pick one with --split.")
        data = data[name]
    return data
