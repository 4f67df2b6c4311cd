"""`ClusterableTrainer`: transformers' `Trainer` plus `loss_weight * (1 - mean clusterability)`.

It is `ClusterabilityMixin` on top of `Trainer` and nothing else; the mixin (`mixin.py`) holds the loss, the metrics,
the cluster files and resuming, so the same behaviour is available to any `Trainer` subclass (TRL's `SFTTrainer`,
`DPOTrainer`, ...).
"""

from __future__ import annotations

from transformers import Trainer

from .mixin import ClusterabilityMixin


class ClusterableTrainer(ClusterabilityMixin, Trainer):
    """A `Trainer` whose loss is `task_loss + loss_weight * (1 - mean C)` over the target matrices.

    Args:
        cluster_config (`ClusterConfig`, *optional*): what to cluster and how hard; defaults to `ClusterConfig()`
            (k = 4, spectral co-clustering of the model type's MLP matrices before the first step, lambda = 20).
        partitions (`dict[str, Partition]`, *optional*): hand-made partitions (module name -> `Partition`) to use
            instead of computing them; checked against the target matrices and `n_clusters`.
        All other arguments are `transformers.Trainer`'s.

    Logged metrics (train and `eval_`): `task_loss`, `cluster_loss` (the regulariser), `clusterability` (mean C)
    and `clusterability_baseline` (what unstructured weights would score with these cluster sizes); in training also
    `cluster_loss_weight` (lambda at that step) and, with `distill_weight > 0`, `distill_loss`.

    `push_to_hub()` and every `hub_strategy` push upload the cluster files and a model card with the current scores
    (`create_model_card`) next to the weights.
    """
