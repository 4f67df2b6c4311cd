"""The paper's modular-addition task, (a + b) mod p, as data, metrics, an analysis task, and the split record that
lets analysis rebuild the held-out pairs (the demo's trainer is in `examples.demo`).

Sequences are `[a, b, =, (a + b) mod p]` with labels -100 except the answer. With GPT-2's shifted causal-LM loss the
answer is predicted at the "=" position and nothing leaks: the answer token is only ever an input after the
prediction it is compared with.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from torch import nn

from ..analysis.tasks import Batch, Task, batched, logits_of
from ..utils.hub import resolve_file
from ..utils.io import atomic_write, json_text
from ..utils.validation import require_int
from .datasets import shuffled_split


# Saved next to a modular-addition model: how its pairs were split, so `analyze` rebuilds the same held-out set.
TASK_NAME = "task.json"


def modular_addition(p: int = 113, train_fraction: float = 0.3, seed: int = 0) -> DatasetDict:
    """All (a, b) pairs as `[a, b, =, (a + b) mod p]` with labels -100 except the answer, split at random."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}.")
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    answer = (a + b) % p
    ids = np.stack([a, b, np.full_like(a, p), answer], axis=1)
    labels = np.full_like(ids, -100)
    labels[:, 3] = answer
    split = shuffled_split(len(ids), train_fraction, seed)
    return DatasetDict(
        {name: Dataset.from_dict({"input_ids": ids[idx], "labels": labels[idx]}) for name, idx in split.items()}
    )


def answer_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`preprocess_logits_for_metrics` for modular addition: the predicted answer at the "=" position."""
    return logits[:, 2].argmax(-1)


def modular_addition_accuracy(eval_pred) -> dict[str, float]:
    """`compute_metrics` for modular addition (with `answer_logits` as `preprocess_logits_for_metrics`)."""
    predictions, labels = eval_pred
    return {"accuracy": float((np.asarray(predictions) == np.asarray(labels)[:, 3]).mean())}


# ---- analysis ----------------------------------------------------------------------------------------------------


def _predict_answer(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    ids = batch["input_ids"]
    return logits_of(model(input_ids=ids[:, :3]))[:, 2], ids[:, 3]  # the answer, predicted at "="


def modular_addition_task(
    p: int = 113, *, split: str = "test", train_fraction: float = 0.3, seed: int = 0, batch_size: int = 4096
) -> Task:
    """(a + b) mod p as an analysis `Task`; one category per answer value.

    `seed` and `train_fraction` must be the ones the model was trained with, or "test" holds training pairs
    (`load_modular_addition_split` reads them from a checkpoint's `task.json`).
    `split` is "test", "train" or "all".
    """
    require_int("batch_size", batch_size, 1)
    if split not in ("test", "train", "all"):
        raise ValueError(f"split must be 'test', 'train' or 'all', got {split!r}.")
    data = modular_addition(p=p, train_fraction=train_fraction, seed=seed).with_format("torch")
    parts = ["train", "test"] if split == "all" else [split]
    ids = torch.cat([data[s][:]["input_ids"] for s in parts])
    table = torch.cat([torch.arange(p), torch.tensor([-1])])  # token p is "=", never an answer
    return Task(
        "modular-addition", batched({"input_ids": ids}, batch_size), _predict_answer, table, list(map(str, range(p)))
    )


def save_modular_addition_split(output_dir: str | os.PathLike, *, p: int, train_fraction: float, seed: int) -> None:
    """Write `task.json` (task, p, train_fraction, seed) into `output_dir`, the folder of the trained model.

    The held-out pairs are fixed by these three numbers alone; Trainer keeps the seed only in its pickled
    `training_args.bin`, which analysis should not have to unpickle.
    """
    data = {"task": "modular_addition", "p": p, "train_fraction": train_fraction, "seed": seed}
    atomic_write(Path(output_dir, TASK_NAME), json_text(data))


def load_modular_addition_split(path_or_repo: str | os.PathLike) -> dict[str, Any] | None:
    """`{"p", "train_fraction", "seed"}` from the `task.json` of a model folder or Hub repo; None if it has none."""
    try:
        path = resolve_file(path_or_repo, TASK_NAME)
    except FileNotFoundError:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON: {err}") from err
    if not isinstance(data, dict) or data.get("task") != "modular_addition":
        raise ValueError(f"{path} does not describe a modular_addition split: {data!r}.")
    p, fraction, seed = data.get("p"), data.get("train_fraction"), data.get("seed")
    integers = all(isinstance(v, int) and not isinstance(v, bool) for v in (p, seed))
    if not (integers and p >= 2 and isinstance(fraction, (int, float)) and 0 < fraction < 1):
        raise ValueError(f"{path} needs an integer p >= 2, a train_fraction in (0, 1) and an integer seed: {data!r}.")
    return {"p": p, "train_fraction": float(fraction), "seed": seed}
