"""Offline by default: no test may reach the Hugging Face Hub (the stand-in Hub fixture opts back in)."""

import os
from pathlib import Path


os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

from tests.testing_utils import TINY_TYPES, tiny_model, tiny_tokenizer


# Tiny test models gain nothing from a second thread, and a busy second core makes OpenMP spin-waits very slow.
torch.set_num_threads(1)

pytest_plugins = ["tests.fake_hub"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny model per architecture, saved with a small byte-level BPE tokenizer trained on local prose."""
    wrapped = tiny_tokenizer()
    folders = {}
    for model_type in sorted(set(TINY_TYPES.values())):
        folder = tmp_path_factory.mktemp(model_type)
        extra = {"bos_token_id": 0, "eos_token_id": 0} if model_type == "gpt2" else {}
        tiny_model(model_type, vocab_size=len(wrapped), **extra).save_pretrained(folder)
        wrapped.save_pretrained(folder)
        folders[model_type] = folder
    return folders
