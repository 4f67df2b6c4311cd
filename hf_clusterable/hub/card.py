"""Model cards for clustered models, rendered from the template shipped with the package.

Scores go into the card twice: as `model-index` results, which the Hub displays and indexes, and as a
`clusterability` YAML block with every matrix's score, so tools can read them without parsing markdown. Both come
from one `ClusterReport`, so the card, `cluster_metrics.json` and `measure(model, repo_id)` agree.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from torch import nn

from ..config import ClusterConfig
from ..constants import HEATMAP_NAME, TRANSFORMERS_MODELS_TO_CLUSTER_TARGETS
from ..modeling.measure import ClusterReport
from ..modeling.targets import base_model
from ..templates import template_text
from ..utils.hub import hub_repo_id
from ..utils.io import atomic_write
from ..version import __version__


logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
TEMPLATE_NAME = "clusterable_model_card.md"
LIBRARY_TAGS = ["hf_clusterable", "clusterability"]
PAPER_ID = "2502.02470"
CITATION = """\
@article{golechha2025modular,
  title         = {Modular Training of Neural Networks aids Interpretability},
  author        = {Golechha, Satvik and Chaudhary, Maheep and Velja, Joan and Abate, Alessandro and Schoots, Nandi},
  journal       = {arXiv preprint arXiv:2502.02470},
  year          = {2025},
  eprint        = {2502.02470},
  archivePrefix = {arXiv},
  primaryClass  = {cs.LG}
}"""
# Clusterability is a property of the weights alone; model-index still wants a dataset, so name that honestly.
WEIGHTS_DATASET = {"dataset_type": "model-weights", "dataset_name": "Model weights (no data needed)"}
# Trainer log keys that describe the run rather than the task.
_NOT_TASK_METRICS = ("runtime", "per_second", "epoch", "step", "clusterability", "cluster_loss")


def pipeline_tag_for(model: nn.Module) -> str | None:
    """`"text-generation"` for causal LMs: the Hub widget and the quick start's Auto class depend on it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal = type(base_model(model)).__name__ in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()
    return "text-generation" if causal else None


def describe_targets(config: ClusterConfig) -> str:
    """The matrices the clusters apply to, in words (the config's `None` means the model type's MLP matrices)."""
    if isinstance(config.targets, str):
        return f"modules matching the regex `{config.targets}`"
    if config.targets is not None:
        return ", ".join(f"`{t}`" for t in config.targets)
    default = TRANSFORMERS_MODELS_TO_CLUSTER_TARGETS.get(config.model_type or "", {})
    names = ", ".join(f"`{t}`" for t in default) or "the model type's"
    return f"{names} (the MLP matrices of every layer)"


def task_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Numeric task metrics from a Trainer log entry or `evaluate()` result, without timings and cluster scores."""
    return {
        key: float(value)
        for key, value in (metrics or {}).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
        if not any(part in key for part in _NOT_TASK_METRICS)
    }


def clusterability_block(report: ClusterReport, config: ClusterConfig) -> dict[str, Any]:
    """The `clusterability:` YAML block: settings, summary and per-matrix scores (rounded for readability)."""
    return {
        "n_clusters": report.n_clusters,
        "loss_weight": config.loss_weight,
        "targets": config.targets,
        "coupled": config.coupled,
        "init": config.init,
        "mean": round(report.mean, 6),
        "baseline": round(report.baseline, 6),
        "normalised": round(report.normalised, 6),
        "per_matrix": {
            r.name: {
                "shape": list(r.shape),
                "score": round(r.score, 6),
                "baseline": round(r.baseline, 6),
                "normalised": round(r.normalised, 6),
            }
            for r in report.rows
        },
    }


def eval_results(report: ClusterReport, config: ClusterConfig, task_type: str | None) -> list[EvalResult]:
    """`model-index` entries: the mean clusterability and its normalised variant for this k and set of targets.

    k and the targets go into the metric's name and config, so results for other k or targets can sit alongside.
    """
    k, targets = report.n_clusters, config.targets
    scope = "mlp" if targets is None else targets if isinstance(targets, str) else ",".join(targets)
    common = dict(
        task_type=task_type or "other",
        task_name="Clusterability",
        **WEIGHTS_DATASET,
        metric_config=f"k={k},targets={scope}",
        metric_args={"n_clusters": k, "baseline": round(report.baseline, 6), "matrices": len(report.rows)},
    )
    return [
        EvalResult(
            metric_type="clusterability",
            metric_name=f"Clusterability (k={k}, {scope})",
            metric_value=round(report.mean, 6),
            **common,
        ),
        EvalResult(
            metric_type="normalised_clusterability",
            metric_name=f"Normalised clusterability (k={k}, {scope})",
            metric_value=round(report.normalised, 6),
            **common,
        ),
    ]


def card_data(
    report: ClusterReport | None,
    config: ClusterConfig,
    *,
    model_name: str,
    base_model: str | None,
    datasets: list[str],
    tags: list[str],
    language: str | list[str] | None,
    license: str | None,
    pipeline_tag: str | None,
    library_name: str,
) -> ModelCardData:
    """The card's YAML header: Hub metadata, `model-index` results and the `clusterability` block."""
    extra = {"clusterability": clusterability_block(report, config)} if report is not None else {}
    return ModelCardData(
        base_model=base_model,
        datasets=datasets or None,
        language=language,
        license=license,
        library_name=library_name,
        model_name=model_name,
        pipeline_tag=pipeline_tag,
        tags=list(dict.fromkeys([*LIBRARY_TAGS, *tags])),
        eval_results=eval_results(report, config, pipeline_tag) if report is not None else None,
        **extra,
    )


