"""Datasets and their preparation for `transformers.Trainer`: offline ones, and text and images from files or the Hub.

The offline datasets (modular addition, scikit-learn's 8x8 digits, the stdlib's English prose) each return a
`datasets.DatasetDict` with a held-out split. The preparation helpers used by `hf_clusterable.train` turn raw text into
causal-LM blocks (labels -100 wherever there is padding) and images into `pixel_values` for a given channel count and
size, and pick an evaluation split that is never the training split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict


def _shuffled_split(n: int, train_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Indices of a seeded random train/test split; the offline datasets rebuild their held-out set from the seed."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(train_fraction * n))
    return {"train": order[:cut], "test": order[cut:]}


def modular_addition(p: int = 113, train_fraction: float = 0.3, seed: int = 0) -> DatasetDict:
    """All (a, b) pairs as `[a, b, =, (a + b) mod p]` with labels -100 except the answer, split at random.

    With GPT-2's shifted causal-LM loss the answer is predicted at the "=" position and nothing leaks: the answer
    token is only ever an input after the prediction it is compared with.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}.")
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    a, b = a.ravel(), b.ravel()
    answer = (a + b) % p
    ids = np.stack([a, b, np.full_like(a, p), answer], axis=1)
    labels = np.full_like(ids, -100)
    labels[:, 3] = answer
    split = _shuffled_split(len(ids), train_fraction, seed)
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


def digits(test_fraction: float = 0.25, seed: int = 0) -> DatasetDict:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), scaled to [0, 1]: an offline MNIST."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8)
    split = _shuffled_split(len(images), 1.0 - test_fraction, seed)
    return DatasetDict(
        {
            name: Dataset.from_dict({"pixel_values": images[idx], "labels": data.target[idx]}).with_format("torch")
            for name, idx in split.items()
        }
    )


def accuracy(eval_pred) -> dict[str, float]:
    """`compute_metrics` for classification."""
    logits, labels = eval_pred
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}


# ---- preparation for hf_clusterable.train -------------------------------------------------------------------------

# File extension -> `datasets` packaged builder.
FILE_BUILDERS = {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_files(train_file: str, validation_file: str | None = None) -> DatasetDict:
    """`train` (and `validation`) splits from local files: text, CSV, JSON (lines) or Parquet (images too)."""
    files = {"train": train_file, **({"validation": validation_file} if validation_file else {})}
    builders = set()
    for split, path in files.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"--{split}_file {path}: no such file.")
        builder = FILE_BUILDERS.get(Path(path).suffix.lower())
        if builder is None:
            raise ValueError(f"--{split}_file {path}: unsupported extension; use one of {sorted(FILE_BUILDERS)}.")
        builders.add(builder)
    if len(builders) > 1:
        raise ValueError(f"--train_file and --validation_file must have the same format, got {sorted(builders)}.")
    from datasets import load_dataset

    return load_dataset(builders.pop(), data_files=files)


def held_out_splits(
    raw: DatasetDict, train_split: str, eval_split: str | None, validation_fraction: float, seed: int
) -> tuple[Dataset, Dataset, str]:
    """(train, evaluation, name of the evaluation split): the named split, else `validation`, else `test`, else a
    `validation_fraction` carved out of the training split with `seed`. Never the training examples themselves."""
    if train_split not in raw:
        raise ValueError(f"no split {train_split!r} in the dataset (it has {sorted(raw)}); set --train_split.")
    if eval_split is not None:
        if eval_split == train_split:
            raise ValueError(f"--eval_split {eval_split!r} is the training split; evaluate on held-out data.")
        if eval_split not in raw:
            raise ValueError(f"no split {eval_split!r} in the dataset (it has {sorted(raw)}); set --eval_split.")
        return raw[train_split], raw[eval_split], eval_split
    for name in ("validation", "test"):
        if name in raw and name != train_split:
            return raw[train_split], raw[name], name
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"the dataset has no validation or test split and --validation_fraction is {validation_fraction}; "
            "set it in (0, 1) to hold out part of the training split."
        )
    parts = raw[train_split].train_test_split(test_size=validation_fraction, seed=seed, shuffle=True)
    return parts["train"], parts["test"], f"{train_split}[{validation_fraction:g} held out]"


