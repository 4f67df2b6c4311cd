"""Checkpoint folders and the secrets that must stay out of them.

Kept apart from the mixin so the recipe runner can find the newest complete checkpoint without building a trainer,
and because "which checkpoint is whole?" and "what never gets pickled?" are questions about files, not about the loss.
"""

from __future__ import annotations

import os
import re
import warnings

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


# Trainer writes this last into a checkpoint: a folder without it was cut off while saving.
_STATE_FILE = "trainer_state.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class HubToken(str):
    """`args.hub_token` that pickles as None: Trainer pickles its args into training_args.bin, which pushes upload."""

    def __reduce__(self):
        return type(None), ()

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __repr__(self) -> str:
        return "'<HUB_TOKEN>'"


def last_complete_checkpoint(folder: str) -> str | None:
    """The newest `checkpoint-N` in `folder` that was written to the end (holds `trainer_state.json`), or None."""
    if not os.path.isdir(folder):
        return None
    steps = [(int(m.group(1)), name) for name in os.listdir(folder) if (m := _CHECKPOINT.match(name))]
    for _, name in sorted(steps, reverse=True):
        path = os.path.join(folder, name)
        if os.path.isfile(os.path.join(path, _STATE_FILE)):
            return path
        warnings.warn(f"skipping {path}: it holds no {_STATE_FILE}, so its save was cut off.", stacklevel=3)
    return None


def holds_checkpoints(folder: str) -> bool:
    """Whether `folder` holds any `checkpoint-N` (complete or not): a run writing there would overwrite them."""
    return os.path.isdir(folder) and any(_CHECKPOINT.match(name) for name in os.listdir(folder))
