"""The paper's modular-addition transformer, trained from scratch with `ClusterableTrainer` on a laptop CPU.

The settings were found by a sweep on 2 CPU cores (see the README): minibatches of 256 grok (a + b) mod 113 from a
30% train split in ~2-3k steps; a warmup-stable-decay schedule removes the late accuracy spikes a constant rate
leaves; the clusterability loss delays grokking by a few hundred steps, hence 5000 steps.
"""

from __future__ import annotations

from transformers import TrainingArguments

from .config import ClusterConfig
from .data import answer_logits, modular_addition, modular_addition_accuracy
from .models import modular_addition_model
from .trainer import ClusterableTrainer


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
