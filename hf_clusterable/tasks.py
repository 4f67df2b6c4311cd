"""What `analysis` scores a model on: held-out examples, one prediction each, grouped into categories.

Every task turns a forward pass into `(logits, targets)` with one row per prediction (an image, a modular-addition
answer, one next token), so losses, accuracies, damage and attributions are computed the same way for all of them.
`label_category` maps every label id to a category (a class, an answer value, a token bucket); a *prediction* is
looked up in the same table, which is what a category's false-positive rate needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import atomic_write, require_int, resolve_file


TOKEN_CATEGORIES = ("frequency", "type")
# Saved next to a modular-addition model: how its pairs were split, so `analyze` rebuilds the same held-out set.
TASK_NAME = "task.json"
Batch = dict[str, torch.Tensor]


@dataclass
class Task:
    """Fixed evaluation batches, how to read predictions from them, and the category of every label id.

    Args:
        name (`str`): shown in reports.
        batches (`list[dict[str, torch.Tensor]]`): the evaluation data, already batched (moved to the model's
            device on the fly).
        predict (`Callable`): `(model, batch) -> (logits (N, V), targets (N,))`, one row per prediction.
        label_category (`torch.Tensor`): `(n_labels,)` category index of every label id, -1 for none (ids past the
            end count as none, so a prediction outside the table is in no category).
        category_names (`list[str]`): one name per category.
    """

    name: str
    batches: list[Batch]
    predict: Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor]]
    label_category: torch.Tensor
    category_names: list[str]

    @property
    def n_categories(self) -> int:
        return len(self.category_names)

    def category_of(self, ids: torch.Tensor) -> torch.Tensor:
        """Category of each label id (or predicted id); -1 for ids outside the table."""
        table = self.label_category.to(ids.device)
        inside = (ids >= 0) & (ids < table.numel())
        return torch.where(inside, table[ids.clamp(0, table.numel() - 1)], torch.full_like(ids, -1))


def _logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output[0]


def _batched(columns: dict[str, torch.Tensor], batch_size: int) -> list[Batch]:
    n = len(next(iter(columns.values())))
    return [{k: v[i : i + batch_size] for k, v in columns.items()} for i in range(0, n, batch_size)]


# ---- classification --------------------------------------------------------------------------------------------


def _classify(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return _logits(model(**inputs)), batch["labels"]


def classification_task(
    dataset, *, batch_size: int = 256, label_names: list[str] | None = None, name: str = "classification"
) -> Task:
    """One category per class, from a `datasets.Dataset` with the model's input column(s) and integer `labels`.

    Every column other than `labels` (or `label`) is passed to the model by name, e.g. `pixel_values`.
    """
    require_int("batch_size", batch_size, 1)
    columns = list(getattr(dataset, "column_names", None) or [])
    label = "labels" if "labels" in columns else "label" if "label" in columns else None
    if label is None:
        raise ValueError(
            f"the dataset has no 'labels' column (columns: {columns}); cluster ablation and circuit sizes need "
            "labelled examples."
        )
    if len(dataset) == 0:
        raise ValueError("the dataset is empty.")
    data = dataset.with_format("torch")[:]  # every column as one tensor
    tensors = {("labels" if c == label else c): data[c] for c in columns}
    ragged = [c for c, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if ragged:
        raise ValueError(f"columns {ragged} are not numeric arrays of one shape; preprocess them into model inputs.")
    labels = tensors["labels"]
    if labels.dtype.is_floating_point or labels.ndim != 1 or int(labels.min()) < 0:
        raise ValueError(f"'{label}' must hold one non-negative integer class per example, got {labels.dtype}.")
    n_labels = int(labels.max()) + 1
    if label_names is None:
        feature = getattr(dataset, "features", {}).get(label)
        label_names = list(getattr(feature, "names", None) or [str(i) for i in range(n_labels)])
    label_names = list(label_names)
    if len(label_names) < n_labels:
        raise ValueError(f"{len(label_names)} label names for {n_labels} classes.")
    return Task(name, _batched(tensors, batch_size), _classify, torch.arange(len(label_names)), label_names)


# ---- modular addition ------------------------------------------------------------------------------------------


def _modular_addition(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    ids = batch["input_ids"]
    return _logits(model(input_ids=ids[:, :3]))[:, 2], ids[:, 3]  # the answer, predicted at "="


def modular_addition_task(
    p: int = 113, *, split: str = "test", train_fraction: float = 0.3, seed: int = 0, batch_size: int = 4096
) -> Task:
    """(a + b) mod p from `data.modular_addition`; one category per answer value.

    `seed` and `train_fraction` must be the ones the model was trained with, or "test" holds training pairs
    (`load_modular_addition_split` reads them from a checkpoint's `task.json`).
    `split` is "test", "train" or "all".
    """
    from .data import modular_addition

    require_int("batch_size", batch_size, 1)
    if split not in ("test", "train", "all"):
        raise ValueError(f"split must be 'test', 'train' or 'all', got {split!r}.")
    data = modular_addition(p=p, train_fraction=train_fraction, seed=seed).with_format("torch")
    parts = ["train", "test"] if split == "all" else [split]
    ids = torch.cat([data[s][:]["input_ids"] for s in parts])
    table = torch.cat([torch.arange(p), torch.tensor([-1])])  # token p is "=", never an answer
    return Task(
        "modular-addition",
        _batched({"input_ids": ids}, batch_size),
        _modular_addition,
        table,
        list(map(str, range(p))),
    )


def save_modular_addition_split(output_dir: str | os.PathLike, *, p: int, train_fraction: float, seed: int) -> None:
    """Write `task.json` (task, p, train_fraction, seed) into `output_dir`, the folder of the trained model.

    The held-out pairs are fixed by these three numbers alone; Trainer keeps the seed only in its pickled
    `training_args.bin`, which analysis should not have to unpickle.
    """
    data = {"task": "modular_addition", "p": p, "train_fraction": train_fraction, "seed": seed}
    atomic_write(Path(output_dir, TASK_NAME), json.dumps(data, indent=2) + "\n")


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


# ---- causal language modelling ---------------------------------------------------------------------------------


def _next_token(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = _logits(model(input_ids=ids, attention_mask=mask))[:, :-1]
    keep = mask[:, 1:].bool() & mask[:, :-1].bool()  # pads are neither inputs nor targets
    return logits[keep], ids[:, 1:][keep]


def frequency_categories(targets: torch.Tensor, n_buckets: int = 4) -> tuple[torch.Tensor, list[str]]:
    """Bucket token ids by how often they are targets: each bucket holds about 1/n of all target occurrences.

    Bucket 1 is a handful of very frequent tokens, the last one the long tail; tokens that never occur get -1.
    Buckets left empty (one token above 1/n of the text) are dropped.
    """
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}.")
    counts = torch.bincount(targets.flatten(), minlength=1)
    order = torch.argsort(counts, descending=True, stable=True)
    order = order[counts[order] > 0]
    before = torch.cumsum(counts[order], 0) - counts[order]  # occurrences of more frequent tokens
    bucket = (before * n_buckets).div(counts.sum(), rounding_mode="floor").clamp(max=n_buckets - 1)
    used, bucket = torch.unique(bucket, return_inverse=True)
    table = torch.full((counts.numel(),), -1, dtype=torch.long)
    table[order] = bucket
    names = []
    for j in range(len(used)):
        members = table == j
        share = counts[members].sum() / counts.sum()
        names.append(f"freq{j + 1} ({int(members.sum())} tokens, {share:.0%} of targets)")
    return table, names


def _piece_type(piece: str, text: str) -> str:
    word_start = piece.startswith(("Ġ", "▁", " ")) or text.startswith(("Ġ", "▁", " "))
    stripped = text.lstrip("Ġ▁").strip()  # tokenizers without a decoder leave the word-start marker in
    if not stripped:
        return "whitespace"
    if any(c.isalpha() for c in stripped):
        return "word start" if word_start else "word continuation"
    if any(c.isdigit() for c in stripped):
        return "number"
    return "punctuation"


TOKEN_TYPES = ("word start", "word continuation", "number", "punctuation", "whitespace", "special")


def type_categories(tokenizer) -> tuple[torch.Tensor, list[str]]:
    """Category of every token by what it spells: a word start (leading space), a word continuation, a number,
    punctuation, whitespace, or a special token."""
    special = set(tokenizer.all_special_ids)
    vocab = len(tokenizer)
    table = torch.empty(vocab, dtype=torch.long)
    for i in range(vocab):
        if i in special:
            kind = "special"
        else:
            kind = _piece_type(tokenizer.convert_ids_to_tokens(i) or "", tokenizer.decode([i]))
        table[i] = TOKEN_TYPES.index(kind)
    return table, list(TOKEN_TYPES)


def _drop_empty(table: torch.Tensor, names: list[str], targets: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """Renumber categories so only those that occur among the targets remain."""
    present = torch.zeros(len(names), dtype=torch.bool)
    cats = table[targets[(targets >= 0) & (targets < table.numel())]]
    present[cats[cats >= 0]] = True
    new_index = torch.cumsum(present.long(), 0) - 1
    table = torch.where(table >= 0, torch.where(present[table.clamp(min=0)], new_index[table.clamp(min=0)], -1), -1)
    return table, [n for n, keep in zip(names, present.tolist(), strict=True) if keep]


def causal_lm_task(
    dataset,
    *,
    tokenizer=None,
    categories: str = "frequency",
    n_buckets: int = 4,
    text_column: str = "text",
    max_length: int = 128,
    max_examples: int | None = None,
    batch_size: int = 16,
) -> Task:
    """Next-token prediction on held-out text; one category per token bucket (`categories="frequency"`) or token
    type (`"type"`, needs the tokenizer), assigned by the token being predicted.

    `dataset` is a `datasets.Dataset` with `input_ids` (token lists) or a text column (tokenized with `tokenizer`,
    truncated to `max_length`), or a list of token-id lists. Pads are never scored, and sequences shorter than two
    tokens are skipped.
    """
    require_int("batch_size", batch_size, 1)
    if categories not in TOKEN_CATEGORIES:
        raise ValueError(f"categories must be one of {TOKEN_CATEGORIES}, got {categories!r}.")
    if categories == "type" and tokenizer is None:
        raise ValueError("token-type categories need the model's tokenizer; use categories='frequency' without one.")
    if isinstance(dataset, (list, tuple)):
        rows = [list(map(int, r)) for r in dataset]
    else:
        columns = list(getattr(dataset, "column_names", None) or [])
        if "input_ids" in columns:
            rows = [list(map(int, r)) for r in dataset["input_ids"]]
        elif text_column in columns:
            if tokenizer is None:
                raise ValueError(
                    f"the dataset holds text ('{text_column}') but there is no tokenizer; save one with the model "
                    "or give pre-tokenized 'input_ids'."
                )
            texts = [t for t in dataset[text_column] if isinstance(t, str) and t.strip()]
            rows = tokenizer(texts, truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"]
        else:
            raise ValueError(
                f"the dataset has neither 'input_ids' nor a '{text_column}' column (columns: {columns}); "
                "give tokenized ids or text (--text-column)."
            )
    rows = [r[:max_length] for r in rows if len(r) >= 2]
    if max_examples is not None:
        rows = rows[:max_examples]
    if not rows:
        raise ValueError("the dataset has no sequence of two or more tokens to predict.")
    if min(min(r) for r in rows) < 0:
        raise ValueError("token ids must be non-negative.")
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    targets = ids[:, 1:][mask[:, 1:].bool()]
    if categories == "frequency":
        table, names = frequency_categories(targets, n_buckets)
    else:
        table, names = _drop_empty(*type_categories(tokenizer), targets)
    batches = _batched({"input_ids": ids, "attention_mask": mask}, batch_size)
    return Task("causal-lm", batches, _next_token, table, names)


# ---- local files -----------------------------------------------------------------------------------------------


def load_local_dataset(path: str | os.PathLike, split: str | None = None):
    """A `datasets.Dataset` from a `save_to_disk` folder, or a .json/.jsonl/.csv/.parquet/.txt file (one text per
    non-empty line)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such dataset file or folder.")
    try:
        if path.is_dir():
            data = load_from_disk(str(path))
        elif path.suffix in (".json", ".jsonl"):
            data = Dataset.from_json(str(path))
        elif path.suffix == ".csv":
            data = Dataset.from_csv(str(path))
        elif path.suffix == ".parquet":
            data = Dataset.from_parquet(str(path))
        elif path.suffix == ".txt":
            lines = [line for line in path.read_text().splitlines() if line.strip()]
            data = Dataset.from_dict({"text": lines})
        else:
            raise ValueError(
                f"{path}: unsupported dataset format; use a save_to_disk folder or .json/.jsonl/.csv/.parquet/.txt."
            )
    except ValueError:
        raise
    except Exception as err:  # datasets and pyarrow raise many types for a malformed file; all become one line
        raise ValueError(
            f"could not read dataset {path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    if isinstance(data, DatasetDict):
        name = split or ("test" if "test" in data else "validation" if "validation" in data else None)
        if name not in data:
            raise ValueError(f"{path} holds splits {list(data)}; pick one with --split.")
        data = data[name]
    return data
