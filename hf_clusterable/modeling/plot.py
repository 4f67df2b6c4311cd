"""Block-reordered |W| heatmaps: sort rows and columns by cluster so a modular matrix shows k bright diagonal blocks.

Large matrices are average-pooled to a few hundred pixels a side; the pooled image keeps the block structure while
the PNG stays small enough for a model card.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..core.partition import Partition
from ..core.score import baseline, clusterability
from ..utils.io import atomic_write
from .distributed import full_weight
from .targets import modules_by_name


def reordered(weight: torch.Tensor, partition: Partition, resolution: int = 256) -> torch.Tensor:
    """|W| with rows and columns grouped by cluster, pooled to at most `resolution` pixels a side."""
    rows, cols = partition.order()
    image = weight.detach().float().abs().cpu()[rows][:, cols]
    size = (min(resolution, image.shape[0]), min(resolution, image.shape[1]))
    return F.adaptive_avg_pool2d(image[None, None], size)[0, 0]


def panel_names(partitions: Mapping[str, Partition], max_panels: int = 24) -> list[str]:
    """Which matrices get a panel: all of them, or `max_panels` evenly spaced through the model."""
    names = list(partitions)
    if len(names) <= max_panels:
        return names
    step = len(names) / max_panels
    return [names[int(i * step)] for i in range(max_panels)]


def render_blocks(
    weights: Mapping[str, torch.Tensor], partitions: Mapping[str, Partition], *, resolution: int = 256
) -> bytes:
    """PNG bytes of a grid of block-reordered heatmaps, one panel per entry of `weights` (read as `(out, in)`)."""
    from matplotlib.figure import Figure  # optional dependency: only needed for plots

    ncols = min(len(weights), 6)
    nrows = math.ceil(len(weights) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 3.0 * nrows), layout="constrained")
    for i, (name, weight) in enumerate(weights.items()):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        p = partitions[name]
        image = reordered(weight, p, resolution)
        vmax = float(torch.quantile(image.flatten(), 0.99)) or 1.0
        ax.imshow(image.numpy(), cmap="magma", vmin=0.0, vmax=vmax, aspect="auto", interpolation="nearest")
        for sizes, draw, length, pixels in (
            (p.row_sizes(), ax.axhline, p.shape[0], image.shape[0]),
            (p.col_sizes(), ax.axvline, p.shape[1], image.shape[1]),
        ):
            for edge in torch.cumsum(sizes, 0)[:-1].tolist():
                draw(edge * pixels / length - 0.5, color="cyan", linewidth=0.6)
        with torch.no_grad():
            score = float(clusterability(weight, p))
        ax.set_title(f"{name}\nC={score:.3f}  B={baseline(p):.3f}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    return png_bytes(fig)


def png_bytes(fig) -> bytes:
    """A matplotlib figure as PNG bytes, at one resolution for every figure we write."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def panel_weights(
    model: nn.Module, partitions: Mapping[str, Partition], max_panels: int = 24
) -> dict[str, torch.Tensor]:
    """The whole `(out, in)` weights of the matrices that get a panel (gathered from shards: a collective under
    ZeRO-3 and FSDP2, so every process must call it)."""
    modules = modules_by_name(model)
    return {name: full_weight(modules[name]) for name in panel_names(partitions, max_panels)}


def plot_blocks(
    model: nn.Module,
    partitions: dict[str, Partition],
    path: str | os.PathLike,
    *,
    max_panels: int = 24,
    resolution: int = 256,
) -> str:
    """Write a PNG grid of block-reordered heatmaps for up to `max_panels` target matrices (evenly spaced).

    Sharded weights are gathered, so under ZeRO-3 or FSDP2 every process must call it.
    """
    weights = panel_weights(model, partitions, max_panels)
    atomic_write(path, render_blocks(weights, partitions, resolution=resolution))
    return str(path)
