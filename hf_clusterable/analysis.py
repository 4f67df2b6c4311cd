"""`analyze`: are a clustered model's clusters really separate, do they specialise, and are its circuits smaller?

The paper's interpretability evaluations, run on held-out data (see `tasks.py`):

* **Cut test**: zero every weight outside the k diagonal blocks of every target matrix. Separate clusters lose little.
* **Cluster ablation**: switch one cluster off at a time and record the damage (rise in cross-entropy) on every
  category (class, answer value, token bucket). The *specialisation index* is the mutual information between which
  cluster is off and which category is hurt, scaled to [0, 1]; it is compared with the same index for random splits
  of the same neurons into groups of the same sizes, since noisy damage alone looks somewhat specialised.
* **Effective circuit size**: per category, the smallest fraction of target weights that keeps `share` of its
  performance when the others are zeroed, lowest attribution |w * dm/dw| first (m: the logit margin; bisection on
  the fraction).

Every weight edit is made in place and undone before the function returns, so the model ends as it started.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from tqdm.auto import tqdm

from .config import ClusterConfig, atomic_write, resolve_file
from .constants import CLUSTERS_NAME, CONFIG_NAME
from .measure import resolve_clusters, score_matrices
from .partition import Partition
from .targets import Target, base_model, get_weight, stored_weight
from .tasks import TOKEN_CATEGORIES, Task


TASKS = ("modular-addition", "digits", "causal-lm")
# Heads whose rows are the model's outputs: ablating their rows would delete classes outright.
HEAD_NAMES = ("classifier", "score", "lm_head", "head")
TABLE_LIMIT = 20  # categories shown as table columns; more go to the plots and the JSON


# ---- evaluation ------------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """Task performance, overall and per category.

    `informedness[j]` is the accuracy on category j's examples minus the share of the other examples predicted as a
    label of category j (Youden's J): 0 for a constant prediction, 1 for a perfect one. Circuit sizes keep this
    rather than per-class accuracy, which a model that always answers j maximises.
    """

    loss: float
    accuracy: float
    n_examples: int
    category_counts: list[int]
    category_loss: list[float]
    category_accuracy: list[float]
    informedness: list[float]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: nn.Module, task: Task) -> Evaluation:
    """Mean cross-entropy and accuracy of `model` on `task`, overall and per category."""
    device = _device(model)
    losses, correct, target_cat, pred_cat = [], [], [], []
    for batch in task.batches:
        logits, targets = task.predict(model, _to(batch, device))
        logits = logits.float()
        pred = logits.argmax(-1)
        losses.append(F.cross_entropy(logits, targets, reduction="none").cpu())
        correct.append((pred == targets).float().cpu())
        target_cat.append(task.category_of(targets).cpu())
        pred_cat.append(task.category_of(pred).cpu())
    loss, hit, tcat, pcat = (torch.cat(x) for x in (losses, correct, target_cat, pred_cat))
    if loss.numel() == 0:
        raise ValueError("the task has no examples to score.")
    k, known = task.n_categories, tcat >= 0
    counts = torch.bincount(tcat[known], minlength=k).double()
    per_loss = torch.zeros(k, dtype=torch.float64).index_add_(0, tcat[known], loss[known].double()) / counts
    per_acc = torch.zeros(k, dtype=torch.float64).index_add_(0, tcat[known], hit[known].double()) / counts
    false_pos = torch.bincount(pcat[(pcat >= 0) & (pcat != tcat)], minlength=k).double()
    informedness = per_acc - false_pos / (loss.numel() - counts).clamp_min(1)
    return Evaluation(
        float(loss.mean()),
        float(hit.mean()),
        loss.numel(),
        counts.long().tolist(),
        per_loss.tolist(),
        per_acc.tolist(),
        informedness.tolist(),
    )


# ---- weight edits ----------------------------------------------------------------------------------------------


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(base_model(model).named_modules())


def editable(model: nn.Module) -> nn.Module:
    """The model whose weights analysis may edit: a merged copy of a PEFT model, else the model itself.

    A LoRA layer's effective weight W + BA is computed on the fly, so zeroing parts of it needs merged weights.
    """
    model = getattr(model, "_orig_mod", model)
    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model


@contextmanager
def restored(model: nn.Module, names: list[str]) -> Iterator[None]:
    """Undo every in-place change to these modules' weights and biases on exit, whatever happened inside."""
    modules = _modules(model)
    params = []
    for name in dict.fromkeys(names):
        module = modules[name]
        if isinstance(module, BaseTunerLayer):
            raise ValueError(f"{name} is an unmerged adapter layer; merge the adapters (merge_and_unload) first.")
        params.append(stored_weight(module))
        if isinstance(getattr(module, "bias", None), torch.Tensor):
            params.append(module.bias)
    saved = [p.detach().clone() for p in params]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


@torch.no_grad()
def cut_off_block(model: nn.Module, targets: list[Target], partitions: dict[str, Partition]) -> None:
    """Zero, in place, every weight outside the k diagonal blocks of every target (biases are kept)."""
    modules = _modules(model)
    for t in targets:
        weight, p = get_weight(modules[t.name]), partitions[t.name]
        weight.mul_((p.row_labels[:, None] == p.col_labels[None, :]).to(weight.device, weight.dtype))


@dataclass(frozen=True)
class Units:
    """Neurons of one matrix that belong to clusters: its rows (outputs, with the bias) or its columns (inputs).

    Matrices with the same `layer` hold the same neurons (one MLP's hidden layer), so a random relabelling must
    permute them together.
    """

    module: str
    axis: int
    labels: torch.Tensor
    layer: str


def _is_head(model: nn.Module, name: str) -> bool:
    heads = getattr(base_model(model), "get_output_embeddings", lambda: None)()
    return name.rsplit(".", 1)[-1] in HEAD_NAMES or (heads is not None and _modules(model).get(name) is heads)


def ablation_units(model: nn.Module, targets: list[Target], partitions: dict[str, Partition]) -> list[Units]:
    """What switching a cluster off zeroes.

    * Coupled MLP groups (a hidden neuron has one label in the up/gate/c_fc rows and the down/c_proj columns): the
      cluster's hidden neurons, i.e. its rows (and bias entries) of every up/gate matrix and its columns of every
      down matrix. The sub-MLP goes silent; the residual stream it reads and writes stays.
    * Matrices clustered on their own (e.g. ClusterNet's FC layers): the matrix's output neurons of that cluster,
      its rows and bias entries. An output head (`classifier`, `score`, `lm_head`, or the output embeddings) is
      skipped: zeroing its rows would delete classes outright and make any model look specialised.
    """
    units = []
    for t in targets:
        p = partitions[t.name]
        if t.group != t.name:  # coupled: the partition's hidden side is rows, or columns for a down projection
            units.append(
                Units(t.name, 1, p.col_labels, t.group) if t.transposed else Units(t.name, 0, p.row_labels, t.group)
            )
        elif not _is_head(model, t.name):
            units.append(Units(t.name, 0, p.row_labels, t.name))
    if not units:
        raise ValueError(
            "no cluster neurons to ablate: every target is an output head; cluster hidden layers (the default)."
        )
    return units


def random_units(units: list[Units], seed: int) -> list[Units]:
    """The same neurons split at random into groups of the same sizes (one permutation per layer)."""
    g = torch.Generator().manual_seed(seed)
    perms: dict[str, torch.Tensor] = {}
    out = []
    for u in units:
        perm = perms.setdefault(u.layer, torch.randperm(u.labels.numel(), generator=g))
        out.append(Units(u.module, u.axis, u.labels[perm], u.layer))
    return out


@torch.no_grad()
def zero_cluster(model: nn.Module, units: list[Units], cluster: int) -> None:
    """Switch one cluster's neurons off, in place (see `ablation_units` for what that zeroes)."""
    modules = _modules(model)
    for u in units:
        module = modules[u.module]
        weight = get_weight(module)  # (out, in); a view of the stored weight, so writes reach the model
        index = (u.labels == cluster).nonzero().squeeze(1).to(weight.device)
        if u.axis == 0:
            weight[index] = 0
            if isinstance(getattr(module, "bias", None), torch.Tensor):
                module.bias[index] = 0
        else:
            weight[:, index] = 0


# ---- the three tests -------------------------------------------------------------------------------------------


def cut_test(model: nn.Module, task: Task, targets: list[Target], partitions: dict[str, Partition]) -> Evaluation:
    """Performance with every off-block weight of the targets zeroed; the model is restored afterwards."""
    with restored(model, [t.name for t in targets]):
        cut_off_block(model, targets, partitions)
        return evaluate(model, task)


def _clipped(damage: torch.Tensor) -> torch.Tensor:
    # An ablation that helps a category (negative damage) or a category with no examples (NaN) counts as no damage.
    return torch.as_tensor(damage, dtype=torch.float64).nan_to_num(0.0).clamp_min(0.0)


def specialisation_index(damage: torch.Tensor) -> float:
    """How much knowing the category tells which cluster hurts it: I(cluster; category) / log min(k, categories).

    `damage` is (k clusters, categories), clipped at 0 and read as a joint distribution P(c, j) ~ d_cj. The index
    is 0 when every category's damage profile over the clusters is the same up to scale, even if one cluster
    matters more than the others everywhere (that is importance, not specialisation), and 1 when every category is
    hurt by a single cluster and the clusters do equal damage. NaN when no ablation hurts anything.
    """
    d = _clipped(damage)
    total = d.sum()
    if not total > 0 or min(d.shape) < 2:
        return math.nan
    p = d / total
    independent = p.sum(1, keepdim=True) * p.sum(0, keepdim=True)
    inside = p > 0
    information = (p[inside] * (p[inside] / independent[inside]).log()).sum()
    return float(information / math.log(min(d.shape)))


def category_concentration(damage: torch.Tensor) -> torch.Tensor:
    """Per category j: (max_c d_cj / sum_c d_cj - 1/k) / (1 - 1/k); 0 when all k clusters hurt j equally, 1 when
    one cluster does all the damage, NaN when no ablation hurts j."""
    d = _clipped(damage)
    k, total = d.shape[0], d.sum(0)
    share = d.max(0).values / total.where(total > 0, torch.ones_like(total))
    return ((share - 1 / k) / (1 - 1 / k)).where(total > 0, torch.full_like(total, math.nan))


def concentration_index(damage: torch.Tensor) -> float:
    """Mean of `category_concentration` weighted by each category's total damage, in [0, 1]; NaN without damage.

    Unlike `specialisation_index` it also rises when one cluster dominates every category, so read the two together.
    """
    d = _clipped(damage)
    total = d.sum(0)
    if not bool((total > 0).any()):
        return math.nan
    return float((category_concentration(d).nan_to_num(0.0) * total).sum() / total.sum())


@dataclass
class Ablation:
    """Damage of switching each cluster off, and how specialised it is.

    `loss_damage[c][j]` is the rise in mean cross-entropy on category j when cluster c is off, `accuracy_damage[c][j]`
    the fall in accuracy. `specialisation` and `concentration` are the indices of the loss damage; the `random_*`
    lists hold the same indices for random equal-size splits of the same neurons.
    """

    loss_damage: list[list[float]]
    accuracy_damage: list[list[float]]
    specialisation: float
    concentration: float
    random_specialisation: list[float]
    random_concentration: list[float]

    @property
    def random_mean(self) -> float:
        return _mean(self.random_specialisation)


def _damage(
    model: nn.Module, task: Task, units: list[Units], k: int, reference: Evaluation, desc: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    names = [u.module for u in units]
    loss_rows, acc_rows = [], []
    for c in tqdm(range(k), desc=desc, disable=desc is None, unit="cluster", leave=False):
        with restored(model, names):
            zero_cluster(model, units, c)
            ablated = evaluate(model, task)
        loss_rows.append([a - b for a, b in zip(ablated.category_loss, reference.category_loss, strict=True)])
        acc_rows.append([b - a for a, b in zip(ablated.category_accuracy, reference.category_accuracy, strict=True)])
    return torch.tensor(loss_rows, dtype=torch.float64), torch.tensor(acc_rows, dtype=torch.float64)


def cluster_ablation(
    model: nn.Module,
    task: Task,
    targets: list[Target],
    partitions: dict[str, Partition],
    *,
    random_splits: int = 3,
    seed: int = 0,
    reference: Evaluation | None = None,
    progress: bool = False,
) -> Ablation:
    """Switch each cluster off in turn (see `ablation_units`) and measure the damage on every category."""
    units = ablation_units(model, targets, partitions)
    k = partitions[targets[0].name].n_clusters
    reference = reference if reference is not None else evaluate(model, task)
    loss_damage, acc_damage = _damage(model, task, units, k, reference, "ablating clusters" if progress else None)
    random = []
    for r in tqdm(range(random_splits), desc="random splits", disable=not progress, unit="split"):
        random.append(_damage(model, task, random_units(units, seed + r), k, reference, None)[0])
    return Ablation(
        loss_damage.tolist(),
        acc_damage.tolist(),
        specialisation_index(loss_damage),
        concentration_index(loss_damage),
        [specialisation_index(d) for d in random],
        [concentration_index(d) for d in random],
    )


def _margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    target = logits.gather(1, targets[:, None]).squeeze(1)
    others = logits.scatter(1, targets[:, None], -math.inf).logsumexp(1)
    return target - others


def attribution(
    model: nn.Module, task: Task, weights: list[torch.Tensor], category: int | None = None
) -> torch.Tensor:
    """|w * dm/dw| for every entry of `weights`, flattened in order: the first-order change of m when w is zeroed.

    m is the mean logit margin (target logit - logsumexp of the other logits) over the examples of `category` (all
    examples when None). Cross-entropy would be the obvious choice, but its gradient vanishes on examples a model
    gets right with confidence (a grokked model's loss is ~1e-6), which turns the ranking into rounding noise; the
    margin's gradient does not vanish.
    """
    device = _device(model)
    grads = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    flags = [w.requires_grad for w in weights]
    n = 0
    try:
        for w in weights:
            w.requires_grad_(True)
        for batch in task.batches:
            with torch.enable_grad():
                logits, targets = task.predict(model, _to(batch, device))
                if category is not None:
                    keep = task.category_of(targets) == category
                    logits, targets = logits[keep], targets[keep]
                if targets.numel() == 0:
                    continue
                margin = _margin(logits.float(), targets).sum()
                for g, dw in zip(grads, torch.autograd.grad(margin, weights, allow_unused=True), strict=True):
                    if dw is not None:
                        g += dw.float()
            n += targets.numel()
    finally:
        for w, flag in zip(weights, flags, strict=True):
            w.requires_grad_(flag)
    return torch.cat(
        [(w.detach().float() * g).abs().flatten() / max(n, 1) for w, g in zip(weights, grads, strict=True)]
    )


@dataclass
class Circuits:
    """Smallest fraction of target weights keeping `share` of performance: for the whole task (accuracy) and per
    measured category (`categories`, by informedness). NaN where the full model has no skill to keep."""

    share: float
    n_weights: int
    task_fraction: float
    categories: list[int]
    fractions: list[float]

    @property
    def mean_fraction(self) -> float:
        return _mean(self.fractions)


@torch.no_grad()
def _smallest_circuit(
    model: nn.Module, task: Task, weights: list[torch.Tensor], category: int | None, threshold: float, steps: int
) -> float:
    if not threshold > 0:
        return math.nan
    scores = attribution(model, task, weights, category)
    # Rank by attribution, ties (e.g. weights with no gradient) by magnitude, so exact zeros go first.
    magnitude = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights])
    by_magnitude = torch.argsort(magnitude, descending=True, stable=True)
    order = by_magnitude[torch.argsort(scores.cpu()[by_magnitude], descending=True, stable=True)]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    ranks = [
        r.view(w.shape).to(w.device) for r, w in zip(rank.split([w.numel() for w in weights]), weights, strict=True)
    ]
    originals = [w.detach().clone() for w in weights]

    def performance(fraction: float) -> float:
        n_keep = round(fraction * scores.numel())
        for w, original, r in zip(weights, originals, ranks, strict=True):
            torch.mul(original, r < n_keep, out=w)
        result = evaluate(model, task)
        return result.accuracy if category is None else result.informedness[category]

    lo, hi = 0.0, 1.0
    try:
        for _ in range(steps):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if performance(mid) >= threshold else (mid, hi)
    finally:
        for w, original in zip(weights, originals, strict=True):
            w.copy_(original)
    return hi


