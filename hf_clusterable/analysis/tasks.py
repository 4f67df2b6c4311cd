"""What `analysis` scores a model on: held-out examples, one prediction each, grouped into categories.

Every task turns a forward pass into `(logits, targets)` with one row per prediction (an image, a modular-addition
answer, one next token), so losses, accuracies, damage and attributions are computed the same way for all of them.
`label_category` maps every label id to a category (a class, an answer value, a token bucket); a *prediction* is
looked up in the same table, which is what a category's false-positive rate needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..utils.validation import require_int


TOKEN_CATEGORIES = ("frequency", "type")
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


def logits_of(output) -> torch.Tensor:
    """The logits of a model output, whether a `ModelOutput` or a plain tuple."""
    return output.logits if hasattr(output, "logits") else output[0]


def batched(columns: dict[str, torch.Tensor], batch_size: int) -> list[Batch]:
    """Equal-length columns cut into batches of `batch_size` rows (the last one may be shorter)."""
    n = len(next(iter(columns.values())))
    return [{k: v[i : i + batch_size] for k, v in columns.items()} for i in range(0, n, batch_size)]


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are, so evaluation batches can follow them."""
    return next(model.parameters()).device


def batch_to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device) for k, v in batch.items()}


# ---- classification --------------------------------------------------------------------------------------------


def _classify(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return logits_of(model(**inputs)), batch["labels"]


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
    return Task(name, batched(tensors, batch_size), _classify, torch.arange(len(label_names)), label_names)


# ---- causal language modelling ---------------------------------------------------------------------------------


def _next_token(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    logits = logits_of(model(input_ids=ids, attention_mask=mask))[:, :-1]
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
    batches = batched({"input_ids": ids, "attention_mask": mask}, batch_size)
    return Task("causal-lm", batches, _next_token, table, names)
