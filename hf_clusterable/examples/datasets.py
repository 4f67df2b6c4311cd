"""Offline datasets for the paper's example tasks: scikit-learn's 8x8 digits (an offline MNIST), English prose
from the standard library, and chat-formatted questions and answers built from that prose. Each returns a
`datasets.DatasetDict` with a held-out split fixed by a seed.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset, DatasetDict


def shuffled_split(n: int, train_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Indices of a seeded random train/test split; the offline datasets rebuild their held-out set from the seed."""
    order = np.random.default_rng(seed).permutation(n)
    cut = int(round(train_fraction * n))
    return {"train": order[:cut], "test": order[cut:]}


def digits(test_fraction: float = 0.25, seed: int = 0) -> DatasetDict:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes), scaled to [0, 1]: an offline MNIST."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8)
    split = shuffled_split(len(images), 1.0 - test_fraction, seed)
    return DatasetDict(
        {
            name: Dataset.from_dict({"pixel_values": images[idx], "labels": data.target[idx]}).with_format("torch")
            for name, idx in split.items()
        }
    )


def held_out(data: Dataset, validation_fraction: float, seed: int) -> DatasetDict:
    """`train` and `validation` splits of `data`, the same for a given seed (recipes name the split `validation`)."""
    parts = data.train_test_split(test_size=validation_fraction, seed=seed)
    return DatasetDict({"train": parts["train"], "validation": parts["test"]})


def pydoc_dataset(validation_fraction: float = 0.05, seed: int = 0) -> DatasetDict:
    """English prose with no download: the stdlib's Python reference topics, paragraphs split into train/validation."""
    from .offline import pydoc_text

    return held_out(Dataset.from_dict({"text": pydoc_text()}), validation_fraction, seed)


def pydoc_chat_dataset(validation_fraction: float = 0.05, seed: int = 0, paragraphs: int = 2) -> DatasetDict:
    """Chat-formatted SFT data with no download, in TRL's conversational prompt-completion format.

    Each example asks about one topic of the stdlib's Python reference (`pydoc_data.topics`: keywords, statements,
    types) and answers with one of its paragraphs, verbatim: `{"prompt": [user turn], "completion": [assistant
    turn]}`. Up to `paragraphs` examples per topic. The answers are real reference prose; the questions are a
    template, so the data teaches the reference text in a chat format, nothing more.
    """
    from .offline import pydoc_topics

    prompts, completions = [], []
    for key, kept in pydoc_topics().items():
        for i, answer in enumerate(kept[:paragraphs]):
            more = "" if i == 0 else " Tell me more."
            question = f"What does the Python reference say about '{key}'?{more}"
            prompts.append([{"role": "user", "content": question}])
            completions.append([{"role": "assistant", "content": answer}])
    return held_out(Dataset.from_dict({"prompt": prompts, "completion": completions}), validation_fraction, seed)