def circuit_sizes(
    model: nn.Module,
    task: Task,
    targets: list[Target],
    *,
    share: float = 0.9,
    max_categories: int | None = None,
    steps: int = 10,
    reference: Evaluation | None = None,
    progress: bool = False,
) -> Circuits:
    """Effective circuit size per category and for the whole task (see the module docstring).

    Weights are ranked once by `attribution` on the full model and pruned lowest first; `steps` bisection steps
    give the fraction to 2**-steps. Only categories the full model is informed about are measured, at most
    `max_categories` of them (evenly spaced; 0 measures the whole task only).
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}.")
    modules = _modules(model)
    weights = [stored_weight(modules[t.name]) for t in targets]
    reference = reference if reference is not None else evaluate(model, task)
    categories = [j for j, v in enumerate(reference.informedness) if v > 0]
    if max_categories is not None and len(categories) > max_categories:
        categories = [categories[round(i * len(categories) / max_categories)] for i in range(max_categories)]
    with restored(model, [t.name for t in targets]):
        task_fraction = _smallest_circuit(model, task, weights, None, share * reference.accuracy, steps)
        fractions = [
            _smallest_circuit(model, task, weights, j, share * reference.informedness[j], steps)
            for j in tqdm(categories, desc="circuit sizes", disable=not progress, unit="category")
        ]
    return Circuits(share, sum(w.numel() for w in weights), task_fraction, categories, fractions)


# ---- report ----------------------------------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _std(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    if len(finite) < 2:
        return 0.0
    m = sum(finite) / len(finite)
    return math.sqrt(sum((v - m) ** 2 for v in finite) / (len(finite) - 1))


def _finite(data: Any) -> Any:
    """NaN (nothing to measure) becomes null, so the JSON is valid for strict parsers."""
    if isinstance(data, float):
        return None if math.isnan(data) else data
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


@dataclass
class AnalysisReport:
    """Everything `analyze` measured; `to_markdown`, `to_dict` and `save` present it."""

    task: str
    category_names: list[str]
    n_clusters: int
    clusterability: float
    clusterability_baseline: float
    full: Evaluation
    cut: Evaluation
    ablation: Ablation
    circuits: Circuits
    partitions: dict[str, Partition] = field(repr=False, default_factory=dict)

    @property
    def cut_accuracy_drop(self) -> float:
        return self.full.accuracy - self.cut.accuracy

    @property
    def cut_loss_rise(self) -> float:
        return self.cut.loss - self.full.loss

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "partitions"}
        data["cut_accuracy_drop"] = self.cut_accuracy_drop
        data["cut_loss_rise"] = self.cut_loss_rise
        data["ablation"]["random_mean"] = self.ablation.random_mean
        data["circuits"]["mean_fraction"] = self.circuits.mean_fraction
        return _finite(data)

    def summary(self) -> str:
        return (
            f"accuracy {self.full.accuracy:.4f}, cut test {self.cut.accuracy:.4f} "
            f"(loss {self.full.loss:.4f} -> {self.cut.loss:.4f}); specialisation {_fmt(self.ablation.specialisation)} "
            f"(random splits {_fmt(self.ablation.random_mean)}); circuit size {_fmt(self.circuits.task_fraction)} of "
            f"target weights for the task, {_fmt(self.circuits.mean_fraction)} per category"
        )

    def to_markdown(self, title: str | None = None, figures: bool = True) -> str:
        names, ab, cc, k = self.category_names, self.ablation, self.circuits, self.n_clusters
        share = f"{cc.share:.0%}"
        lines = [
            f"# Cluster analysis{': ' + title if title else ''}",
            "",
            f"Task `{self.task}`: {self.full.n_examples} held-out predictions in {len(names)} categories; "
            f"k = {k} clusters over {len(self.partitions)} target matrices, mean clusterability "
            f"{self.clusterability:.4f} (unstructured weights: {self.clusterability_baseline:.4f}).",
            "",
            "## Cut test",
            "",
            "Every weight outside the diagonal blocks of the target matrices is zeroed; truly separate clusters "
            "lose little.",
            "",
            "| model | loss | accuracy |",
            "|---|---|---|",
            f"| full | {self.full.loss:.4f} | {self.full.accuracy:.4f} |",
            f"| off-block weights zeroed | {self.cut.loss:.4f} | {self.cut.accuracy:.4f} |",
            "",
            f"Accuracy drop **{self.cut_accuracy_drop:.4f}**, loss rise {self.cut_loss_rise:.4f}.",
            "",
            "## Cluster ablation and specialisation",
            "",
            f"Each cluster is switched off in turn; random splits are {len(ab.random_specialisation)} random "
            "partitions of the same neurons into groups of the same sizes.",
            "",
            "| index | clusters | random splits |",
            "|---|---|---|",
            f"| specialisation (0: all categories rely on the clusters alike, 1: one cluster each) | "
            f"**{_fmt(ab.specialisation)}** | {_fmt(ab.random_mean)} ± {_fmt(_std(ab.random_specialisation))} |",
            f"| concentration (0: damage spread evenly, 1: one cluster does it all) | {_fmt(ab.concentration)} | "
            f"{_fmt(_mean(ab.random_concentration))} ± {_fmt(_std(ab.random_concentration))} |",
            "",
        ]
        if len(names) <= TABLE_LIMIT:
            lines += [
                "Rise in cross-entropy per category when one cluster is switched off (accuracy drop in brackets):",
                "",
                "| cluster | " + " | ".join(names) + " |",
                "|---" * (len(names) + 1) + "|",
            ]
            for c in range(k):
                cells = [
                    f"{ld:+.3f} ({ad:+.2f})" for ld, ad in zip(ab.loss_damage[c], ab.accuracy_damage[c], strict=True)
                ]
                lines.append(f"| {c} | " + " | ".join(cells) + " |")
        else:
            lines += [
                "| cluster | mean loss rise | mean accuracy drop | most hurt category (loss rise) |",
                "|---|---|---|---|",
            ]
            for c in range(k):
                d = torch.tensor(ab.loss_damage[c]).nan_to_num(-math.inf)
                worst = int(d.argmax())
                lines.append(
                    f"| {c} | {_mean(ab.loss_damage[c]):+.4f} | {_mean(ab.accuracy_damage[c]):+.4f} | "
                    f"{names[worst]} ({ab.loss_damage[c][worst]:+.3f}) |"
                )
        if figures:
            lines += ["", "![damage per cluster and category](damage.png)"]
        lines += [
            "",
            "## Effective circuit size",
            "",
            f"Smallest fraction of the {cc.n_weights} target weights that keeps {share} of performance when the rest "
            "are zeroed, lowest attribution |w · dm/dw| first (m: logit margin): "
            f"**{_fmt(cc.task_fraction)}** for the whole task (accuracy), **{_fmt(cc.mean_fraction)}** on average "
            "over "
            f"{len(cc.categories)} categories (informedness). A perfectly block-diagonal model needs at most "
            f"{self.clusterability_baseline:.3f} of them.",
            "",
        ]
        if cc.categories and len(cc.categories) <= TABLE_LIMIT:
            lines += [
                "| category | " + " | ".join(names[j] for j in cc.categories) + " |",
                "|---" * (len(cc.categories) + 1) + "|",
                "| circuit fraction | " + " | ".join(_fmt(f) for f in cc.fractions) + " |",
                "",
            ]
        if figures:
            lines += [
                "![circuit size per category](circuits.png)",
                "",
                "## Weights",
                "",
                "![block-reordered |W|](blocks.png)",
                "",
            ]
        lines += [
            "## Definitions",
            "",
            "- Ablating a cluster of an MLP whose matrices share labels zeroes its hidden neurons (their up/gate rows "
            "and biases, their down columns); for a matrix clustered on its own it zeroes the cluster's output rows "
            "and biases. Output heads are never ablated.",
            "- Damage d(c, j) is the rise in mean cross-entropy on category j's held-out examples when cluster c is "
            "off, clipped at 0. Specialisation = I(cluster; category) / log min(k, categories) with P(c, j) "
            "proportional to d(c, j): 0 when every category's damage profile over the clusters is the same (even if "
            "one cluster matters most everywhere). Concentration = damage-weighted mean over categories of "
            "(largest cluster's share of the damage - 1/k) / (1 - 1/k).",
            "- Informedness of a category: accuracy on its examples minus the share of other examples predicted as "
            "one of its labels (0 for a constant answer).",
            "",
        ]
        return "\n".join(lines)

    def plot_damage(self) -> bytes:
        from matplotlib.figure import Figure

        damage = torch.tensor(self.ablation.loss_damage)
        names = self.category_names
        fig = Figure(figsize=(min(14.0, 2.0 + 0.45 * len(names)), 1.6 + 0.45 * self.n_clusters), layout="constrained")
        ax = fig.add_subplot()
        bound = float(damage.nan_to_num(0).abs().max()) or 1.0
        image = ax.imshow(
            damage.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest"
        )
        fig.colorbar(image, ax=ax, label="rise in cross-entropy")
        ax.set_yticks(range(self.n_clusters))
        ax.set_ylabel("cluster switched off")
        if len(names) <= 30:
            ax.set_xticks(
                range(len(names)), names, rotation=60 if max(map(len, names)) > 3 else 0, ha="right", fontsize=7
            )
        ax.set_xlabel("category")
        ax.set_title(
            f"specialisation {_fmt(self.ablation.specialisation)} (random splits {_fmt(self.ablation.random_mean)})",
            fontsize=9,
        )
        return _png(fig)

    def plot_circuits(self) -> bytes:
        from matplotlib.figure import Figure

        cc = self.circuits
        fig = Figure(figsize=(min(14.0, 2.5 + 0.35 * len(cc.categories)), 3.2), layout="constrained")
        ax = fig.add_subplot()
        ax.bar(range(len(cc.categories)), [0 if math.isnan(f) else f for f in cc.fractions], color="tab:blue")
        ax.axhline(cc.task_fraction, color="black", linestyle="--", linewidth=1, label="whole task")
        ax.axhline(self.clusterability_baseline, color="tab:red", linestyle=":", linewidth=1, label="block share")
        if len(cc.categories) <= 30:
            ax.set_xticks(
                range(len(cc.categories)), [self.category_names[j] for j in cc.categories], fontsize=7, rotation=60
            )
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"fraction of target weights\nkeeping {cc.share:.0%}")
        ax.set_xlabel("category")
        ax.legend(fontsize=7)
        return _png(fig)

    def save(self, output_dir: str | os.PathLike, model: nn.Module, title: str | None = None) -> list[str]:
        """Write report.md, analysis.json and the PNGs (damage, circuits, block heatmaps) into `output_dir`."""
        from .plot import plot_blocks

        out = Path(output_dir)
        figures = {"damage.png": self.plot_damage(), "circuits.png": self.plot_circuits()}
        for name, data in figures.items():
            atomic_write(out / name, data)
        plot_blocks(model, self.partitions, out / "blocks.png")
        atomic_write(out / "analysis.json", json.dumps(self.to_dict(), indent=2) + "\n")
        atomic_write(out / "report.md", self.to_markdown(title))
        return [str(out / n) for n in ("report.md", "analysis.json", *figures, "blocks.png")]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


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
    progress: bool = False,
) -> AnalysisReport:
    """Cut test, cluster ablation with specialisation index, and effective circuit sizes of `model` on `task`.

    Args:
        model: any model `ClusterableTrainer` accepts (a PEFT model is analysed through a merged copy).
        task (`Task`): held-out data, e.g. `tasks.classification_task(...)`, `tasks.causal_lm_task(...)`.
        clusters: the checkpoint folder or Hub repo the model was saved to (its saved clusters are used), or a
            `ClusterConfig` (clusters computed as it says); None computes the default spectral clusters.
        share (`float`, defaults to 0.9): performance a circuit must keep.
        random_splits (`int`, defaults to 3): random equal-size neuron splits the specialisation index is compared to.
        max_categories (`int`, *optional*): measure circuits for at most this many categories (0: whole task only).
        steps (`int`, defaults to 10): bisection steps per circuit.
    """
    if isinstance(random_splits, bool) or not isinstance(random_splits, int) or random_splits < 0:
        raise ValueError(f"random_splits must be an integer >= 0, got {random_splits!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}.")
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}.")
    config, targets, partitions = resolve_clusters(model, clusters)
    plain = editable(model)
    was_training = plain.training
    plain.eval()
    try:
        scores = score_matrices(plain, targets, partitions)
        full = evaluate(plain, task)
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
    finally:
        plain.train(was_training)
    return AnalysisReport(
        task.name,
        list(task.category_names),
        config.n_clusters,
        sum(s.score for s in scores) / len(scores),
        sum(s.baseline for s in scores) / len(scores),
        full,
        cut,
        ablation,
        circuits,
        partitions,
    )


# ---- command line ----------------------------------------------------------------------------------------------


def _check_output_dir(path: Path) -> None:
    """Fail before any work if the report folder cannot be created or written."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output-dir {path} is a file; give a folder.")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"--output-dir {path}: {parent} is not a writable folder.")


