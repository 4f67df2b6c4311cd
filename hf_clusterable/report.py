"""`AnalysisReport`: what `analyze` measured, as a markdown report, JSON and PNG plots.

NaN means "nothing to measure" (no damage, no skill to keep); it is shown as n/a and written to the JSON as null.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .ablation import Ablation, Evaluation, _mean
from .circuits import Circuits
from .config import atomic_write
from .partition import Partition
from .plot import png_bytes


TABLE_LIMIT = 20  # categories shown as table columns; more go to the plots and the JSON


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
