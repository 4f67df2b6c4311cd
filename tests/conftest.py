"""Offline by default: no test may reach the Hugging Face Hub (the stand-in Hub fixture opts back in)."""

import os


os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch


# Tiny test models gain nothing from a second thread, and a busy second core makes OpenMP spin-waits very slow.
torch.set_num_threads(1)

pytest_plugins = ["tests.fake_hub"]
