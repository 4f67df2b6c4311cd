"""The paper's modular-addition transformer, trained from scratch with `ClusterableTrainer` on a laptop CPU.

The settings were found by a sweep on 2 CPU cores (see the README): minibatches of 256 grok (a + b) mod 113 from a
30% train split in ~2-3k steps; a warmup-stable-decay schedule removes the late accuracy spikes a constant rate
leaves; the clusterability loss delays grokking by a few hundred steps, hence 5000 steps.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from .config import ClusterConfig, atomic_write, check_writable_folder
from .constants import HEATMAP_NAME
from .data import answer_logits, modular_addition, modular_addition_accuracy
from .models import modular_addition_model
from .tasks import save_modular_addition_split
from .trainer import ClusterableTrainer


DEMO_RESULTS_NAME = "demo_results.json"
MODULUS, TRAIN_FRACTION = 113, 0.3  # the demo's task: (a + b) mod 113, trained on 30% of the pairs


def modular_addition_trainer(
    output_dir: str,
    *,
    loss_weight: float = 20.0,
    n_clusters: int = 4,
    seed: int = 0,
    max_steps: int = 5000,
    p: int = 113,
    train_fraction: float = 0.3,
    d_mlp: int = 128,
    **training_overrides,
) -> ClusterableTrainer:
    """A ready-to-train `ClusterableTrainer` for (a + b) mod p with fixed contiguous blocks (training from scratch).

    `training_overrides` go to `TrainingArguments` (e.g. `logging_steps`, `eval_steps`, `disable_tqdm`).
    """
    data = modular_addition(p=p, train_fraction=train_fraction, seed=seed)
    args = dict(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=256,
        per_device_eval_batch_size=4096,
        learning_rate=1e-3,
        weight_decay=1.0,
        adam_beta1=0.9,
        adam_beta2=0.98,
        warmup_steps=10,
        lr_scheduler_type="warmup_stable_decay",
        lr_scheduler_kwargs={"num_decay_steps": min(1000, max_steps // 5)},
        eval_strategy="steps",
        eval_steps=500,
        logging_steps=100,
        save_strategy="no",
        report_to="none",
        seed=seed,
        use_cpu=True,
    )
    args.update(training_overrides)
    return ClusterableTrainer(
        model=modular_addition_model(p=p, d_mlp=d_mlp, seed=seed),
        args=TrainingArguments(**args),
        train_dataset=data["train"],
        eval_dataset=data["test"],
        compute_metrics=modular_addition_accuracy,
        preprocess_logits_for_metrics=answer_logits,
        cluster_config=ClusterConfig(n_clusters=n_clusters, loss_weight=loss_weight, init="blocks", seed=seed),
    )


# ---- `hf-clusterable demo` ----------------------------------------------------------------------------------------


def check_output_dir(path: str, overwrite: bool) -> Path:
    """Refuse a file, an unwritable place, or a non-empty folder (unless `overwrite`), before any work is done."""
    out = Path(path).expanduser()
    check_writable_folder(out, "--output-dir")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--output-dir {path} is not empty; pass --overwrite to replace its files or choose another.")
    return out


class DemoProgress(TrainerCallback):
    """A progress bar, and one line per evaluation with the numbers that matter here."""

    def __init__(self, label: str):
        self.label = label
        self.bar: tqdm | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(total=state.max_steps, desc=self.label, unit="step", mininterval=1.0, dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.bar is not None and metrics:
            self.bar.write(
                f"  step {state.global_step:>5}: test accuracy {metrics['eval_accuracy']:.3f}, clusterability "
                f"{metrics['eval_clusterability']:.3f} (baseline {metrics['eval_clusterability_baseline']:.3f})"
            )

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()
        self.bar = None  # evaluations after training are reported by run_demo


def _train(output_dir: str, label: str, args: argparse.Namespace, loss_weight: float):
    trainer = modular_addition_trainer(
        output_dir,
        loss_weight=loss_weight,
        seed=args.seed,
        max_steps=args.max_steps,
        p=MODULUS,
        train_fraction=TRAIN_FRACTION,
        disable_tqdm=True,
    )
    trainer.remove_callback(PrinterCallback)  # raw log dicts; DemoProgress prints what matters
    trainer.add_callback(DemoProgress(label))
    trainer.train()
    return trainer, trainer.evaluate()


def run_demo(args: argparse.Namespace) -> int:
    """Train with the loss (and a lambda = 0 reference), save model, clusters, card and heatmap, print the result."""
    if args.max_steps < 10:
        raise ValueError(f"--max-steps must be >= 10, got {args.max_steps}.")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}.")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}.")
    ClusterConfig(loss_weight=args.loss_weight)  # validates the weight
    out = check_output_dir(args.output_dir, args.overwrite)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()  # the demo reports its own progress
    transformers.logging.disable_progress_bar()

    print(
        f"Training the paper's 1-layer transformer on (a + b) mod {MODULUS} from scratch: {args.max_steps} steps, "
        f"k = 4 clusters, lambda = {args.loss_weight:g}, seed {args.seed}, {torch.get_num_threads()} CPU threads."
        + ("\nThen the same run with lambda = 0 as a reference." if args.reference else ""),
        flush=True,
    )
    start = time.perf_counter()
    trainer, metrics = _train(str(out), f"lambda = {args.loss_weight:g}", args, args.loss_weight)
    reference = None
    if args.reference:
        with tempfile.TemporaryDirectory() as tmp:
            _, reference = _train(tmp, "lambda = 0 (reference)", args, 0.0)
    trainer.save_model()
    save_modular_addition_split(out, p=MODULUS, train_fraction=TRAIN_FRACTION, seed=args.seed)  # for `analyze`
    trainer.create_model_card(
        model_name=out.resolve().name,
        tasks="text-generation",
        metrics={k: v for k, v in metrics.items() if k in ("eval_accuracy", "eval_loss")},
        reference_metrics={k: v for k, v in (reference or {}).items() if k in ("eval_accuracy", "eval_loss")} or None,
    )
    seconds = time.perf_counter() - start
    results = {"seconds": round(seconds, 1), "threads": torch.get_num_threads(), "args": vars(args).copy()}
    results["args"].pop("func", None)
    results.update(metrics={k: v for k, v in metrics.items()}, reference_metrics=reference)
    atomic_write(out / DEMO_RESULTS_NAME, json.dumps(results, indent=2) + "\n")

    rows = [
        ("test accuracy", "eval_accuracy"),
        ("clusterability", "eval_clusterability"),
        ("baseline (no structure)", "eval_clusterability_baseline"),
    ]
    header = f"{'':24}{'lambda = ' + format(args.loss_weight, 'g'):>14}" + (f"{'lambda = 0':>14}" if reference else "")
    lines = [header]
    for name, key in rows:
        lines.append(f"{name:24}{metrics[key]:>14.3f}" + (f"{reference[key]:>14.3f}" if reference else ""))
    files = ", ".join(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")))
    print(
        f"\nDone in {int(seconds // 60)} min {round(seconds % 60)} s.\n"
        + "\n".join(lines)
        + f"\n\nSaved in {out}/: {files}\n"
        f"The block structure: {out / HEATMAP_NAME}; the model card: {out / 'README.md'}.\n"
        f"Measure it again with: hf-clusterable measure {out}",
        flush=True,
    )
    return 0


def add_demo_parser(subparsers) -> None:
    """`hf-clusterable demo`: the paper's modular-addition run, offline, in a few minutes on a laptop CPU."""
    p = subparsers.add_parser(
        "demo",
        help="train the paper's modular-addition transformer with the clusterability loss (offline, a few minutes)",
        description="Train the paper's 1-layer transformer on (a + b) mod 113 from scratch with the clusterability "
        "loss (and a lambda = 0 reference), then save the model, its clusters, a model card and a block heatmap.",
    )
    p.add_argument("--output-dir", default="modular-addition-demo", help="where to save (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty --output-dir")
    p.add_argument("--loss-weight", type=float, default=20.0, help="lambda (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split and weights (default: %(default)s)")
    p.add_argument("--max-steps", type=int, default=5000, help="optimizer steps per run (default: %(default)s)")
    p.add_argument("--no-reference", dest="reference", action="store_false", help="skip the lambda = 0 run")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.set_defaults(func=run_demo)
