"""Datasets that exist offline, with their metrics: modular addition and scikit-learn's 8x8 digits.

Each returns a `datasets.DatasetDict` with a held-out `test` split, shaped for `transformers.Trainer`.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset, DatasetDict


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
    order = np.random.default_rng(seed).permutation(len(ids))
    cut = int(round(train_fraction * len(ids)))
    split = {"train": order[:cut], "test": order[cut:]}
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
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(round((1.0 - test_fraction) * len(images)))
    split = {"train": order[:cut], "test": order[cut:]}
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
