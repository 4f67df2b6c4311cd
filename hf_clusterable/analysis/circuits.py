"""Effective circuit size: how few of a model's target weights keep its performance, per category.

Per category, the smallest fraction of target weights that keeps `share` of its performance when the others are
zeroed, lowest attribution |w * dm/dw| first (m: the logit margin; bisection on the fraction). Clustered models
should need fewer weights than unclustered ones. Weights are pruned in place and restored before returning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..modeling.targets import Target, modules_by_name, stored_weight
from ..utils.stats import nanmean
from .ablation import Evaluation, evaluate_task, restored
from .tasks import Task, batch_to, model_device


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
    device = model_device(model)
    grads = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    flags = [w.requires_grad for w in weights]
    n = 0
    try:
        for w in weights:
            w.requires_grad_(True)
        for batch in task.batches:
            with torch.enable_grad():
                logits, targets = task.predict(model, batch_to(batch, device))
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
        """Average circuit size over the measured categories (those with no skill to keep are left out)."""
        return nanmean(self.fractions)


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
        result = evaluate_task(model, task)
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
    modules = modules_by_name(model)
    weights = [stored_weight(modules[t.name]) for t in targets]
    reference = reference if reference is not None else evaluate_task(model, task)
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