def tokenize_for_causal_lm(
    dataset: Dataset, tokenizer, text_column: str, block_size: int, packing: bool, num_proc: int | None = None
) -> Dataset:
    """Tokenise `text_column` for next-token prediction.

    `packing` joins documents (each with the tokenizer's special tokens, e.g. Gemma's BOS, and ended by EOS) and
    cuts the stream into full blocks of `block_size` tokens, with labels equal to the inputs: no padding, nothing
    wasted (the last partial block is dropped). Otherwise every document is truncated to `block_size` and
    `DataCollatorForCausalLM` pads batches, masking padding with -100.
    Empty documents (WikiText's blank lines) are dropped either way.
    """
    if text_column not in dataset.column_names:
        raise ValueError(f"no column {text_column!r} in the data (it has {dataset.column_names}); set --text_column.")
    keep = lambda batch: [bool(text and text.strip()) for text in batch[text_column]]  # noqa: E731
    dataset = dataset.filter(keep, batched=True, num_proc=num_proc)
    eos = [tokenizer.eos_token_id] if packing and tokenizer.eos_token_id is not None else []

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        if not packing:
            return tokenizer(batch[text_column], truncation=True, max_length=block_size)
        ids = tokenizer(batch[text_column])["input_ids"]  # with the tokenizer's BOS, which Gemma and Llama need
        stream = [token for doc in ids for token in (*doc, *eos)]
        blocks = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    return dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, num_proc=num_proc)


class DataCollatorForCausalLM:
    """Pads `input_ids` to the longest example; labels are the inputs (or given labels) with -100 at the padding.

    Padding is found from the lengths, never by comparing with the pad id, so a real EOS that doubles as the pad
    token (GPT-2, Pythia) is still trained on.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), length), dtype=torch.long)
        labels = torch.full((len(features), length), -100, dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[i, :n] = torch.as_tensor(f["input_ids"])
            attention_mask[i, :n] = 1
            labels[i, :n] = torch.as_tensor(f.get("labels", f["input_ids"]))
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def image_transform(
    num_channels: int, image_size: int, image_column: str = "image", label_column: str = "label"
) -> Callable[[dict[str, list]], dict[str, list]]:
    """A `Dataset.with_transform` function: PIL images -> `pixel_values` (C, H, W) in [0, 1], and `labels`.

    Images are converted to grey (1 channel) or RGB (3) and resized to `image_size` when they differ, so e.g. 8x8
    digits or 28x28 MNIST can feed a model built for another size. No normalisation, as in the paper's code.
    """
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels must be 1 (grey) or 3 (RGB), got {num_channels}.")
    mode = "L" if num_channels == 1 else "RGB"

    def transform(batch: dict[str, list]) -> dict[str, list]:
        pixels = []
        for image in batch[image_column]:
            image = image.convert(mode)
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size))
            array = np.asarray(image, dtype=np.float32) / 255.0
            pixels.append(torch.from_numpy(array.reshape(image_size, image_size, num_channels)).permute(2, 0, 1))
        return {"pixel_values": pixels, "labels": batch[label_column]}

    return transform


def pydoc_dataset(validation_fraction: float = 0.05, seed: int = 0) -> DatasetDict:
    """English prose with no download: the stdlib's Python reference topics, paragraphs split into train/validation."""
    from .offline import pydoc_text

    parts = Dataset.from_dict({"text": pydoc_text()}).train_test_split(test_size=validation_fraction, seed=seed)
    return DatasetDict({"train": parts["train"], "validation": parts["test"]})
