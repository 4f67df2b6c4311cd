"""TRL's SFTTrainer and DPOTrainer with `ClusterabilityMixin` on a tiny GPT-2, offline: the logged metrics.

Shows what a TRL user sees: TRL's own metrics (`mean_token_accuracy`, `entropy`, `num_tokens`; `rewards/*` for
DPO) next to the loss's (`task_loss`, `cluster_loss`, `clusterability`, `clusterability_baseline`), with
clusterability rising from its baseline. The tokenizer is a small BPE trained here on the stdlib's prose; SFT runs
with SFTConfig's defaults (gradient checkpointing on) and packing off; DPO on a 16-pair preference set.

    python benchmarks/trl_runs.py [--sft-steps 20] [--dpo-steps 10]
"""

from __future__ import annotations

import argparse
import copy
import tempfile

import torch
from datasets import Dataset


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hf_clusterable.examples.offline import pydoc_text

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(pydoc_text()[:300], trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>", "<pad>"]))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>")


def tiny_gpt2(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2, n_inner=96)
    config.bos_token_id = config.eos_token_id = 0
    return GPT2LMHeadModel(config)


def show(name: str, trainer, keys: list[str]) -> None:
    print(f"\n{name}: gradient checkpointing {trainer.args.gradient_checkpointing}")
    print("| step | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for entry in trainer.state.log_history:
        if "loss" in entry:
            cells = [f"{entry[k]:.4g}" if k in entry else "-" for k in keys]
            print(f"| {entry['step']} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--dpo-steps", type=int, default=10)
    options = parser.parse_args()
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from hf_clusterable import ClusterabilityMixin, ClusterConfig
    from hf_clusterable.examples.offline import pydoc_text

    class ClusterableSFTTrainer(ClusterabilityMixin, SFTTrainer):
        pass

    class ClusterableDPOTrainer(ClusterabilityMixin, DPOTrainer):
        pass

    tok, out = tokenizer(), tempfile.mkdtemp()
    common = dict(report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True, learning_rate=3e-3, seed=0)
    ours = ["task_loss", "cluster_loss", "clusterability", "clusterability_baseline"]

    text = Dataset.from_dict({"text": [t for t in pydoc_text()[:400] if len(t) > 60][:64]})
    args = SFTConfig(out + "/sft", max_steps=options.sft_steps, logging_steps=5, per_device_train_batch_size=8,
                     max_length=64, packing=False, **common)  # fmt: skip
    sft = ClusterableSFTTrainer(model=tiny_gpt2(len(tok)), args=args, train_dataset=text, processing_class=tok,
                                cluster_config=ClusterConfig(loss_weight=20.0))  # fmt: skip
    sft.train()
    show("SFTTrainer + ClusterabilityMixin", sft, ["loss", *ours, "mean_token_accuracy", "entropy", "num_tokens"])

    prompts = ["The function", "A module", "The class", "An object"]
    chosen = [" returns a value.", " is imported once.", " defines methods.", " has a type."]
    rejected = [" zz qq zz", " xx xx yy", " qq yy qq", " yy zz xx"]
    pairs = Dataset.from_dict({"prompt": prompts * 4, "chosen": chosen * 4, "rejected": rejected * 4})
    policy = tiny_gpt2(len(tok))
    args = DPOConfig(out + "/dpo", max_steps=options.dpo_steps, logging_steps=5, per_device_train_batch_size=4,
                     **common)  # fmt: skip
    dpo = ClusterableDPOTrainer(model=policy, ref_model=copy.deepcopy(policy), args=args, train_dataset=pairs,
                                processing_class=tok, cluster_config=ClusterConfig(loss_weight=20.0))  # fmt: skip
    dpo.train()
    rewards = ["rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"]
    show("DPOTrainer + ClusterabilityMixin", dpo, ["loss", *ours, *rewards])


if __name__ == "__main__":
    main()
