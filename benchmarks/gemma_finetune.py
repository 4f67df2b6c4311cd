"""Gemma 3 270M, short CPU fine-tune on held-out English prose: with and without the clusterability loss.

Runs the recipe `recipes/gemma-3-270m/pydoc/config_cpu.yaml` (the embedded GGUF model, the stdlib's prose, MLPs
trained, spectral clusters of the pretrained weights, k = 4) once per loss weight with everything else equal, and
reports the held-out loss and the clusterability before and after, plus seconds per step. Results are appended to a
JSON file as each run ends. The README's table was measured before the recipe took the settings of
`benchmarks/lm_tradeoff.py`; `--as-measured` runs the recipe with the settings of then (lr 3e-4, constant lambda, no
distillation, no projection). Run it alone; each run takes minutes on 2 cores:

    python benchmarks/gemma_finetune.py                       # lambda = 20 and 0, the recipe's steps
    python benchmarks/gemma_finetune.py --as-measured         # the README's table
    python benchmarks/gemma_finetune.py --table               # the markdown table from the results so far
    python benchmarks/gemma_finetune.py --seconds-per-step    # only time a few steps of each training variant
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/gemma-3-270m/pydoc/config_cpu.yaml"
# The recipe's settings when the README's table was measured (before schedules, distillation and projection).
AS_MEASURED = [
    "--learning_rate", "3e-4", "--cluster_loss_weight_schedule", "constant", "--cluster_distill_weight", "0",
]  # fmt: skip


def run_one(loss_weight: float, output_dir: Path, extra: list[str], as_measured: bool = False) -> dict:
    from hf_clusterable.scripts.train import parse_args, run

    extra = [*AS_MEASURED, *extra] if as_measured else extra
    script, model, cluster, training = parse_args(
        ["--config", str(RECIPE), "--output_dir", str(output_dir), "--overwrite", "--disable_tqdm", "true",
         "--cluster_loss_weight", str(loss_weight), *extra]
    )  # fmt: skip
    if as_measured:
        cluster.cluster_project_step = None  # no flag sets a None
    start = time.perf_counter()
    final = run(script, model, cluster, training)
    seconds = time.perf_counter() - start
    state = json.loads((output_dir / "trainer_state.json").read_text())
    evals = [e for e in state["log_history"] if "eval_loss" in e]
    first = evals[0]  # eval_on_start: the pretrained model, scored under the same clusters
    train = next(e for e in state["log_history"] if "train_runtime" in e)
    return {
        "loss_weight": loss_weight,
        "max_steps": training.max_steps,
        "block_size": script.block_size,
        "batch_size": training.per_device_train_batch_size,
        "trainable_parameters": model.trainable_parameters,
        "eval_loss_before": first["eval_loss"],
        "clusterability_before": first["eval_clusterability"],
        "eval_loss": final["eval_loss"],
        "clusterability": final["eval_clusterability"],
        "clusterability_baseline": final["eval_clusterability_baseline"],
        "seconds_per_step": round(train["train_runtime"] / training.max_steps, 2),
        "total_seconds": round(seconds, 1),
    }


def seconds_per_step(steps: int) -> None:
    """Time a few training steps of the full fine-tune, the MLP-only one and LoRA at the recipe's batch and length."""
    from hf_clusterable.scripts.train import parse_args, run

    variants = {
        "full fine-tune": ["--trainable_parameters", "."],
        "MLPs only (recipe)": [],
        "LoRA r=16 on the MLPs": ["--trainable_parameters", "", "--use_peft", "--lora_target_modules",
                                  "gate_proj", "up_proj", "down_proj"],
    }  # fmt: skip
    for name, flags in variants.items():
        with tempfile.TemporaryDirectory() as tmp:
            script, model, cluster, training = parse_args(
                ["--config", str(RECIPE), "--output_dir", tmp, "--max_steps", str(steps), "--eval_strategy", "no",
                 "--eval_on_start", "false", "--max_eval_samples", "8", "--disable_tqdm", "true", *flags]
            )  # fmt: skip
            run(script, model, cluster, training)
            state = json.loads((Path(tmp) / "trainer_state.json").read_text())
            runtime = next(e for e in state["log_history"] if "train_runtime" in e)["train_runtime"]
            print(f"{name}: {runtime / steps:.2f} s/step (batch {training.per_device_train_batch_size} x "
                  f"{script.block_size} tokens, {steps} steps incl. the first)", flush=True)  # fmt: skip
        gc.collect()


def table(results: list[dict]) -> str:
    lines = [
        "| λ | steps | held-out loss: before → after | clusterability: before → after | baseline | s/step |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: -r["loss_weight"]):
        lines.append(
            f"| {r['loss_weight']:g} | {r['max_steps']} | {r['eval_loss_before']:.3f} → {r['eval_loss']:.3f} | "
            f"{r['clusterability_before']:.4f} → {r['clusterability']:.4f} | {r['clusterability_baseline']:.4f} | "
            f"{r['seconds_per_step']:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[20.0, 0.0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--results", default="runs/gemma_finetune.json", help="JSON results file (appended)")
    parser.add_argument("--output-root", default="runs/gemma_finetune", help="one output folder per weight")
    parser.add_argument("--table", action="store_true", help="only print the table of the results so far")
    parser.add_argument("--as-measured", action="store_true", help="the recipe's settings of the README's table")
    parser.add_argument("--seconds-per-step", type=int, default=0, metavar="STEPS", help="only time STEPS steps")
    args, extra = parser.parse_known_args()  # anything else is a recipe flag, e.g. --max_steps 20

    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    if not args.table:
        import torch

        from hf_clusterable.utils.io import atomic_write

        if args.threads is not None:
            torch.set_num_threads(args.threads)
        if args.seconds_per_step:
            seconds_per_step(args.seconds_per_step)
            return 0
        for weight in args.weights:
            print(f"== lambda {weight:g}", flush=True)
            result = run_one(weight, Path(args.output_root) / f"lambda{weight:g}", extra, args.as_measured)
            result["threads"] = torch.get_num_threads()
            print(json.dumps(result), flush=True)
            results.append(result)
            atomic_write(results_path, json.dumps(results, indent=2) + "\n")
            gc.collect()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
