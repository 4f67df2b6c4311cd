"""Modular addition (p = 113) with the clusterability loss: test accuracy and clusterability per lambda and seed.

Every run is `demo.modular_addition_trainer` (the demo's model, data and schedule) trained from scratch. Each run's
result is appended to a JSON file as soon as it finishes, so an interrupted sweep resumes where it stopped. Run it
alone, on one thread, in the background (9 runs of ~2-3 min each):

    OMP_NUM_THREADS=1 nohup python benchmarks/modular_addition_sweep.py > runs/modular_addition_sweep.log 2>&1 &
    python benchmarks/modular_addition_sweep.py --table   # the markdown table from the results so far

Clusterability is reported twice: under the fixed contiguous blocks the loss trained (what `lambda` pushes up), and
under spectral co-clustering found after training (the best k-way split of the trained weights, so a lambda = 0
model gets its fair chance).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def run_one(loss_weight: float, seed: int, max_steps: int) -> dict:
    from hf_clusterable import ClusterConfig, measure
    from hf_clusterable.examples.demo import modular_addition_trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = modular_addition_trainer(
            tmp, loss_weight=loss_weight, seed=seed, max_steps=max_steps, disable_tqdm=True, logging_steps=500
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        final = trainer.evaluate()
        spectral = measure(trainer.model, ClusterConfig(n_clusters=trainer.cluster_config.n_clusters, seed=seed))
    return {
        "loss_weight": loss_weight,
        "seed": seed,
        "max_steps": max_steps,
        "train_seconds": round(seconds, 1),
        "test_accuracy": final["eval_accuracy"],
        "test_loss": final["eval_loss"],
        "clusterability": final["eval_clusterability"],
        "clusterability_baseline": final["eval_clusterability_baseline"],
        "spectral_clusterability": spectral.mean,
        "spectral_baseline": spectral.baseline,
    }


def mean_spread(values: list[float], digits: int = 3) -> str:
    """`mean ± sample std` (just the value for a single run)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results: list[dict]) -> str:
    lines = [
        "| λ | seeds | test accuracy | clusterability (trained blocks) | baseline | spectral clusterability | "
        "spectral baseline | train time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for weight in sorted({r["loss_weight"] for r in results}):
        rows = [r for r in results if r["loss_weight"] == weight]

        def col(key: str, digits: int = 3, rows: list[dict] = rows) -> str:
            return mean_spread([r[key] for r in rows], digits)

        lines.append(
            f"| {weight:g} | {len(rows)} | {col('test_accuracy')} | {col('clusterability')} | "
            f"{col('clusterability_baseline')} | {col('spectral_clusterability')} | {col('spectral_baseline')} | "
            f"{col('train_seconds', 0)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 20.0, 40.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared: keep 1)")
    parser.add_argument("--results", default="runs/modular_addition_sweep.json", help="JSON results file (resumed)")
    parser.add_argument("--table", action="store_true", help="only print the table of the results so far")
    args = parser.parse_args()

    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    if not args.table:
        import torch

        from hf_clusterable.utils.io import atomic_write

        torch.set_num_threads(args.threads)
        for weight in args.weights:
            for seed in args.seeds:
                key = (weight, seed, args.max_steps)
                if any((r["loss_weight"], r["seed"], r["max_steps"]) == key for r in results):
                    continue
                print(f"== lambda {weight:g} seed {seed}: {args.max_steps} steps", flush=True)
                result = run_one(weight, seed, args.max_steps)
                print(json.dumps(result), flush=True)
                results.append(result)
                atomic_write(results_path, json.dumps(results, indent=2) + "\n")
    print(table([r for r in results if r["max_steps"] == args.max_steps]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
