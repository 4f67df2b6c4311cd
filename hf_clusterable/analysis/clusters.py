"""What each cluster does: every cluster as a model of its own, the full model without it, and the sum of parts.

For a model whose MLPs are clustered as sub-MLPs (coupled clusters), `cluster_parts` measures on held-out data:

* each cluster **alone**: the model `extract_cluster` returns (every MLP keeps only that cluster's hidden neurons);
* the full model **without** it (its hidden neurons switched off, as in cluster ablation);
* per target (a token, an answer, a class): which targets' loss rises most without the cluster, and which ones the
  cluster alone predicts best;
* the **sum of parts**: the full model's MLP outputs against the sum of the clusters' MLP outputs when each runs
  alone (biases aside). The hidden neurons partition every MLP, so the first MLP, which sees the same input in every
  sub-model, always sums exactly; each later MLP sums exactly only if no cluster changes another's input through
  attention, norms and the residual stream, i.e. if the model is separable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..core.partition import Partition
from ..modeling.extract import MLPLayer, cluster_size, extract_cluster, extractable_layers
from ..modeling.plot import png_bytes
from ..modeling.targets import Target, modules_by_name
from ..templates import template_text
from .ablation import Evaluation, ablation_units, evaluate_task, restored, zero_cluster
from .tasks import Batch, Task, batch_to, model_device


PARTS_TEMPLATE = "cluster_parts.md"


@dataclass
class TargetEffect:
    """One target id (a token, an answer value, a class): how often it is predicted, the mean loss of the model being
    described on it, and the full model's."""

    target: int
    text: str
    count: int
    loss: float
    full_loss: float


@dataclass
class ClusterPart:
    """One cluster: its size, the held-out scores of it alone and of the model without it, and its targets."""

    cluster: int
    neurons: int  # hidden neurons over all MLPs
    share: float  # of the MLP matrices' weights
    intermediate_size: int  # MLP width of the extracted model
    alone_loss: float
    alone_accuracy: float
    without_loss: float
    without_accuracy: float
    rises_most_without: list[TargetEffect] = field(default_factory=list)  # loss = without the cluster
    best_alone: list[TargetEffect] = field(default_factory=list)  # loss = the cluster alone


@dataclass
class ClusterParts:
    """`cluster_parts`' measurements; `to_markdown` and `plot` present them."""

    n_predictions: int
    full_loss: float
    full_accuracy: float
    clusters: list[ClusterPart]
    layers: list[str]  # the MLP output matrices, in model order
    sum_of_parts_error: list[float]  # per MLP: ||y - sum_c y_c|| / ||y||, biases aside
    overall_sum_of_parts_error: float  # over all MLPs together
    min_count: int

    def summary(self) -> str:
        alone = ", ".join(_fmt(c.alone_loss, 3) for c in self.clusters)
        return f"; each cluster alone: loss {alone}; sum of parts error {self.overall_sum_of_parts_error:.3g}"

    def to_markdown(self, figures: bool = True) -> str:
        """The per-cluster section of the analysis report, from `templates/cluster_parts.md`."""
        import jinja2

        environment = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
        template = environment.from_string(template_text(PARTS_TEMPLATE))
        return template.render(p=self, figures=figures, targets=_targets_cell, fmt=_fmt, zip=zip)

    def plot(self) -> bytes:
        """PNG: loss of each cluster alone and of the model without it; the sum-of-parts error per MLP."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10.0, 3.4), layout="constrained")
        ax, parts = fig.subplots(1, 2, width_ratios=[max(2, len(self.clusters)), max(2, min(len(self.layers), 24))])
        index = torch.arange(len(self.clusters)).float()
        ax.bar(index - 0.2, [c.alone_loss for c in self.clusters], 0.4, label="cluster alone", color="tab:blue")
        ax.bar(index + 0.2, [c.without_loss for c in self.clusters], 0.4, label="without the cluster", color="tab:red")
        ax.axhline(self.full_loss, color="black", linestyle="--", linewidth=1, label="full model")
        ax.set_xticks(index.tolist(), [f"{c.cluster}\n{c.share:.0%}" for c in self.clusters])
        ax.set_xlabel("cluster (share of MLP weights)")
        ax.set_ylabel("held-out loss")
        ax.legend(fontsize=7)
        parts.bar(range(len(self.layers)), self.sum_of_parts_error, color="tab:purple")
        if len(self.layers) <= 24:
            parts.set_xticks(range(len(self.layers)))
        parts.set_xlabel("MLP (model order)")
        parts.set_ylabel("||y - sum of clusters' y|| / ||y||")
        parts.set_title(f"sum of parts: {self.overall_sum_of_parts_error:.3g} overall", fontsize=9)
        return png_bytes(fig)


def _fmt(value: float, digits: int = 4) -> str:
    """Fixed decimals, or significant digits for values too close to 0 to show that way (a loss of 2e-5)."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}" if value == 0 or abs(value) >= 10**-digits * 10 else f"{value:.{digits - 1}e}"


