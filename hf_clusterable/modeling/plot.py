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


HEATMAP_COLORMAP = "magma"
PANEL_PIXELS = 160  # pooled pixels a side per panel: blocks stay visible, a 24-panel PNG stays well under 1 MB


def render_blocks(
    weights: Mapping[str, torch.Tensor],
    partitions: Mapping[str, Partition],
    *,
    resolution: int = PANEL_PIXELS,
    reference: Mapping[str, torch.Tensor] | None = None,
    labels: tuple[str, str] = ("", "reference"),
) -> bytes:
    """PNG bytes of `blocks_figure` (same arguments), stored with the colour map's palette."""
    figure = blocks_figure(weights, partitions, resolution=resolution, reference=reference, labels=labels)
    return png_bytes(figure, colormap=HEATMAP_COLORMAP)


def blocks_figure(
    weights: Mapping[str, torch.Tensor],
    partitions: Mapping[str, Partition],
    *,
    resolution: int = PANEL_PIXELS,
    reference: Mapping[str, torch.Tensor] | None = None,
    labels: tuple[str, str] = ("", "reference"),
):
    """A grid of block-reordered heatmaps, one panel per entry of `weights` (read as `(out, in)`), each titled with
    its matrix, C and B, under one colour bar and a heading that says how many of the `partitions`' matrices are
    shown.

    With `reference` (weights of the same matrices from another model, e.g. one trained without the loss), each
    panel is followed by the reference's, both drawn with the same clusters and titled with `labels`.
    """
    from matplotlib.figure import Figure  # optional dependency: only needed for plots

    panels = []
    for name, weight in weights.items():
        panels.append((name, labels[0], weight))
        if reference is not None:
            panels.append((name, labels[1], reference[name]))
    ncols = min(len(panels), 6)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(0.6 + 2.3 * ncols, 0.6 + 2.2 * nrows), layout="constrained")
    image = None
    for i, (name, label, weight) in enumerate(panels):
        image = draw_panel(fig.add_subplot(nrows, ncols, i + 1), name, label, weight, partitions[name], resolution)
    k = next(iter(partitions.values())).n_clusters if partitions else 0
    shown = len(weights)
    which = f"all {shown}" if shown == len(partitions) else f"{shown} of {len(partitions)} (evenly spaced)"
    fig.suptitle(f"|W| with rows and columns sorted by cluster, k = {k}, {which} target matrices", fontsize=8)
    if image is not None:
        bar = fig.colorbar(image, ax=fig.axes, shrink=0.6, aspect=30, pad=0.01)
        bar.set_label("|W| / 99th percentile of its matrix", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return fig


def draw_panel(ax, name: str, label: str, weight: torch.Tensor, partition: Partition, resolution: int):
    """One block-reordered heatmap on `ax`, scaled to the matrix's 99th percentile, with cyan lines at the cluster
    edges; returns the image, for a colour bar shared by all panels (which share that scale)."""
    pooled = reordered(weight, partition, resolution)
    pooled = pooled / (float(torch.quantile(pooled.flatten(), 0.99)) or 1.0)
    image = ax.imshow(
        pooled.numpy(), cmap=HEATMAP_COLORMAP, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest"
    )
    for sizes, draw, length, pixels in (
        (partition.row_sizes(), ax.axhline, partition.shape[0], pooled.shape[0]),
        (partition.col_sizes(), ax.axvline, partition.shape[1], pooled.shape[1]),
    ):
        for edge in torch.cumsum(sizes, 0)[:-1].tolist():
            draw(edge * pixels / length - 0.5, color="cyan", linewidth=0.5)
    with torch.no_grad():
        score = float(clusterability(weight, partition))
    heading = f"{name} ({label})" if label else name
    ax.set_title(f"{heading}\nC={score:.3f}  B={baseline(partition):.3f}", fontsize=6)
    ax.set_xticks([])
    ax.set_yticks([])
    return image


def png_bytes(fig, colormap: str | None = None) -> bytes:
    """A matplotlib figure as PNG bytes, at one resolution for every figure we write.

    With `colormap` (a heatmap drawn in that one colour map) the PNG is stored with a 256-colour palette: 224 levels
    of the colour map, greys for text and cyan for the cluster edges. Nothing visible is lost and a page of noisy
    weight heatmaps shrinks about sixfold (the Gemma 3 270M grid: 5.2 MB as RGBA).
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    if colormap is None:
        return buffer.getvalue()
    from matplotlib import colormaps
    from PIL import Image  # a dependency of matplotlib

    levels = colormaps[colormap](torch.linspace(0, 1, 224).numpy())[:, :3]
    greys = [(g, g, g) for g in torch.linspace(0, 1, 24).tolist()]
    cyans = [(0.0, g, g) for g in torch.linspace(0.3, 1, 8).tolist()]
    colours = [round(255 * c) for rgb in [*map(tuple, levels.tolist()), *greys, *cyans] for c in rgb]
    palette = Image.new("P", (1, 1))
    palette.putpalette(colours)
    buffer.seek(0)
    image = Image.open(buffer).convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE)
    out = io.BytesIO()
    image.save(out, format="png", optimize=True)
    return out.getvalue()


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
    resolution: int = PANEL_PIXELS,
) -> str:
    """Write a PNG grid of block-reordered heatmaps for up to `max_panels` target matrices (evenly spaced).

    Sharded weights are gathered, so under ZeRO-3 or FSDP2 every process must call it.
    """
    weights = panel_weights(model, partitions, max_panels)
    atomic_write(path, render_blocks(weights, partitions, resolution=resolution))
    return str(path)
