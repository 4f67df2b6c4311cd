"""`AnalysisReport`: what `analyze` measured, as a markdown report, JSON and PNG plots.

NaN means "nothing to measure" (no damage, no skill to keep); it is shown as n/a and written to the JSON as null.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core.partition import Partition
from ..modeling.plot import png_bytes
from ..templates import template_text
from ..utils.io import atomic_write, json_safe, json_text
from ..utils.stats import nanmean, nanstd
from .ablation import Ablation, Evaluation
from .circuits import Circuits
from .clusters import ClusterParts
from .tasks import Task, batch_to, model_device


TABLE_LIMIT = 20  # categories shown as table columns; more go to the plots and the JSON
REPORT_TEMPLATE = "analysis_report.md"
ANALYSIS_FOLDER = "analysis"  # where `hf-clusterable analyze` writes inside a checkpoint folder by default
# Every file `AnalysisReport.save` writes (clusters.png only when each cluster was measured on its own).
REPORT_FILES = ("report.md", "analysis.json", "damage.png", "circuits.png", "clusters.png", "blocks.png")


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


@torch.no_grad()
def majority_accuracy(model: nn.Module, task: Task) -> float:
    """The accuracy of always answering the most frequent target of `task` (what "chance" means for it: 1/classes
    for balanced classes, the majority share otherwise); the targets come from `task.predict`, as in evaluation."""
    counts = torch.zeros(0, dtype=torch.long)
    for batch in task.batches:
        _, targets = task.predict(model, batch_to(batch, model_device(model)))
        found = torch.bincount(targets.flatten().cpu())
        size = max(counts.numel(), found.numel())
        counts = F.pad(counts, (0, size - counts.numel())) + F.pad(found, (0, size - found.numel()))
    total = int(counts.sum())
    if total == 0:
        raise ValueError("the task has no examples to score.")
    return int(counts.max()) / total


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
    parts: ClusterParts | None = None  # each cluster on its own; None when not measured
    parts_skipped: str | None = None  # why not, when the clusters are not sub-MLPs
    chance_accuracy: float | None = None  # accuracy of always answering the most frequent target (`majority_accuracy`)

    @property
    def at_chance(self) -> bool:
        """True when the model does no better than always answering the most frequent held-out target: its accuracy
        is within two standard errors of that constant answer's (binomial, over the held-out predictions). Cluster
        damage, cut test and circuit sizes of such a model describe noise."""
        if self.chance_accuracy is None:
            return False
        p, n = self.chance_accuracy, max(self.full.n_examples, 1)
        return self.full.accuracy <= p + 2.0 * math.sqrt(p * (1.0 - p) / n)

    def chance_warning(self) -> str | None:
        """One line for the command line and the report when the model is at chance, else None."""
        if not self.at_chance:
            return None
        return (
            f"the model is at chance on this data (accuracy {self.full.accuracy:.4f}; always answering the most "
            f"frequent target scores {self.chance_accuracy:.4f}), so its cut test, specialisation and circuit sizes "
            "mean nothing; train it further or check the task and data."
        )

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
        data["at_chance"] = self.at_chance
        return json_safe(data)

    def summary(self) -> str:
        return (
            ("AT CHANCE (these numbers mean nothing): " if self.at_chance else "")
            + f"accuracy {self.full.accuracy:.4f}, cut test {self.cut.accuracy:.4f} "
            f"(loss {self.full.loss:.4f} -> {self.cut.loss:.4f}); specialisation {_fmt(self.ablation.specialisation)} "
            f"(random splits {_fmt(self.ablation.random_mean)}); circuit size {_fmt(self.circuits.task_fraction)} of "
            f"target weights for the task, {_fmt(self.circuits.mean_fraction)} per category"
            + (self.parts.summary() if self.parts is not None else "")
        )

    def to_markdown(self, title: str | None = None, figures: bool = True) -> str:
        """The report as markdown, rendered from `templates/analysis_report.md`; `figures` embeds the PNGs."""
        import jinja2

        damage = [torch.tensor(row).nan_to_num(-math.inf) for row in self.ablation.loss_damage]
        environment = jinja2.Environment(keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
        template = environment.from_string(template_text(REPORT_TEMPLATE))
        return template.render(
            r=self,
            ab=self.ablation,
            cc=self.circuits,
            k=self.n_clusters,
            names=self.category_names,
            n_matrices=len(self.partitions),
            title=title,
            figures=figures,
            table_limit=TABLE_LIMIT,
            worst=[int(d.argmax()) for d in damage],
            fmt=_fmt,
            nanmean=nanmean,
            nanstd=nanstd,
            zip=zip,
            chance_warning=self.chance_warning(),
            parts=self.parts.to_markdown(figures) if self.parts is not None else None,
        )

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
        return png_bytes(fig)

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
        return png_bytes(fig)

    def save(self, output_dir: str | os.PathLike, model: nn.Module, title: str | None = None) -> list[str]:
        """Write report.md, analysis.json and the PNGs (damage, circuits, clusters alone, block heatmaps) into
        `output_dir`."""
        from ..modeling.plot import plot_blocks

        out = Path(output_dir)
        figures = {"damage.png": self.plot_damage(), "circuits.png": self.plot_circuits()}
        if self.parts is not None:
            figures["clusters.png"] = self.parts.plot()
        for name, data in figures.items():
            atomic_write(out / name, data)
        plot_blocks(model, self.partitions, out / "blocks.png")
        atomic_write(out / "analysis.json", json_text(self.to_dict()))
        atomic_write(out / "report.md", self.to_markdown(title))
        return [str(out / n) for n in ("report.md", "analysis.json", *figures, "blocks.png")]
