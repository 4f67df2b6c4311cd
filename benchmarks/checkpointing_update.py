"""One SGD step with gradient checkpointing against the same step without it: max |difference| of the update.

A tiny GPT-2 (2 layers, 32 wide, no dropout) takes one `ClusterableTrainer` step (SGD, lr 0.5, lambda = 30 so the
regulariser dominates the update) on 8 sequences; every trainable parameter's change is compared with the same step
without checkpointing, for reentrant and non-reentrant checkpointing, set through `TrainingArguments` or
`model.gradient_checkpointing_enable()`, with gradient accumulation (4 x 2), LoRA, bf16 autocast and `torch_compile`.

    python benchmarks/checkpointing_update.py [--skip-compile]
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import torch


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=64, n_embd=32, n_layer=2, n_head=2, n_inner=96, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(config)


def data(n: int = 8, length: int = 16):
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    seq = [torch.randint(0, 63, (n, 1), generator=g)]
    for _ in range(length - 1):
        seq.append((seq[-1] * 3 + 1) % 63)
    ids = torch.cat(seq, 1).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def one_step(kind=None, via="args", ga=1, lora=False, bf16=False, compile=False) -> dict[str, torch.Tensor]:
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    from hf_clusterable import ClusterableTrainer, ClusterConfig

    model = tiny_gpt2()
    if lora:
        config = LoraConfig(r=4, target_modules=["c_fc", "c_proj"], fan_in_fan_out=True, init_lora_weights=False)
        model = get_peft_model(model, config)
    extra = {}
    if kind and via == "args":
        extra = dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": kind == "reentrant"})
    elif kind:
        base = model.get_base_model() if lora else model
        base.gradient_checkpointing_enable({"use_reentrant": kind == "reentrant"})
        if kind == "reentrant":
            base.enable_input_require_grads()
    args = TrainingArguments(tempfile.mkdtemp(), report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
                             per_device_train_batch_size=8 // ga, gradient_accumulation_steps=ga, max_steps=1,
                             bf16=bf16, torch_compile=compile, seed=0, **extra)  # fmt: skip
    trainer = ClusterableTrainer(model=model, args=args, train_dataset=data(),
                                 cluster_config=ClusterConfig(loss_weight=30.0, init="blocks"),
                                 optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.5}))  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    return {n: (p.detach() - before[n]).float() for n, p in model.named_parameters() if p.requires_grad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-compile", action="store_true")
    options = parser.parse_args()
    warnings.filterwarnings("ignore")
    settings = {"TrainingArguments": {}, "gradient_checkpointing_enable()": {"via": "model"},
                "gradient accumulation 4 x 2": {"ga": 4}, "LoRA r=4": {"lora": True},
                "bf16 autocast": {"bf16": True}}  # fmt: skip
    if not options.skip_compile:
        settings["torch_compile"] = {"compile": True}
    print("| setting | max abs update | reentrant: max abs difference | non-reentrant: max abs difference |")
    print("|---|---|---|---|")
    for name, setting in settings.items():
        without = one_step(**{k: v for k, v in setting.items() if k != "via"})
        diffs = []
        for kind in ("reentrant", "non-reentrant"):
            got = one_step(kind, **setting)
            diffs.append(max(float((got[n] - without[n]).abs().max()) for n in without))
        size = max(float(u.abs().max()) for u in without.values())
        print(f"| {name} | {size:.3e} | {diffs[0]:.1e} | {diffs[1]:.1e} |", flush=True)


if __name__ == "__main__":
    main()
