"""Offline by default: no test may reach the Hugging Face Hub (the stand-in Hub fixture opts back in)."""

import os


os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_EVALUATE_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

pytest_plugins = ["tests.fake_hub"]
