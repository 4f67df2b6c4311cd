"""Peak training memory with and without gradient checkpointing, with and without the clusterability loss.

GPT-2-small shape (12 layers, 768 wide, 3072 MLP), one `Trainer` / `ClusterableTrainer` optimizer step (SGD, so no
optimizer state) at batch x seq tokens, each configuration in a fresh process, rounds interleaved; the table holds
the median over rounds of

- CUDA: `torch.cuda.max_memory_allocated()` during training minus the memory allocated when training began;
- CPU: the peak resident set during training (`VmHWM`, reset at the start of training through
  `/proc/self/clear_refs`) minus the resident set when training began. Workers run with glibc's malloc told to map
  every block above 128 KiB on its own and give freed memory back at once (`MALLOC_MMAP_THRESHOLD_`,
  `MALLOC_TRIM_THRESHOLD_`), so the resident set follows the live tensors instead of the allocator's caches.

Both are what training adds on top of the loaded model: activations, gradients and temporaries. Checkpointing
should cut the activations; the loss should add little either way.

    python benchmarks/checkpointing_memory.py [--device cuda] [--batch 2] [--seq 512] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch


CONFIGS = {
    "Trainer": ("plain", None),
    "Trainer + checkpointing (non-reentrant)": ("plain", False),
    "Trainer + checkpointing (reentrant)": ("plain", True),
    "ClusterableTrainer": ("ours", None),
    "ClusterableTrainer + checkpointing (non-reentrant)": ("ours", False),
    "ClusterableTrainer + checkpointing (reentrant)": ("ours", True),
}


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MiB
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(name: str, device: str, batch: int, seq: int) -> None:
    """One optimizer step of one configuration in this process; prints the memory it added as JSON."""
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

    from hf_clusterable import ClusterConfig
    from hf_clusterable.training.trainer import ClusterableTrainer

    kind, reentrant = CONFIGS[name]
    torch.manual_seed(0)
    ids = torch.randint(0, 50257, (batch, seq)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    config = GPT2Config(n_embd=768, n_layer=12, n_head=12, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config)
    start = {}

    class Mark(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                start["mib"] = torch.cuda.memory_allocated() / 2**20
            else:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current resident set
                start["mib"] = _status_mib("VmRSS")

    args = TrainingArguments(
        output_dir="/tmp/hf_clusterable_bench",
        report_to="none",
        save_strategy="no",
        per_device_train_batch_size=batch,
        max_steps=1,
        disable_tqdm=True,
        use_cpu=device == "cpu",
        optim="sgd",
        gradient_checkpointing=reentrant is not None,
        gradient_checkpointing_kwargs={"use_reentrant": bool(reentrant)},
    )
    kwargs = dict(model=model, args=args, train_dataset=data, callbacks=[Mark()])
    if kind == "ours":
        trainer = ClusterableTrainer(**kwargs, cluster_config=ClusterConfig(loss_weight=20.0, init="blocks"))
    else:
        trainer = Trainer(**kwargs)
    trainer.train()
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _status_mib("VmHWM")
    print(json.dumps({"added_mib": peak - start["mib"], "start_mib": start["mib"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", choices=list(CONFIGS), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.device, args.batch, args.seq)
        return
    added: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for _ in range(args.rounds):  # interleaved, so drifts in machine load hit every configuration alike
        for name in CONFIGS:
            cmd = [sys.executable, __file__, "--worker", name, "--device", args.device]
            cmd += ["--batch", str(args.batch), "--seq", str(args.seq)]
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "0"}
            run = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
            out = run.stdout.strip().splitlines()[-1]
            added[name].append(json.loads(out)["added_mib"])
    label = "max allocated" if args.device == "cuda" else "peak RSS"
    print(f"GPT-2 small (124M), batch {args.batch} x {args.seq} tokens, {args.device}, {label} added by training")
    print(f"(median of {args.rounds} fresh-process rounds, MiB):")
    medians = {name: statistics.median(values) for name, values in added.items()}
    for name, value in medians.items():
        spread = f"{min(added[name]):.0f}-{max(added[name]):.0f}"
        print(f"  {name:52s} {value:8.0f}   (range {spread})")
    for kind in ("Trainer", "ClusterableTrainer"):
        base = medians[kind]
        for mode in ("non-reentrant", "reentrant"):
            saved = base - medians[f"{kind} + checkpointing ({mode})"]
            print(f"  {kind}: checkpointing ({mode}) saves {saved:.0f} MiB ({saved / base:.0%})")


if __name__ == "__main__":
    main()
