"""The model card of an extracted cluster: where it comes from, how big it is, and how it scores on held-out data.

The card's YAML header carries the same facts in an `extracted_cluster:` block, so tools can read which source and
cluster a model is without parsing markdown.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import transformers
from huggingface_hub import ModelCard, ModelCardData
from torch import nn

from ..modeling.extract import ClusterSize
from ..templates import template_text
from ..utils.hub import hub_repo_id
from ..utils.io import atomic_write
from ..version import __version__
from .card import CARD_NAME, CITATION, LIBRARY_TAGS, PAPER_ID, pipeline_tag_for


EXTRACT_TEMPLATE = "extracted_model_card.md"
EXTRACT_TAGS = [*LIBRARY_TAGS, "cluster-extraction"]


def extracted_block(source: str, size: ClusterSize, evaluation: Mapping[str, Any] | None) -> dict[str, Any]:
    """The `extracted_cluster:` YAML block: source, cluster, its size and, when measured, its held-out scores."""
    block: dict[str, Any] = {
        "source": source,
        "cluster": size.cluster,
        "n_clusters": size.n_clusters,
        "hidden_neurons": sum(size.neurons),
        "share_of_mlp_weights": round(size.share, 6),
        "intermediate_size": size.intermediate_size,
        "neurons_per_mlp": list(size.neurons),
    }
    if evaluation:
        block["evaluation"] = {k: round(v, 6) if isinstance(v, float) else v for k, v in evaluation.items()}
    return block


def render_extract_card(
    model: nn.Module,
    size: ClusterSize,
    *,
    source: str,
    source_parameters: int,
    width_field: str,
    model_name: str,
    repo_id: str | None = None,
    evaluation: Mapping[str, Any] | None = None,
) -> ModelCard:
    """Render the card of `model`, cluster `size.cluster` extracted from `source` (a folder or Hub id).

    `evaluation` holds the held-out scores (`task`, `n_examples`, `alone_*`, `full_*`, `without_*` loss and
    accuracy) when data was given.
    """
    source_id = hub_repo_id(source)
    pipeline_tag = pipeline_tag_for(model)
    data = ModelCardData(
        base_model=source_id,
        library_name="transformers",
        model_name=model_name,
        pipeline_tag=pipeline_tag,
        tags=EXTRACT_TAGS,
        extracted_cluster=extracted_block(source, size, evaluation),
    )
    return ModelCard.from_template(
        data,
        template_str=template_text(EXTRACT_TEMPLATE),
        model_name=model_name,
        repo_id=repo_id or model_name,
        source=source,
        source_url=f"https://huggingface.co/{source_id}" if source_id else None,
        cluster=size.cluster,
        n_clusters=size.n_clusters,
        neurons=sum(size.neurons),
        widths_total=sum(size.widths),
        share=size.share,
        width_field=width_field,
        intermediate_size=size.intermediate_size,
        source_width=max(size.widths),
        padding=size.padding,
        n_parameters=sum(p.numel() for p in model.parameters()),
        source_parameters=source_parameters,
        layers=list(zip(size.layers, size.neurons, size.widths, strict=True)),
        evaluation=evaluation,
        auto_class="AutoModelForCausalLM" if pipeline_tag == "text-generation" else "AutoModel",
        model_class=type(model).__name__,
        paper_id=PAPER_ID,
        citation=CITATION,
        hf_clusterable_version=__version__,
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
    )


def write_extract_card(output_dir: str | os.PathLike, model: nn.Module, size: ClusterSize, **card_kwargs) -> ModelCard:
    """Render the card (see `render_extract_card`) and write it as `README.md` into `output_dir`."""
    card = render_extract_card(model, size, **card_kwargs)
    atomic_write(Path(output_dir, CARD_NAME), str(card).rstrip("\n") + "\n")
    return card
