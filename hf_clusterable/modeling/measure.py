"""`measure`: how modular is this model? Per-matrix clusterability next to its baseline.

A score means little alone: a random matrix scores the baseline B (1/k for equal blocks), so every row reports C, B
and the normalised score (C - B) / (1 - B), which is 0 for an unstructured matrix and 1 for a block-diagonal one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import ClusterConfig
from ..core.partition import Partition
from ..core.score import baseline, clusterability, normalised
from .clusters import check_clusters, cluster_model, load_clusters
from .distributed import full_weight
from .streaming import DiskWeights, open_model
from .targets import Target, base_model, find_targets, modules_by_name


@dataclass
class MatrixScore:
    name: str
    shape: tuple[int, int]
    score: float
    baseline: float

    @property
    def normalised(self) -> float:
        return normalised(self.score, self.baseline)


@dataclass
class ClusterReport:
    """Scores of every target matrix; `partitions` holds the clusters they were computed with."""

    rows: list[MatrixScore]
    n_clusters: int
    partitions: dict[str, Partition] = field(repr=False, default_factory=dict)

    @property
    def mean(self) -> float:
        return sum(r.score for r in self.rows) / len(self.rows)

    @property
    def baseline(self) -> float:
        return sum(r.baseline for r in self.rows) / len(self.rows)

    @property
    def normalised(self) -> float:
        return normalised(self.mean, self.baseline)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_clusters": self.n_clusters,
            "mean": self.mean,
            "baseline": self.baseline,
            "normalised": self.normalised,
            "matrices": [
                {
                    "name": r.name,
                    "shape": list(r.shape),
                    "score": r.score,
                    "baseline": r.baseline,
                    "normalised": r.normalised,
                }
                for r in self.rows
            ],
        }

    def to_markdown(self) -> str:
        lines = [
            "| matrix | shape | clusterability | baseline | normalised |",
            "|---|---|---|---|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.name} | {r.shape[0]}x{r.shape[1]} | {r.score:.4f} | {r.baseline:.4f} | {r.normalised:.4f} |"
            )
        lines.append(
            f"| **mean** (k={self.n_clusters}) | | **{self.mean:.4f}** | {self.baseline:.4f} | {self.normalised:.4f} |"
        )
        return "\n".join(lines)


@torch.no_grad()
def score_weights(
    weights: Mapping[str, torch.Tensor], targets: list[Target], partitions: Mapping[str, Partition]
) -> list[MatrixScore]:
    """Scores of the given `(out, in)` weights, one row per target; a matrix holding NaN or Inf is named."""
    rows = []
    for t in targets:
        p, weight = partitions[t.name], weights[t.name]
        check_finite(t.name, weight)
        rows.append(MatrixScore(t.name, t.shape, float(clusterability(weight, p)), baseline(p)))
    return rows


def check_finite(name: str, weight: torch.Tensor) -> None:
    """Raise one line naming the matrix when `weight` holds NaN or Inf (one pass, no copy: min and max propagate
    NaN), since its score would be NaN or meaningless."""
    low, high = torch.aminmax(weight.detach())
    if not (torch.isfinite(low) and torch.isfinite(high)):
        raise ValueError(
            f"{name} has NaN or Inf weights; the model diverged or its file is damaged: fix or reload the weights "
            "before measuring them."
        )


def gather_weights(model: nn.Module, targets: list[Target]) -> dict[str, torch.Tensor]:
    """Every target's whole `(out, in)` weight (gathered from shards: a collective under ZeRO-3 and FSDP2)."""
    modules = modules_by_name(model)
    return {t.name: full_weight(modules[t.name]) for t in targets}


@torch.no_grad()
def score_matrices(model: nn.Module, targets: list[Target], partitions: dict[str, Partition]) -> list[MatrixScore]:
    return score_weights(gather_weights(model, targets), targets, partitions)


