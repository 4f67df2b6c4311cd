"""Preparing data for `transformers.Trainer`: text into causal-LM blocks (labels -100 wherever there is padding),
images into `pixel_values` for a given channel count and size, and an evaluation split that is never the training
split. The recipes' runner (`hf_clusterable.scripts.train`) uses these; so can any training script.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict


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
