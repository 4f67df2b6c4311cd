"""hf-clusterable: train Hugging Face models whose MLPs split into k nearly independent clusters.

Method: Golechha et al., "Modular Training of Neural Networks aids Interpretability" (arXiv 2502.02470).

Public names resolve lazily (PEP 562), as in transformers and PEFT: `import hf_clusterable` is cheap, and
`hf_clusterable.Partition`, `.spectral_cocluster`, `.clusterability` or `.baseline` load torch alone, never
transformers, peft, accelerate, datasets or huggingface_hub. The table below says where each name lives.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__


_IMPORT_STRUCTURE: dict[str, list[str]] = {
    "core.partition": ["Partition"],
    "core.score": ["baseline", "clusterability", "normalised"],
    "core.cocluster": ["spectral_cocluster"],
    "config": ["ClusterConfig"],
    "modeling.targets": ["Target", "find_targets", "get_weight"],
    "modeling.clusters": ["cluster_model", "load_clusters", "save_clusters"],
    "modeling.measure": ["ClusterReport", "MatrixScore", "measure"],
    "modeling.extract": ["extract_cluster"],
    "training.mixin": ["ClusterabilityMixin"],
    "training.trainer": ["ClusterableTrainer"],
    "hub.card": ["render_card", "write_card"],
    "hub.push": ["push_folder"],
    "analysis.tasks": ["Task", "causal_lm_task", "classification_task"],
    "analysis.ablation": ["specialisation_index"],
    "analysis.report": ["AnalysisReport"],
    "analysis.analyze": ["analyze"],
    "examples.models": ["ClusterNetConfig", "ClusterNetForImageClassification", "modular_addition_model"],
    "examples.modular_addition": ["modular_addition_task"],
}
_WHERE = {name: module for module, names in _IMPORT_STRUCTURE.items() for name in names}

__all__ = [
    "__version__",
    "AnalysisReport",
    "ClusterConfig",
    "ClusterNetConfig",
    "ClusterNetForImageClassification",
    "ClusterReport",
    "ClusterabilityMixin",
    "ClusterableTrainer",
    "MatrixScore",
    "Partition",
    "Target",
    "Task",
    "analyze",
    "baseline",
    "causal_lm_task",
    "classification_task",
    "cluster_model",
    "clusterability",
    "extract_cluster",
    "find_targets",
    "get_weight",
    "load_clusters",
    "measure",
    "modular_addition_model",
    "modular_addition_task",
    "normalised",
    "push_folder",
    "render_card",
    "save_clusters",
    "specialisation_index",
    "spectral_cocluster",
    "write_card",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .analysis.ablation import specialisation_index
    from .analysis.analyze import analyze
    from .analysis.report import AnalysisReport
    from .analysis.tasks import Task, causal_lm_task, classification_task
    from .config import ClusterConfig
    from .core.cocluster import spectral_cocluster
    from .core.partition import Partition
    from .core.score import baseline, clusterability, normalised
    from .examples.models import ClusterNetConfig, ClusterNetForImageClassification, modular_addition_model
    from .examples.modular_addition import modular_addition_task
    from .hub.card import render_card, write_card
    from .hub.push import push_folder
    from .modeling.clusters import cluster_model, load_clusters, save_clusters
    from .modeling.extract import extract_cluster
    from .modeling.measure import ClusterReport, MatrixScore, measure
    from .modeling.targets import Target, find_targets, get_weight
    from .training.mixin import ClusterabilityMixin
    from .training.trainer import ClusterableTrainer