def resolve_clusters(
    model: nn.Module,
    config_or_checkpoint: ClusterConfig | str | os.PathLike | Mapping[str, Partition] | None = None,
    *,
    progress: bool = False,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> tuple[ClusterConfig, list[Target], dict[str, Partition]]:
    """Config, targets and partitions for `model`: given ones (a dict of `Partition`), saved ones from a checkpoint
    folder/repo, else computed (from `weights` when given, e.g. read from disk, else from the model's own)."""
    if isinstance(config_or_checkpoint, Mapping):
        return given_partitions(model, config_or_checkpoint)
    checkpoint = None
    if config_or_checkpoint is None:
        config = ClusterConfig()
    elif isinstance(config_or_checkpoint, ClusterConfig):
        config = config_or_checkpoint
    elif isinstance(config_or_checkpoint, (str, os.PathLike)):
        config, checkpoint = ClusterConfig.from_pretrained(config_or_checkpoint), config_or_checkpoint
    else:
        raise TypeError(
            "clusters must be a ClusterConfig, a checkpoint folder or Hub id, or a dict of Partition by module name; "
            f"got {type(config_or_checkpoint).__name__}."
        )
    model_type = getattr(getattr(base_model(model), "config", None), "model_type", None)
    if config.model_type is not None and model_type is not None and config.model_type != model_type:
        raise ValueError(
            f"the cluster config was written for model_type {config.model_type!r} but this model is {model_type!r}; "
            "load the matching model or re-cluster by passing a ClusterConfig."
        )
    targets = find_targets(model, config.targets, coupled=config.coupled, n_clusters=config.n_clusters)
    if checkpoint is not None:
        try:
            saved = load_clusters(checkpoint, n_clusters=config.n_clusters, targets=targets)
        except FileNotFoundError:
            saved = None  # a config without clusters: compute them as the config says
        if saved is not None:
            check_clusters(saved, targets, config.n_clusters)
            return config, targets, {t.name: saved[t.name] for t in targets}  # in model order, as computed ones
    return config, targets, cluster_model(model, config, targets, progress=progress, weights=weights)


def given_partitions(
    model: nn.Module, partitions: Mapping[str, Partition]
) -> tuple[ClusterConfig, list[Target], dict[str, Partition]]:
    """Config, targets and partitions for partitions made by hand: a dict of `Partition` by module name, checked
    against the model (the matrices exist, the shapes fit, one k)."""
    partitions = dict(partitions)
    if not partitions:
        raise ValueError("no partitions given; pass {module name: Partition} for the matrices to measure.")
    for name, p in partitions.items():
        if not isinstance(p, Partition):
            raise TypeError(
                f"partitions must map module names to Partition objects; {name!r} maps to {type(p).__name__}."
            )
    ks = sorted({p.n_clusters for p in partitions.values()})
    if len(ks) != 1:
        raise ValueError(f"the partitions must share one n_clusters, got {ks}.")
    config = ClusterConfig(n_clusters=ks[0], targets=list(partitions))
    targets = find_targets(model, config.targets, coupled=True, n_clusters=config.n_clusters)
    check_clusters(partitions, targets, config.n_clusters)
    return config, targets, partitions


def measure(
    model: nn.Module | DiskWeights | str | os.PathLike,
    config_or_checkpoint: ClusterConfig | str | os.PathLike | Mapping[str, Partition] | None = None,
    *,
    progress: bool = False,
) -> ClusterReport:
    """Clusterability of every target matrix of `model`.

    `config_or_checkpoint` is a `ClusterConfig` (clusters are computed as it says), a folder or Hub repo holding
    `cluster_config.json` (its saved `clusters.safetensors` are used when present), or `None` for the defaults
    (k = 4, spectral co-clustering of the model type's MLP matrices), or partitions made by hand: a dict of
    `Partition` by module name (every matrix named is scored, with one k).

    `model` may also be a local folder of safetensors weights (or its `DiskWeights`): the model is then never
    loaded, each matrix is read from disk when it is clustered or scored, and the report is the one the loaded
    model gives. Any other name (a Hub id, a folder of other weights) is loaded with `load_model`.
    """
    source = open_model(model) if isinstance(model, (str, os.PathLike)) else model
    if not isinstance(source, (nn.Module, DiskWeights)):
        raise TypeError(
            "measure needs a torch.nn.Module (e.g. AutoModelForCausalLM.from_pretrained(...)) or a model folder, "
            f"got {'None' if model is None else type(model).__name__}."
        )
    model, weights = (source.model, source) if isinstance(source, DiskWeights) else (source, None)
    config, targets, partitions = resolve_clusters(model, config_or_checkpoint, progress=progress, weights=weights)
    scored = tqdm(targets, desc="scoring", disable=not progress, unit="matrix")
    rows = score_weights(gather_weights(model, targets) if weights is None else weights, scored, partitions)
    return ClusterReport(rows, config.n_clusters, partitions)
