"""hf-clusterable: train Hugging Face models whose MLPs split into k nearly independent clusters.

Method: Golechha et al., "Modular Training of Neural Networks aids Interpretability" (arXiv 2502.02470).
"""

__version__ = "0.1.0"

from .ablation import specialisation_index
from .analysis import analyze
from .card import render_card, write_card
from .clusters import cluster_model, load_clusters, save_clusters
from .cocluster import spectral_cocluster
from .config import ClusterConfig
from .hub import push_folder
from .measure import ClusterReport, MatrixScore, measure
from .models import ClusterNetConfig, ClusterNetForImageClassification, modular_addition_model
from .partition import Partition
from .report import AnalysisReport
from .score import baseline, clusterability, normalised
from .targets import Target, find_targets, get_weight
from .tasks import Task, causal_lm_task, classification_task, modular_addition_task
from .trainer import ClusterableTrainer


__all__ = [
    "AnalysisReport",
    "ClusterConfig",
    "ClusterNetConfig",
    "ClusterNetForImageClassification",
    "ClusterReport",
    "ClusterableTrainer",
    "MatrixScore",
    "Partition",
    "Target",
    "Task",
    "__version__",
    "analyze",
    "baseline",
    "causal_lm_task",
    "classification_task",
    "cluster_model",
    "clusterability",
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
    "spectral_cocluster",
    "specialisation_index",
    "write_card",
]