def metric_rows(
    metrics: Mapping[str, Any] | None, reference_metrics: Mapping[str, Any] | None
) -> list[tuple[str, str, str]]:
    """(metric, this run, reference run) rows for the task-metrics table; "-" where a run lacks the metric."""
    ours, reference = task_metrics(metrics), task_metrics(reference_metrics)
    return [
        (name, f"{ours[name]:.4f}" if name in ours else "-", f"{reference[name]:.4f}" if name in reference else "-")
        for name in dict.fromkeys([*ours, *reference])
    ]


def cluster_mode(config: ClusterConfig) -> str:
    """How the clusters were made, in words."""
    coupling = "one set of labels per MLP (each cluster is a sub-MLP)" if config.coupled else "each matrix on its own"
    return coupling + (", spectral co-clustering" if config.init == "spectral" else ", fixed contiguous blocks")


def render_card(
    report: ClusterReport | None,
    config: ClusterConfig,
    *,
    model_name: str,
    repo_id: str | None = None,
    base_model: str | None = None,
    datasets: str | list[str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    reference_metrics: Mapping[str, Any] | None = None,
    tags: str | list[str] | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    pipeline_tag: str | None = "text-generation",
    library_name: str = "transformers",
    heatmap: str | None = None,
) -> ModelCard:
    """Render the card for a clustered model.

    Args:
        report (`ClusterReport` or `None`): the current scores; `None` before clusters exist (a spectral warm-up).
        config (`ClusterConfig`): k, targets and loss weight the model was trained with.
        model_name (`str`): the card's title; the Hub requires it next to eval results.
        repo_id (`str`, *optional*): Hub id used in the quick start; defaults to `model_name`.
        base_model (`str`, *optional*): Hub id of the model this one was trained from; local paths are dropped.
        datasets (`str` or `list[str]`, *optional*): Hub ids of the training data.
        metrics, reference_metrics (`dict`, *optional*): task metrics of this run (e.g. the Trainer's last
            `eval_*` values) and of a run without the clusterability loss, shown side by side.
        heatmap (`str`, *optional*): path of the block heatmap relative to the card, embedded when given.
    """
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or [])
    base_model = hub_repo_id(base_model)
    data = card_data(
        report,
        config,
        model_name=model_name,
        base_model=base_model,
        datasets=datasets,
        tags=[tags] if isinstance(tags, str) else list(tags or []),
        language=language,
        license=license,
        pipeline_tag=pipeline_tag,
        library_name=library_name,
    )
    return ModelCard.from_template(
        data,
        template_str=template_text(TEMPLATE_NAME),
        model_name=model_name,
        repo_id=repo_id or model_name,
        base_model=base_model,
        model_type=config.model_type or "transformers",
        dataset_names=datasets,
        n_clusters=config.n_clusters,
        loss_weight=config.loss_weight,
        targets=describe_targets(config),
        cluster_mode=cluster_mode(config),
        cluster_step=config.cluster_step,
        table=report.to_markdown() if report is not None else None,
        heatmap=heatmap,
        task_metrics=metric_rows(metrics, reference_metrics),
        auto_class="AutoModelForCausalLM" if pipeline_tag == "text-generation" else "AutoModel",
        paper_id=PAPER_ID,
        citation=CITATION,
        hf_clusterable_version=__version__,
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        huggingface_hub_version=huggingface_hub.__version__,
    )


def write_card(
    output_dir: str | os.PathLike,
    model: nn.Module,
    report: ClusterReport | None,
    config: ClusterConfig,
    *,
    pipeline_tag: str | None = None,
    weights: Mapping[str, torch.Tensor] | None = None,
    **card_kwargs: Any,
) -> ModelCard:
    """Render `README.md` into `output_dir` and draw the block heatmap it embeds next to it.

    The heatmap needs the optional matplotlib (`pip install hf-clusterable[plots]`); without it the card simply has
    no image. It is drawn from `weights` (`(out, in)` tensors by target name, already gathered: the trainer gathers
    sharded weights on every process before the main process writes) or else from `model`. `pipeline_tag` defaults
    from the model's class, other `card_kwargs` go to `render_card`.
    """
    from peft import PeftModel

    from ..modeling.plot import panel_weights, render_blocks

    card_kwargs["pipeline_tag"] = pipeline_tag or pipeline_tag_for(model)
    card_kwargs["library_name"] = "peft" if isinstance(model, PeftModel) else "transformers"
    render_card(report, config, **card_kwargs)  # bad input fails here, before anything is written
    heatmap = None
    if report is not None:
        try:
            drawn = weights if weights is not None else panel_weights(model, report.partitions)
            atomic_write(Path(output_dir, HEATMAP_NAME), render_blocks(drawn, report.partitions))
            heatmap = HEATMAP_NAME
        except ImportError:
            logger.warning("matplotlib is not installed: the model card has no heatmap (pip install matplotlib).")
    card = render_card(report, config, heatmap=heatmap, **card_kwargs)
    atomic_write(Path(output_dir, CARD_NAME), str(card).rstrip("\n") + "\n")
    return card