def _check_args(args: argparse.Namespace) -> None:
    if args.task not in TASKS:
        raise ValueError(f"unknown task {args.task!r}; choose one of {', '.join(TASKS)}.")
    if args.token_categories not in TOKEN_CATEGORIES:
        raise ValueError(
            f"--token-categories must be one of {', '.join(TOKEN_CATEGORIES)}, got {args.token_categories!r}."
        )
    if args.task == "causal-lm" and args.dataset is None:
        raise ValueError(
            "--task causal-lm needs --dataset (held-out text or token ids: a file or a save_to_disk folder)."
        )
    if args.task == "modular-addition" and args.dataset is not None:
        raise ValueError(
            "--task modular-addition builds its own data; use --data-seed and --split instead of --dataset."
        )
    for flag, value, low in (
        ("--random-splits", args.random_splits, 0),
        ("--bisection-steps", args.bisection_steps, 1),
        ("--max-length", args.max_length, 2),
    ):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}.")
    if args.circuit_categories is not None and args.circuit_categories < 0:
        raise ValueError(f"--circuit-categories must be >= 0, got {args.circuit_categories}.")
    if not 0.0 < args.share <= 1.0:
        raise ValueError(f"--share must be in (0, 1], got {args.share}.")


def _check_clusters(checkpoint: str) -> None:
    for name in (CONFIG_NAME, CLUSTERS_NAME):
        try:
            resolve_file(checkpoint, name)
        except FileNotFoundError as err:
            raise ValueError(
                f"{checkpoint} has no {name}: analyze needs a model saved with its clusters by ClusterableTrainer "
                "(trainer.save_model)."
            ) from err


