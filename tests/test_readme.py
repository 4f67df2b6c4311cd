"""The README's quick start runs as written, on a tiny local Pythia-shaped model instead of the Hub one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from datasets import Dataset

from tests.testing_utils import random_tokens, tiny_model, tiny_tokenizer


README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start(heading: str = "## Quick start") -> str:
    text = README.read_text()
    section = text.split(heading, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"README.md has no python block under {heading!r}"
    return match.group(1)


def test_quick_start_runs(tmp_path, monkeypatch):
    code = quick_start()
    hub_id = '"EleutherAI/pythia-70m"'
    assert hub_id in code and "max_steps=1000" in code and "trainer.push_to_hub()" in code
    tiny_model("gpt_neox").save_pretrained(tmp_path / "pythia")
    code = code.replace(hub_id, repr(str(tmp_path / "pythia")))
    code = code.replace("max_steps=1000", "max_steps=2, per_device_train_batch_size=4, report_to=[]")
    code = code.replace("trainer.push_to_hub()", "pass")  # the Hub round trip is tests/test_hub.py's
    tokens = random_tokens(8)
    namespace = {"train_dataset": Dataset.from_dict({"input_ids": tokens, "labels": tokens})}
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), namespace)

    report = namespace["report"]
    assert 0 < report.baseline < report.mean <= 1  # rescored with the saved clusters
    assert (tmp_path / "pythia-70m-clustered" / "clusters.safetensors").is_file()


def test_trl_quick_start_runs(tmp_path, monkeypatch):
    pytest.importorskip("trl")
    from hf_clusterable.examples.offline import pydoc_text

    code = quick_start("## With TRL")
    hub_id = '"google/gemma-3-270m"'
    assert hub_id in code and "max_steps=500)" in code
    tokenizer = tiny_tokenizer()
    tiny_model("gemma3_text", vocab_size=len(tokenizer)).save_pretrained(tmp_path / "gemma")
    tokenizer.save_pretrained(tmp_path / "gemma")
    code = code.replace(hub_id, repr(str(tmp_path / "gemma")))
    code = code.replace("max_steps=500)", "max_steps=2, max_length=32, use_cpu=True, report_to=[], logging_steps=1)")
    namespace = {"train_dataset": Dataset.from_dict({"text": pydoc_text()[:16]})}
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), namespace)

    logs = namespace["trainer"].state.log_history
    assert {"mean_token_accuracy", "clusterability", "cluster_loss"} <= logs[0].keys()
    assert (tmp_path / "gemma-3-270m-sft-clustered" / "clusters.safetensors").is_file()


@pytest.mark.parametrize("name", ["ClusterConfig", "ClusterableTrainer", "ClusterabilityMixin", "measure"])
def test_quick_start_names_are_public(name):
    import hf_clusterable

    assert name in hf_clusterable.__all__ and hasattr(hf_clusterable, name)
