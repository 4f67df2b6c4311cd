"""Clustered (lambda 20, 40) against unclustered (lambda 0) models: cut test, specialisation, circuit size, accuracy.

Every model is trained from scratch on one CPU thread with `ClusterableTrainer` (k = 4 contiguous blocks, as in the
paper), saved with its clusters, and analysed with `hf_clusterable.analysis.analyze` on held-out data:

* modular addition: `demo.modular_addition_trainer` (5000 steps; the seed also picks the 30% train split);
* digits: ClusterNet MLP 64-64-64-10 on scikit-learn's 8x8 digits (fixed 75/25 split), Adam lr 1e-2, 40 epochs;
  one extra condition clusters the hidden layers only, so no cluster owns a class by construction.

One JSON per run and a markdown table (mean ± sample standard deviation over seeds) land in --output-dir, with the
full analysis report of every run next to its checkpoint. Runs already on disk are reused, so an interrupted
comparison resumes where it stopped.

    OMP_NUM_THREADS=1 python benchmarks/analysis_comparison.py [--seeds 0 1 2] [--tasks modular-addition digits] \\
        [--output-dir outputs/analysis_comparison] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch


CONDITIONS = {
    "modular-addition": [
        {"name": "unclustered (λ=0)", "loss_weight": 0.0},
        {"name": "clustered (λ=20)", "loss_weight": 20.0},
        {"name": "clustered (λ=40)", "loss_weight": 40.0},
    ],
    "digits": [
        {"name": "unclustered (λ=0)", "loss_weight": 0.0},
        {"name": "clustered (λ=20)", "loss_weight": 20.0},
        {"name": "clustered (λ=40)", "loss_weight": 40.0},
        {"name": "clustered hidden only (λ=20)", "loss_weight": 20.0, "targets": r"hidden\.\d+"},
    ],
}
COLUMNS = [  # (header, key, digits)
    ("test accuracy", "accuracy", 3),
    ("clusterability C", "clusterability", 3),
    ("cut test: accuracy drop", "cut_accuracy_drop", 3),
    ("specialisation", "specialisation", 3),
    ("specialisation, random split", "random_specialisation", 3),
    ("concentration", "concentration", 3),
    ("concentration, random split", "random_concentration", 3),
    ("circuit size: task", "circuit_task", 3),
    ("circuit size: per class", "circuit_class", 3),
]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").replace("--", "-")


def train_modular_addition(out: Path, condition: dict, seed: int, quick: bool):
    from transformers.trainer_callback import PrinterCallback

    from hf_clusterable.examples.demo import modular_addition_trainer

    trainer = modular_addition_trainer(
        str(out),
        loss_weight=condition["loss_weight"],
        seed=seed,
        max_steps=300 if quick else 5000,
        disable_tqdm=True,
        eval_strategy="no",
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    trainer.save_model(str(out))
    return trainer.model


def train_digits(out: Path, condition: dict, seed: int, quick: bool):
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from hf_clusterable import ClusterConfig, ClusterNetConfig, ClusterNetForImageClassification
    from hf_clusterable.examples.datasets import digits
    from hf_clusterable.training.trainer import ClusterableTrainer

    torch.manual_seed(seed)
    model = ClusterNetForImageClassification(ClusterNetConfig(image_size=8, hidden_sizes=[64, 64]))
    args = TrainingArguments(
        output_dir=str(out),
        num_train_epochs=3 if quick else 40,
        per_device_train_batch_size=64,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
    )
    config = ClusterConfig(init="blocks", loss_weight=condition["loss_weight"], targets=condition.get("targets"))
    trainer = ClusterableTrainer(model=model, args=args, train_dataset=digits(seed=0)["train"], cluster_config=config)
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    trainer.save_model(str(out))
    return trainer.model


def task_for(task: str, seed: int):
    from hf_clusterable.analysis.tasks import classification_task
    from hf_clusterable.examples.datasets import digits
    from hf_clusterable.examples.modular_addition import modular_addition_task

    if task == "modular-addition":
        return modular_addition_task(113, seed=seed)  # the test split the model never saw
    return classification_task(digits(seed=0)["test"], name="digits")


def run(task: str, condition: dict, seed: int, args: argparse.Namespace) -> dict:
    from hf_clusterable.analysis.analyze import analyze
    from hf_clusterable.utils.io import atomic_write

    name = f"{task}-{slug(condition['name'])}-seed{seed}"
    record_path = args.output_dir / "runs" / f"{name}.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    checkpoint = args.output_dir / "checkpoints" / name
    start = time.perf_counter()
    train = train_modular_addition if task == "modular-addition" else train_digits
    model = train(checkpoint, condition, seed, args.quick)
    trained = time.perf_counter()
    report = analyze(
        model,
        task_for(task, seed),
        checkpoint,
        max_categories=args.circuit_categories,
        random_splits=args.random_splits,
        seed=seed,
    )
    analysed = time.perf_counter()
    report.save(checkpoint / "analysis", model, title=name)
    record = {
        "task": task,
        "condition": condition["name"],
        "loss_weight": condition["loss_weight"],
        "targets": condition.get("targets"),
        "seed": seed,
        "accuracy": report.full.accuracy,
        "clusterability": report.clusterability,
        "clusterability_baseline": report.clusterability_baseline,
        "cut_accuracy": report.cut.accuracy,
        "cut_accuracy_drop": report.cut_accuracy_drop,
        "cut_loss_rise": report.cut_loss_rise,
        "specialisation": report.ablation.specialisation,
        "random_specialisation": report.ablation.random_mean,
        "concentration": report.ablation.concentration,
        "random_concentration": statistics.fmean(report.ablation.random_concentration),
        "circuit_task": report.circuits.task_fraction,
        "circuit_class": report.circuits.mean_fraction,
        "circuit_categories": len(report.circuits.categories),
        "train_seconds": trained - start,
        "analysis_seconds": analysed - trained,
    }
    atomic_write(record_path, json.dumps(record, indent=2) + "\n")
    return record


def cell(values: list[float], digits: int) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(records: list[dict]) -> str:
    lines = [
        "| task | model | " + " | ".join(h for h, _, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for task, conditions in CONDITIONS.items():
        for condition in conditions:
            runs = [r for r in records if r["task"] == task and r["condition"] == condition["name"]]
            if runs:
                cells = [cell([r[key] for r in runs], d) for _, key, d in COLUMNS]
                lines.append(f"| {task} | {condition['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/analysis_comparison"))
    parser.add_argument("--circuit-categories", type=int, default=20, help="classes whose circuits are measured")
    parser.add_argument("--random-splits", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few hundred steps, not a result")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared; one thread is also what the timings assume
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.quick:
        args.output_dir = args.output_dir.with_name(args.output_dir.name + "_quick")

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    from hf_clusterable.utils.io import atomic_write

    records = []
    for task in args.tasks:
        for condition in CONDITIONS[task]:
            for seed in args.seeds:
                r = run(task, condition, seed, args)
                records.append(r)
                print(
                    f"{task:>16} | {r['condition']:<28} | seed {seed} | acc {r['accuracy']:.3f} | "
                    f"C {r['clusterability']:.3f} | cut drop {r['cut_accuracy_drop']:.3f} | "
                    f"spec {r['specialisation']:.3f} (random {r['random_specialisation']:.3f}) | "
                    f"circuit {r['circuit_task']:.3f}/{r['circuit_class']:.3f} | "
                    f"train {r['train_seconds']:.0f}s analyse {r['analysis_seconds']:.0f}s",
                    flush=True,
                )
    summary = table(records)
    atomic_write(args.output_dir / "summary.md", summary + "\n")
    print("\n" + summary)


if __name__ == "__main__":
    main()