def _load_task(args: argparse.Namespace) -> tuple[Task, Any]:
    """The task's data, validated, and the loader of the matching model class (called after validation)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageClassification

    from . import models  # noqa: F401  (registers ClusterNet with the Auto classes)
    from .tasks import causal_lm_task, classification_task, load_local_dataset, modular_addition_task

    if args.task == "digits":
        if args.dataset is not None:
            dataset = load_local_dataset(args.dataset, args.split)
        else:
            from .data import digits

            dataset = digits(seed=args.data_seed)[args.split or "test"]
        task = classification_task(dataset, name="digits" if args.dataset is None else "classification")
        return task, AutoModelForImageClassification
    if args.task == "modular-addition":
        vocab = getattr(AutoConfig.from_pretrained(args.checkpoint), "vocab_size", None)
        if not isinstance(vocab, int) or vocab < 3:
            raise ValueError(f"{args.checkpoint} is not a modular-addition model (vocab_size {vocab!r}).")
        return modular_addition_task(vocab - 1, split=args.split or "test", seed=args.data_seed), AutoModelForCausalLM
    tokenizer = None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    except (OSError, ValueError, TypeError, KeyError):
        tokenizer = None  # token ids in the dataset and frequency categories need none
    task = causal_lm_task(
        load_local_dataset(args.dataset, args.split),
        tokenizer=tokenizer,
        categories=args.token_categories,
        text_column=args.text_column,
        max_length=args.max_length,
        max_examples=args.max_examples,
    )
    return task, AutoModelForCausalLM


def analyze_command(args: argparse.Namespace) -> int:
    _check_args(args)
    local = Path(args.checkpoint).expanduser()
    if not local.is_dir() and (args.checkpoint.startswith((".", "/", "~")) or args.checkpoint.count("/") != 1):
        raise ValueError(f"{args.checkpoint}: no such checkpoint folder.")
    default_out = local / "analysis" if local.is_dir() else Path(args.checkpoint.replace("/", "--") + "-analysis")
    out = Path(args.output_dir) if args.output_dir else default_out
    _check_output_dir(out)
    _check_clusters(args.checkpoint)
    task, auto = _load_task(args)
    print(f"loading {args.checkpoint} ...", file=sys.stderr)
    model = auto.from_pretrained(args.checkpoint)
    report = analyze(
        model,
        task,
        args.checkpoint,
        share=args.share,
        random_splits=args.random_splits,
        max_categories=args.circuit_categories,
        steps=args.bisection_steps,
        seed=args.seed,
        progress=not args.quiet,
    )
    written = report.save(out, model, title=local.name if local.is_dir() else args.checkpoint)
    print(report.summary())
    print(f"wrote {written[0]} (+ {len(written) - 1} files)", file=sys.stderr)
    return 0


def add_analyze_parser(subparsers) -> None:
    """Register `hf-clusterable analyze` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "analyze",
        help="cut test, cluster ablation/specialisation and circuit sizes of a clustered checkpoint",
        description="Markdown report with PNG plots: are clusters separate, do they specialise, are circuits small?",
    )
    p.add_argument("checkpoint", help="folder written by ClusterableTrainer.save_model (or a Hub repo)")
    p.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}")
    p.add_argument("--output-dir", default=None, help="where report.md and the PNGs go (default: CHECKPOINT/analysis)")
    p.add_argument(
        "--dataset", default=None, help="held-out data: save_to_disk folder or .json/.jsonl/.csv/.parquet/.txt"
    )
    p.add_argument("--split", default=None, help="split of --dataset, or of the built-in data (default: test)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the built-in train/test split (as in training)")
    p.add_argument("--text-column", default="text", help="causal-lm: column with raw text")
    p.add_argument("--max-length", type=int, default=128, help="causal-lm: tokens per sequence")
    p.add_argument("--max-examples", type=int, default=None, help="causal-lm: sequences to use")
    p.add_argument("--token-categories", default="frequency", help="causal-lm: 'frequency' buckets or token 'type'")
    p.add_argument("--share", type=float, default=0.9, help="performance a circuit must keep (default 0.9)")
    p.add_argument("--random-splits", type=int, default=3, help="random neuron splits to compare with (default 3)")
    p.add_argument(
        "--circuit-categories",
        type=int,
        default=20,
        help="categories whose circuits are measured (default 20; 0: none)",
    )
    p.add_argument("--bisection-steps", type=int, default=10, help="circuit-size resolution 2^-N (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random splits")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=analyze_command)
