"""Local path or Hub repo id? One answer for every argument that may be either, and one way to fetch a file.

`huggingface_hub` is imported only when a file really has to come from the Hub, so the torch-only core never
loads it.
"""

from __future__ import annotations

import os
from pathlib import Path


def looks_local(name: str | os.PathLike) -> bool:
    """True when `name` can only be a local path: it starts with `.`, `/` or `~`, or has more than one `/`.

    Hub ids are `name` or `namespace/name`; anything else that exists on disk is local too.
    """
    text = os.fspath(name)
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or Path(text).expanduser().exists()


def require_local_or_repo(name: str | os.PathLike, flag: str, what: str = "folder") -> str:
    """`name` itself, after failing with one line when it looks like a local path that does not exist."""
    text = os.fspath(name)
    if looks_local(text) and not Path(text).expanduser().exists():
        raise FileNotFoundError(f"{flag} {text}: no such {what}; give a local {what} or a Hub id like 'org/name'.")
    return text


def hub_repo_id(name: str | None) -> str | None:
    """`name` if it can be a Hub repo id (for a card's `base_model`), None for local paths or missing names."""
    if not name or looks_local(name):
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def resolve_file(path_or_repo: str | os.PathLike, filename: str, subfolder: str | None = None, **hub_kwargs) -> str:
    """Local `path_or_repo/subfolder/filename` if it exists, else download it from the Hub repo `path_or_repo`."""
    local = Path(path_or_repo, subfolder or "", filename)
    if local.is_file():
        return str(local)
    if Path(path_or_repo).is_dir():
        raise FileNotFoundError(f"no {filename} in {Path(path_or_repo, subfolder or '')}; is this a clustered model?")
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(str(path_or_repo), filename, subfolder=subfolder, **hub_kwargs)
    except Exception as err:  # any Hub or network failure becomes one clear line
        raise FileNotFoundError(
            f"could not find {filename} locally or on the Hub at {path_or_repo!r}: {type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}"
        ) from err


def hub_download_kwargs() -> frozenset[str]:
    """Keyword arguments `hf_hub_download` takes besides the repo, file and subfolder (revision, token, ...)."""
    import inspect

    from huggingface_hub import hf_hub_download

    return frozenset(inspect.signature(hf_hub_download).parameters) - {"repo_id", "filename", "subfolder"}
