"""`analyze`: are a clustered model's clusters really separate, do they specialise, and are its circuits smaller?

The paper's interpretability evaluations, run on held-out data (see `tasks.py`): the cut test and cluster ablation
with its specialisation index against random splits (`ablation.py`), each cluster extracted on its own
(`clusters.py`), and effective circuit sizes (`circuits.py`). `analyze` runs them all and returns an
`AnalysisReport` (`report.py`); `hf-clusterable analyze` does the same for a saved checkpoint and writes the report
next to it. The model ends as it started.
"""

from __future__ import annotations

import os

from torch import nn

from ..config import ClusterConfig
from ..modeling.extract import extractable_layers
from ..modeling.measure import ClusterReport, resolve_clusters, score_matrices
from ..utils.validation import require_int
from .ablation import cluster_ablation, cut_test, editable, evaluate_task
from .circuits import circuit_sizes
from .clusters import cluster_parts
from .report import AnalysisReport, majority_accuracy
from .tasks import Task


def analyze(
    model: nn.Module,
    task: Task,
    clusters: ClusterConfig | str | os.PathLike | None = None,
    *,
    share: float = 0.9,
    random_splits: int = 3,
    max_categories: int | None = None,
    steps: int = 10,
    seed: int = 0,
    per_cluster: bool = True,
    tokenizer=None,
    progress: bool = False,
) -> AnalysisReport:
    """Cut test, cluster ablation with specialisation index, each cluster on its own, and effective circuit sizes of
    `model` on `task`.

    Args:
        model: any model `ClusterableTrainer` accepts (a PEFT model is analysed through a merged copy).
        task (`Task`): held-out data, e.g. `tasks.classification_task(...)`, `tasks.causal_lm_task(...)`.
        clusters: the checkpoint folder or Hub repo the model was saved to (its saved clusters are used), or a
            `ClusterConfig` (clusters computed as it says); None computes the default spectral clusters.
        share (`float`, defaults to 0.9): performance a circuit must keep.
        random_splits (`int`, defaults to 3): random equal-size neuron splits the specialisation index is compared to.
        max_categories (`int`, *optional*): measure circuits for at most this many categories (0: whole task only).
        steps (`int`, defaults to 10): bisection steps per circuit.
        per_cluster (`bool`, defaults to True): measure each cluster extracted alone, the model without it, the
            targets it matters most for and the sum of parts (`clusters.cluster_parts`); skipped, with the reason in
            the report, when the clusters are not sub-MLPs (per-matrix clusters).
        tokenizer (*optional*): decodes token ids in the per-cluster tables.
    """
    require_int("random_splits", random_splits, 0)
    require_int("steps", steps, 1)
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}.")
    config, targets, partitions = resolve_clusters(model, clusters)
    plain = editable(model)
    parts, parts_skipped = None, None
    if per_cluster:
        try:
            extractable_layers(plain, targets, partitions)
        except ValueError as err:
            parts_skipped = str(err)
    was_training = plain.training
    plain.eval()
    try:
        scores = score_matrices(plain, targets, partitions)
        full = evaluate_task(plain, task)
        chance = majority_accuracy(plain, task)
        cut = cut_test(plain, task, targets, partitions)
        ablation = cluster_ablation(
            plain, task, targets, partitions, random_splits=random_splits, seed=seed, reference=full, progress=progress
        )
        circuits = circuit_sizes(
            plain,
            task,
            targets,
            share=share,
            max_categories=max_categories,
            steps=steps,
            reference=full,
            progress=progress,
        )
        if per_cluster and parts_skipped is None:
            parts = cluster_parts(plain, task, targets, partitions, tokenizer=tokenizer, progress=progress)
    finally:
        plain.train(was_training)
    summary = ClusterReport(scores, config.n_clusters)
    return AnalysisReport(
        task.name,
        list(task.category_names),
        config.n_clusters,
        summary.mean,
        summary.baseline,
        full,
        cut,
        ablation,
        circuits,
        partitions,
        parts,
        parts_skipped,
        chance,
    )