def _targets_cell(effects: list[TargetEffect], signed: bool) -> str:
    """Targets as one markdown table cell: quoted text, then the loss (or its rise over the full model's)."""
    cells = []
    for e in effects:
        text = repr(e.text).replace("|", "\\|")
        value = f"{e.loss - e.full_loss:+.2f}" if signed else f"{e.loss:.2f} vs {e.full_loss:.2f}"
        cells.append(f"{text} ({value})")
    return ", ".join(cells) or "-"


# ---- measuring ---------------------------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Per held-out prediction: loss, whether the argmax is right, and the target id."""

    loss: torch.Tensor
    correct: torch.Tensor
    targets: torch.Tensor

    @classmethod
    def of(cls, logits: torch.Tensor, targets: torch.Tensor) -> Predictions:
        logits = logits.float()
        loss = F.cross_entropy(logits, targets, reduction="none")
        return cls(loss.cpu(), (logits.argmax(-1) == targets).float().cpu(), targets.cpu())

    @classmethod
    def cat(cls, parts: list[Predictions]) -> Predictions:
        return cls(*(torch.cat([getattr(p, f) for p in parts]) for f in ("loss", "correct", "targets")))

    def per_target(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Occurrences and mean loss of every target id below `n`."""
        counts = torch.bincount(self.targets, minlength=n).double()
        total = torch.zeros(n, dtype=torch.float64).index_add_(0, self.targets, self.loss.double())
        return counts, total / counts.clamp_min(1)


@torch.no_grad()
def predictions(model: nn.Module, task: Task) -> Predictions:
    device = model_device(model)
    return Predictions.cat([Predictions.of(*task.predict(model, batch_to(b, device))) for b in task.batches])


@contextmanager
def mlp_outputs(model: nn.Module, names: list[str], batch: Batch) -> Iterator[dict[str, torch.Tensor]]:
    """While inside, record every named module's output minus its bias (what its hidden neurons write), fp32 on the
    CPU, at the batch's real tokens (where its `attention_mask` is 1, if it has one that fits)."""
    modules = modules_by_name(model)
    seen: dict[str, torch.Tensor] = {}
    mask = batch.get("attention_mask")

    def record(name: str):
        def hook(module: nn.Module, args, output: torch.Tensor) -> None:
            y = output.detach().float()
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                y = y - module.bias.detach().float()
            if mask is not None and tuple(mask.shape) == tuple(y.shape[:-1]):
                y = y[mask.bool().to(y.device)]
            seen[name] = y.reshape(-1, y.shape[-1]).cpu()

        return hook

    handles = [modules[name].register_forward_hook(record(name)) for name in names]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def _sum_of_parts(
    model: nn.Module, task: Task, units, k: int, names: list[str], progress: bool
) -> tuple[Predictions, list[float], float]:
    """The full model's predictions, and per MLP output ||y - sum_c y_c|| / ||y||, with y_c the MLP output of the
    model with every cluster but c switched off (the extracted cluster c, computed in place)."""
    device = model_device(model)
    error = torch.zeros(len(names), dtype=torch.float64)
    norm = torch.zeros(len(names), dtype=torch.float64)
    full_predictions = []
    for batch in tqdm(task.batches, desc="sum of parts", disable=not progress, unit="batch", leave=False):
        batch = batch_to(batch, device)
        with torch.no_grad(), mlp_outputs(model, names, batch) as full:
            full_predictions.append(Predictions.of(*task.predict(model, batch)))
        total = {name: torch.zeros_like(y) for name, y in full.items()}
        for c in range(k):
            with restored(model, [u.module for u in units]), torch.no_grad():
                for other in range(k):
                    if other != c:
                        zero_cluster(model, units, other)
                with mlp_outputs(model, names, batch) as alone:
                    task.predict(model, batch)
            for name in names:
                total[name] += alone[name]
        for i, name in enumerate(names):
            error[i] += float((full[name].double() - total[name].double()).pow(2).sum())
            norm[i] += float(full[name].double().pow(2).sum())
    relative = (error / norm.clamp_min(1e-300)).sqrt()
    overall = math.sqrt(float(error.sum() / norm.sum().clamp_min(1e-300)))
    return Predictions.cat(full_predictions), relative.tolist(), overall


def _effects(rank: torch.Tensor, loss, full, counts, eligible, top: int, text) -> list[TargetEffect]:
    """The `top` eligible targets with the lowest `rank`, with their loss under the model described and the full
    model's."""
    chosen = [int(i) for i in torch.argsort(rank, stable=True) if eligible[i]][:top]
    return [TargetEffect(i, text(i), int(counts[i]), float(loss[i]), float(full[i])) for i in chosen]


def cluster_parts(
    model: nn.Module,
    task: Task,
    targets: list[Target],
    partitions: dict[str, Partition],
    *,
    tokenizer=None,
    top: int = 5,
    min_count: int = 3,
    progress: bool = False,
) -> ClusterParts:
    """Each cluster alone, the model without it, the targets each one matters for, and the sum-of-parts check.

    `model` must have plain weights (a PEFT model merged first, as `analyze` does); it ends as it started. Targets
    count for the token tables only when they occur at least `min_count` times; `tokenizer` decodes token ids (other
    targets are shown as their id). Raises `ValueError` when the clusters are not sub-MLPs (see `extract_cluster`).
    """
    layers: list[MLPLayer] = extractable_layers(model, targets, partitions)
    k = partitions[targets[0].name].n_clusters
    units = ablation_units(model, targets, partitions)
    names = [name for layer in layers for name in layer.outputs]
    full, errors, overall = _sum_of_parts(model, task, units, k, names, progress)
    n = int(full.targets.max()) + 1
    counts, full_loss = full.per_target(n)
    eligible = counts >= min(min_count, int(counts.max()))

    def text(i: int) -> str:
        return tokenizer.decode([i]) if tokenizer is not None else str(i)

    clusters = []
    for c in tqdm(range(k), desc="clusters alone", disable=not progress, unit="cluster", leave=False):
        with restored(model, [u.module for u in units]):
            zero_cluster(model, units, c)
            without = predictions(model, task)
        if not any(layer.neurons(c) for layer in layers):
            nan = math.nan
            clusters.append(ClusterPart(c, 0, 0.0, 0, nan, nan, float(without.loss.mean()), nan))
            continue
        size = cluster_size(layers, c, k)
        alone = predictions(extract_cluster(model, partitions, c), task)
        _, without_loss = without.per_target(n)
        _, alone_loss = alone.per_target(n)
        clusters.append(
            ClusterPart(
                c,
                sum(size.neurons),
                size.share,
                size.intermediate_size,
                float(alone.loss.mean()),
                float(alone.correct.mean()),
                float(without.loss.mean()),
                float(without.correct.mean()),
                _effects(full_loss - without_loss, without_loss, full_loss, counts, eligible, top, text),
                _effects(alone_loss, alone_loss, full_loss, counts, eligible, top, text),
            )
        )
    return ClusterParts(
        full.loss.numel(),
        float(full.loss.mean()),
        float(full.correct.mean()),
        clusters,
        names,
        errors,
        overall,
        min_count,
    )


# ---- one cluster -------------------------------------------------------------------------------------------------


@dataclass
class ClusterEvaluation:
    """Held-out scores of one cluster alone, of the full model, and of the full model without the cluster."""

    task: str
    n_examples: int
    alone_loss: float
    alone_accuracy: float
    full_loss: float
    full_accuracy: float
    without_loss: float
    without_accuracy: float


def evaluate_cluster(
    model: nn.Module,
    task: Task,
    targets: list[Target],
    partitions: dict[str, Partition],
    cluster: int,
    *,
    extracted: nn.Module | None = None,
    full: Evaluation | None = None,
) -> ClusterEvaluation:
    """Score `cluster` alone (`extracted`, or `extract_cluster`'s model) and the model (plain weights) with and without
    it; `full` reuses the full model's scores across clusters. The model ends as it started."""
    full = full if full is not None else evaluate_task(model, task)
    units = ablation_units(model, targets, partitions)
    with restored(model, [u.module for u in units]):
        zero_cluster(model, units, cluster)
        without = evaluate_task(model, task)
    alone = evaluate_task(extracted if extracted is not None else extract_cluster(model, partitions, cluster), task)
    return ClusterEvaluation(
        task.name,
        full.n_examples,
        alone.loss,
        alone.accuracy,
        full.loss,
        full.accuracy,
        without.loss,
        without.accuracy,
    )
