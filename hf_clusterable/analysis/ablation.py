"""Cut test and cluster ablation: are a clustered model's clusters separate, and do they specialise?

* **Cut test**: zero every weight outside the k diagonal blocks of every target matrix. Separate clusters lose little.
* **Cluster ablation**: switch one cluster off at a time and record the damage (rise in cross-entropy) on every
  category (class, answer value, token bucket). The *specialisation index* is the mutual information between which
  cluster is off and which category is hurt, scaled to [0, 1]; it is compared with the same index for random splits
  of the same neurons into groups of the same sizes, since noisy damage alone looks somewhat specialised.

Both score a model with `evaluate_task` on held-out data (see `tasks.py`) while `restored` guards its weights: every
edit is made in place and undone on exit, so the model ends as it started. `circuits.py` reuses both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from tqdm.auto import tqdm

from ..core.partition import Partition
from ..modeling.extract import merged_copy
from ..modeling.targets import Target, base_model, get_weight, modules_by_name, stored_weight
from ..utils.stats import nanmean
from .tasks import Task, batch_to, model_device


# Heads whose rows are the model's outputs: ablating their rows would delete classes outright.
HEAD_NAMES = ("classifier", "score", "lm_head", "head")


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


@torch.no_grad()
def evaluate_task(model: nn.Module, task: Task) -> Evaluation:
    """Mean cross-entropy and accuracy of `model` on `task`, overall and per category."""
    device = model_device(model)
    losses, correct, target_cat, pred_cat = [], [], [], []
    for batch in task.batches:
        logits, targets = task.predict(model, batch_to(batch, device))
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


def editable(model: nn.Module) -> nn.Module:
    """The model whose weights analysis may edit: a merged copy of a PEFT model, else the model itself.

    A LoRA layer's effective weight W + BA is computed on the fly, so zeroing parts of it needs merged weights.
    """
    model = getattr(model, "_orig_mod", model)
    return merged_copy(model) if isinstance(model, PeftModel) else model


@contextmanager
def restored(model: nn.Module, names: list[str]) -> Iterator[None]:
    """Undo every in-place change to these modules' weights and biases on exit, whatever happened inside."""
    modules = modules_by_name(model)
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
    modules = modules_by_name(model)
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
    return name.rsplit(".", 1)[-1] in HEAD_NAMES or (heads is not None and modules_by_name(model).get(name) is heads)


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
    modules = modules_by_name(model)
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


# ---- cut test and cluster ablation -----------------------------------------------------------------------------


def cut_test(model: nn.Module, task: Task, targets: list[Target], partitions: dict[str, Partition]) -> Evaluation:
    """Performance with every off-block weight of the targets zeroed; the model is restored afterwards."""
    with restored(model, [t.name for t in targets]):
        cut_off_block(model, targets, partitions)
        return evaluate_task(model, task)


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

    loss_damage: list[list[float]]  # (clusters, categories)
    accuracy_damage: list[list[float]]  # (clusters, categories)
    specialisation: float = math.nan
    concentration: float = math.nan
    random_specialisation: list[float] = field(default_factory=list)
    random_concentration: list[float] = field(default_factory=list)

    @property
    def random_mean(self) -> float:
        """The specialisation index a random split of the same neurons gets, on average: the bar to clear."""
        return nanmean(self.random_specialisation)


def _damage(
    model: nn.Module, task: Task, units: list[Units], k: int, reference: Evaluation, desc: str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    names = [u.module for u in units]
    loss_rows, acc_rows = [], []
    for c in tqdm(range(k), desc=desc, disable=desc is None, unit="cluster", leave=False):
        with restored(model, names):
            zero_cluster(model, units, c)
            ablated = evaluate_task(model, task)
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
    reference = reference if reference is not None else evaluate_task(model, task)
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
