"""`extract_cluster`: one cluster of a clustered model as a standalone, smaller model of the same class.

With coupled clusters (the default) hidden neuron i of an MLP carries one label in the up/gate rows and the down
column, so cluster c of every MLP is a sub-MLP. The extracted model keeps, in every MLP, only the hidden neurons
labelled c; everything else (embeddings, attention, norms, the down projection's bias, the head) is copied unchanged.
Its outputs are those of the full model with every other cluster's hidden neurons silenced (their down-projection
columns zeroed), and it is an ordinary `transformers` model of the source's class: `save_pretrained` writes it and
`from_pretrained` (or any tool that loads models through it) reads it back.

The config holds one intermediate size for all layers in every architecture we target, so it becomes the largest
count of cluster-c neurons over the layers, and layers with fewer get zero neurons: rows of zeros (and zero biases)
in up/gate and a zero column in down. The zero down column alone makes a padded neuron contribute nothing, even when
its activation at zero input is not zero.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from peft import PeftModel
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..config import ClusterConfig
from ..core.partition import Partition
from ..utils.validation import require_int
from .measure import resolve_clusters
from .targets import Target, base_model, find_targets, get_weight, groups, modules_by_name


# Config fields that hold an MLP's hidden width, by architecture family: Llama/Mistral/Qwen/Gemma/NeoX/GPT-Neo,
# GPT-2 (None means 4 x n_embd), OPT.
INTERMEDIATE_SIZE_FIELDS = ("intermediate_size", "n_inner", "ffn_dim")

Clusters = str | os.PathLike | Mapping[str, Partition] | ClusterConfig


@dataclass(frozen=True)
class MLPLayer:
    """One coupled MLP: its hidden neurons' labels and every matrix that reads or writes them.

    `inputs` are the up/gate matrices (rows = hidden neurons), `outputs` the down matrices (columns = hidden neurons),
    by module name.
    """

    group: str
    labels: torch.Tensor
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    residual: int

    @property
    def width(self) -> int:
        return self.labels.numel()

    def neurons(self, cluster: int) -> int:
        return int((self.labels == cluster).sum())


@dataclass(frozen=True)
class ClusterSize:
    """How big cluster `cluster` is: hidden neurons per MLP and its share of the MLP weights."""

    cluster: int
    n_clusters: int
    neurons: tuple[int, ...]  # per MLP, in model order
    widths: tuple[int, ...]  # hidden neurons of each full MLP
    layers: tuple[str, ...]
    kept_weights: int
    mlp_weights: int

    @property
    def intermediate_size(self) -> int:
        """The extracted model's MLP width: the largest count of the cluster's neurons in any layer."""
        return max(self.neurons)

    @property
    def share(self) -> float:
        """Fraction of the MLP matrices' weights (biases aside) that belong to the cluster."""
        return self.kept_weights / self.mlp_weights

    @property
    def padding(self) -> int:
        """Zero neurons added so every layer has `intermediate_size` hidden neurons."""
        return sum(self.intermediate_size - n for n in self.neurons)


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with plain weights: PEFT adapters merged, torch.compile's wrapper dropped.

    The caller's model is never touched, and the copy keeps tied weights, buffers, dtype and device.
    """
    model = getattr(model, "_orig_mod", model)
    copied = copy.deepcopy(model)
    return copied.merge_and_unload() if isinstance(copied, PeftModel) else copied


def resolve_partitions(model: nn.Module, clusters: Clusters) -> tuple[list[Target], dict[str, Partition], int]:
    """Targets, partitions and k: saved ones from a checkpoint folder/repo, computed from a `ClusterConfig`, or a
    dict of partitions by module name (read as coupled MLP clusters, checked against the model)."""
    config, targets, partitions = resolve_clusters(model, clusters)
    return targets, partitions, config.n_clusters


def _hidden_labels(target: Target, partition: Partition) -> torch.Tensor:
    return partition.col_labels if target.transposed else partition.row_labels


def mlp_layers(model: nn.Module, targets: list[Target], partitions: Mapping[str, Partition]) -> list[MLPLayer]:
    """The coupled MLPs the clusters cover, with each one's hidden labels and all its matrices.

    Raises one line when a cluster is not a sub-MLP: a matrix clustered on its own (coupled=False, or a target outside
    any MLP), or the matrices of one MLP labelling its hidden neurons differently (per-matrix clusters).
    """
    alone = [t.name for t in targets if t.group == t.name]
    if alone:
        more = f" (and {len(alone) - 1} more)" if len(alone) > 1 else ""
        raise ValueError(
            f"{alone[0]}{more} is clustered on its own, not as part of an MLP whose hidden neurons share one label "
            "across up/gate/down, so its clusters are not sub-networks; extraction needs coupled clusters "
            "(ClusterConfig(coupled=True), the default)."
        )
    try:  # every matrix of each MLP, also those the clusters leave out (they must be cut to the same neurons)
        registered = groups(find_targets(model, coupled=True))
    except ValueError:
        registered = {}
    modules = modules_by_name(model)
    layers = []
    for group, members in groups(targets).items():
        labels = _hidden_labels(members[0], partitions[members[0].name])
        for t in members[1:]:
            if not torch.equal(_hidden_labels(t, partitions[t.name]), labels):
                raise ValueError(
                    f"{t.name} and {members[0].name} label the hidden neurons of {group} differently: these are "
                    "per-matrix clusters, not sub-MLPs; extraction needs coupled clusters (ClusterConfig(coupled="
                    "True), the default)."
                )
        names = list(dict.fromkeys([*(t.name for t in registered.get(group, [])), *(t.name for t in members)]))
        everything = {t.name: t for t in [*registered.get(group, []), *members]}
        inputs = tuple(n for n in names if not everything[n].transposed)
        outputs = tuple(n for n in names if everything[n].transposed)
        if not outputs or not inputs:
            raise ValueError(
                f"{group} has no {'down' if not outputs else 'up/gate'} projection among its matrices; extraction "
                "needs every matrix of the MLP."
            )
        residual = get_weight(modules[outputs[0]]).shape[0]
        layers.append(MLPLayer(group, labels.cpu(), inputs, outputs, residual))
    return layers


def cluster_size(layers: list[MLPLayer], cluster: int, n_clusters: int) -> ClusterSize:
    """Neurons per MLP and share of the MLP weights of `cluster`, after checking it is in range and not empty."""
    require_int("cluster", cluster, 0)
    if cluster >= n_clusters:
        raise ValueError(
            f"cluster {cluster} is out of range: the model has k = {n_clusters} clusters, numbered 0 to "
            f"{n_clusters - 1}."
        )
    neurons = tuple(layer.neurons(cluster) for layer in layers)
    if not any(neurons):
        raise ValueError(f"cluster {cluster} has no hidden neuron in any MLP; there is nothing to extract.")
    per_neuron = [layer.residual * (len(layer.inputs) + len(layer.outputs)) for layer in layers]
    return ClusterSize(
        cluster,
        n_clusters,
        neurons,
        tuple(layer.width for layer in layers),
        tuple(layer.group for layer in layers),
        sum(n * w for n, w in zip(neurons, per_neuron, strict=True)),
        sum(layer.width * w for layer, w in zip(layers, per_neuron, strict=True)),
    )


def intermediate_size_field(config, width: int) -> tuple[object, str]:
    """The (config, field) holding the MLP width: the text config of a multimodal model, one of
    `INTERMEDIATE_SIZE_FIELDS` whose value is the width (or None, GPT-2's "4 x n_embd")."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in INTERMEDIATE_SIZE_FIELDS:
        if hasattr(text, name):
            value = getattr(text, name, None)
            if value is None or (isinstance(value, int) and not isinstance(value, bool) and value == width):
                return text, name
    model_type = getattr(config, "model_type", type(config).__name__)
    raise ValueError(
        f"cannot tell which field of the {model_type} config holds the MLP width {width} (looked for "
        f"{', '.join(INTERMEDIATE_SIZE_FIELDS)}); per-layer or differently named widths are not supported."
    )


def _resize(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Give a Linear or Conv1D layer a new `(out, in)` weight (and bias), keeping its layout and attributes."""
    stored = weight.T.contiguous() if isinstance(module, Conv1D) else weight
    module.weight = nn.Parameter(stored, requires_grad=module.weight.requires_grad)
    if bias is not None:
        module.bias = nn.Parameter(bias, requires_grad=module.bias.requires_grad)
    out_features, in_features = weight.shape
    for attribute, value in (("out_features", out_features), ("in_features", in_features), ("nf", out_features)):
        if hasattr(module, attribute):
            setattr(module, attribute, value)
    if hasattr(module, "nx"):
        module.nx = in_features


@torch.no_grad()
def _cut(module: nn.Module, keep: torch.Tensor, size: int, hidden_axis: int) -> None:
    """Keep the `keep` hidden neurons of one matrix (rows of up/gate, columns of down), zero-padded to `size`."""
    weight = get_weight(module)  # (out, in)
    shape = list(weight.shape)
    shape[hidden_axis] = size
    new = weight.new_zeros(shape)
    bias = module.bias if isinstance(getattr(module, "bias", None), torch.Tensor) else None
    if hidden_axis == 0:
        new[: keep.numel()] = weight[keep]
        if bias is not None:
            new_bias = bias.new_zeros(size)
            new_bias[: keep.numel()] = bias[keep]
            bias = new_bias
    else:
        new[:, : keep.numel()] = weight[:, keep]
        bias = None  # the down projection's bias is the MLP's own output offset: kept as it is
    _resize(module, new, bias)


def extract_cluster(model: nn.Module, clusters: Clusters, cluster: int) -> nn.Module:
    """Cluster `cluster` of `model` as a standalone model of the same class, with narrower MLPs.

    Args:
        model: a clustered model (a PEFT model is merged into a copy first; `model` itself is never changed).
        clusters: the folder or Hub repo the model was saved to with its `clusters.safetensors` and
            `cluster_config.json`, a `ClusterConfig` (clusters computed as it says), or a dict of partitions by
            module name (e.g. `measure(model).partitions`).
        cluster (`int`): which cluster, 0 to k - 1.

    Returns a new model whose every MLP keeps only the hidden neurons labelled `cluster`, padded with zero neurons to
    the largest count over the layers (the config's intermediate size). Its outputs equal `model`'s with every other
    cluster's hidden neurons silenced (their down-projection columns zeroed, the down bias kept). Raises `ValueError`
    for per-matrix (uncoupled) clusters, a cluster out of range or without neurons, or an architecture whose MLP
    width is not a known config field.
    """
    plain = merged_copy(model)
    targets, partitions, k = resolve_partitions(plain, clusters)
    layers = extractable_layers(plain, targets, partitions)
    size = cluster_size(layers, cluster, k)
    target_config, field_name = intermediate_size_field(plain.config, layers[0].width)
    modules = modules_by_name(plain)
    for layer in layers:
        keep = (layer.labels == cluster).nonzero().squeeze(1)
        for name in layer.inputs:
            _cut(modules[name], keep.to(get_weight(modules[name]).device), size.intermediate_size, 0)
        for name in layer.outputs:
            _cut(modules[name], keep.to(get_weight(modules[name]).device), size.intermediate_size, 1)
        mlp = modules.get(layer.inputs[0].rpartition(".")[0])  # the module holding the MLP's matrices
        if isinstance(getattr(mlp, "intermediate_size", None), int):
            mlp.intermediate_size = size.intermediate_size  # Llama-style MLPs keep a copy of the width
    setattr(target_config, field_name, size.intermediate_size)
    return plain


def describe_cluster(model: nn.Module, clusters: Clusters, cluster: int) -> ClusterSize:
    """The size of `cluster` (neurons per MLP, share of MLP weights) and every check `extract_cluster` makes on its
    arguments, without copying the model."""
    targets, partitions, k = resolve_partitions(model, clusters)
    return cluster_size(extractable_layers(model, targets, partitions), cluster, k)


def extractable_layers(model: nn.Module, targets: list[Target], partitions: Mapping[str, Partition]) -> list[MLPLayer]:
    """`mlp_layers`, after checking that the model's config says where its MLP width is (so the extracted model
    can be saved and reloaded): every check `extract_cluster` makes that does not depend on the cluster."""
    layers = mlp_layers(model, targets, partitions)
    intermediate_size_field(base_model(model).config, layers[0].width)
    return layers
