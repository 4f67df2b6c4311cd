"""The paper's modular-addition transformer, trained from scratch with `ClusterableTrainer` on a laptop CPU.

The settings were found by a sweep on 2 CPU cores (see the README): minibatches of 256 grok (a + b) mod 113 from a
30% train split in ~2-3k steps; a warmup-stable-decay schedule removes the late accuracy spikes a constant rate
leaves; the clusterability loss delays grokking by a few hundred steps, hence 5000 steps.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from ..analysis.report import ANALYSIS_FOLDER, REPORT_FILES
from ..config import ClusterConfig
from ..constants import HEATMAP_NAME
from ..modeling.plot import panel_weights, render_blocks
from ..training.trainer import ClusterableTrainer
from ..utils.io import atomic_write, check_output_dir, json_text
from ..utils.validation import require_int
from .models import modular_addition_model
from .modular_addition import answer_logits, modular_addition, modular_addition_accuracy, save_modular_addition_split


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


# ---- the demo ------------------------------------------------------------------------------------------------------


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


def _train(output_dir: str, label: str, *, loss_weight: float, seed: int, max_steps: int):
    trainer = modular_addition_trainer(
        output_dir,
        loss_weight=loss_weight,
        seed=seed,
        max_steps=max_steps,
        p=MODULUS,
        train_fraction=TRAIN_FRACTION,
        disable_tqdm=True,
    )
    trainer.remove_callback(PrinterCallback)  # raw log dicts; DemoProgress prints what matters
    trainer.add_callback(DemoProgress(label))
    trainer.train()
    return trainer, trainer.evaluate()


def run_demo(
    output_dir: str = "modular-addition-demo",
    *,
    overwrite: bool = False,
    loss_weight: float = 20.0,
    seed: int = 0,
    max_steps: int = 5000,
    reference: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train with the loss (and a lambda = 0 reference), save model, clusters, card and heatmap, print the result.

    Returns what `demo_results.json` holds: metrics of both runs, the settings and the wall time.
    """
    settings = dict(locals())  # the arguments, as given: recorded in demo_results.json
    require_int("max_steps", max_steps, 10)
    require_int("seed", seed, 0)
    if threads is not None:
        require_int("threads", threads, 1)
    ClusterConfig(loss_weight=loss_weight)  # validates the weight
    out = check_output_dir(output_dir, "output_dir", overwrite=overwrite, overwrite_flag="overwrite=True")
    if threads is not None:
        torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()  # the demo reports its own progress
    transformers.logging.disable_progress_bar()

    print(
        f"Training the paper's 1-layer transformer on (a + b) mod {MODULUS} from scratch: {max_steps} steps, "
        f"k = 4 clusters, lambda = {loss_weight:g}, seed {seed}, {torch.get_num_threads()} CPU threads."
        + ("\nThen the same run with lambda = 0 as a reference." if reference else ""),
        flush=True,
    )
    start = time.perf_counter()
    run = dict(seed=seed, max_steps=max_steps)
    trainer, metrics = _train(str(out), f"lambda = {loss_weight:g}", loss_weight=loss_weight, **run)
    reference_model, reference_metrics = None, None
    if reference:
        with tempfile.TemporaryDirectory() as tmp:
            reference_trainer, reference_metrics = _train(tmp, "lambda = 0 (reference)", loss_weight=0.0, **run)
            reference_model = reference_trainer.model
    remove_previous_demo(out)  # only now: an interrupted run leaves the previous one whole
    before = set(os.listdir(out)) if out.is_dir() else set()
    trainer.save_model()
    save_modular_addition_split(out, p=MODULUS, train_fraction=TRAIN_FRACTION, seed=seed)  # for `analyze`
    shown = ("eval_accuracy", "eval_loss")
    trainer.create_model_card(
        model_name=out.resolve().name,
        tasks="text-generation",
        metrics={k: v for k, v in metrics.items() if k in shown},
        reference_metrics={k: v for k, v in (reference_metrics or {}).items() if k in shown} or None,
    )
    if reference_model is not None and (out / HEATMAP_NAME).is_file():  # the card drew one: add the reference
        partitions = trainer.partitions
        heatmap = render_blocks(
            panel_weights(trainer.model, partitions),
            partitions,
            reference=panel_weights(reference_model, partitions),
            labels=(f"lambda = {loss_weight:g}", "lambda = 0, reference"),
        )
        atomic_write(out / HEATMAP_NAME, heatmap)
    seconds = time.perf_counter() - start
    results = {
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "args": settings,
        "metrics": dict(metrics),
        "reference_metrics": reference_metrics,
        "files": sorted(set(os.listdir(out)) - before | {DEMO_RESULTS_NAME}),  # what --overwrite may remove
    }
    atomic_write(out / DEMO_RESULTS_NAME, json_text(results))
    print(_summary(out, seconds, loss_weight, metrics, reference_metrics), flush=True)
    return results


def remove_previous_demo(out: Path) -> None:
    """Remove what an earlier demo left in `out` (the files its `demo_results.json` lists) and the report
    `hf-clusterable analyze` wrote about that model into `out/analysis`; nothing else."""
    try:
        files = json.loads((out / DEMO_RESULTS_NAME).read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        files = []  # no earlier demo here, or none this version wrote
    for name in files:
        path = out / str(name)
        if isinstance(name, str) and path.parent == out and path.is_file():  # plain names inside `out` only
            path.unlink()
    analysis = out / ANALYSIS_FOLDER
    if analysis.is_dir():
        for name in REPORT_FILES:
            (analysis / name).unlink(missing_ok=True)
        if not any(analysis.iterdir()):
            analysis.rmdir()


def _summary(out, seconds: float, loss_weight: float, metrics: dict, reference: dict | None) -> str:
    rows = [
        ("test accuracy", "eval_accuracy"),
        ("clusterability", "eval_clusterability"),
        ("baseline (no structure)", "eval_clusterability_baseline"),
    ]
    header = f"{'':24}{'lambda = ' + format(loss_weight, 'g'):>14}" + (f"{'lambda = 0':>14}" if reference else "")
    lines = [header]
    for name, key in rows:
        lines.append(f"{name:24}{metrics[key]:>14.3f}" + (f"{reference[key]:>14.3f}" if reference else ""))
    files = ", ".join(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")))
    return (
        f"\nDone in {int(seconds // 60)} min {round(seconds % 60)} s.\n"
        + "\n".join(lines)
        + f"\n\nSaved in {out}/: {files}\n"
        f"The block structure: {out / HEATMAP_NAME}; the model card: {out / 'README.md'}.\n"
        f"Measure it again with: hf-clusterable measure {out}"
    )
