"""Run with torchrun (2 processes, DS_ACCELERATOR=cpu): ClusterableTrainer under DeepSpeed ZeRO-3.

Weights are empty placeholders outside each module's forward under ZeRO-3; the loss must still see the whole
matrices and send its gradient to DeepSpeed's partitions. Same set-up as ddp_check.py (2 SGD steps, global batch 4);
rank 0 writes the final gathered weights, partitions and logs.
"""

import gc
import json
import os
import sys
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import TrainingArguments

from hf_clusterable import ClusterConfig, save_clusters
from hf_clusterable.training.trainer import ClusterableTrainer
from tests.testing_utils import NO_DROPOUT, pattern_data, tiny_model


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    model = tiny_model("gpt2", **NO_DROPOUT)  # before TrainingArguments(deepspeed=...), which arms zero.Init
    args = TrainingArguments(
        output_dir=str(out / "run"),
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=2,
        max_steps=int(os.environ.get("CHECK_STEPS", "2")),
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        deepspeed={
            "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto",
            "zero_allow_untested_optimizer": True,
        },
    )
    trainer = ClusterableTrainer(
        model=model,
        args=args,
        train_dataset=pattern_data(4),
        cluster_config=ClusterConfig(loss_weight=30.0),
        optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.5}),
    )
    trainer.train()
    params = list(trainer.model.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        weights = {n: p.detach().clone().contiguous() for n, p in trainer.model.named_parameters()}
    if trainer.accelerator.is_main_process:
        save_file(weights, str(out / "weights_rank0.safetensors"))
        (out / "clusters_rank0").mkdir(exist_ok=True)
        save_clusters(out / "clusters_rank0", trainer.partitions)
        info = {"world": trainer.accelerator.num_processes, "logs": trainer.state.log_history}
        (out / "logs.json").write_text(json.dumps(info))
    trainer.accelerator.wait_for_everyone()
    # Free DDP's reducer while every peer is alive: left to interpreter exit, its gloo group's destructor can wait
    # forever on a peer that has already gone.
    del trainer
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
