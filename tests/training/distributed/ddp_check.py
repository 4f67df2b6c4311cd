"""Run with `accelerate launch --multi_gpu --num_processes 2` on CPU: ClusterableTrainer under DDP (gloo).

Trains 2 SGD steps on a 4-example dataset with global batch 4 (2 per process), so every step sees the same examples
as a single process with batch 4. Each rank writes its final weights and partitions; rank 0 also writes the logs.
"""

import gc
import json
import os
import sys
from pathlib import Path

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
    args = TrainingArguments(
        output_dir=str(out / "run"),
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=2,
        max_steps=int(os.environ.get("CHECK_STEPS", "2")),
        logging_steps=1,
        disable_tqdm=True,
        ddp_find_unused_parameters=False,
        seed=0,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = ClusterableTrainer(
        model=tiny_model("gpt2", **NO_DROPOUT),
        args=args,
        train_dataset=pattern_data(4),
        cluster_config=ClusterConfig(loss_weight=30.0),
        optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.5}),
    )
    trainer.train()
    rank = trainer.accelerator.process_index
    weights = {n: p.detach().contiguous() for n, p in trainer.model.named_parameters()}
    save_file(weights, str(out / f"weights_rank{rank}.safetensors"))
    (out / f"clusters_rank{rank}").mkdir(exist_ok=True)
    save_clusters(out / f"clusters_rank{rank}", trainer.partitions)
    if rank == 0:
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
