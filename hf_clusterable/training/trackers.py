"""Per-matrix clusterability and the block heatmap, sent to the experiment trackers a run already reports to.

The logged metrics carry only the mean score; a tracker is where one looks at a run as it goes, so each matrix's
score (`clusterability/<module>`) and the heatmap image (`clusterability/blocks`) go there too, at every evaluation
and checkpoint. They are written through the trackers' own handles (the `TensorBoardCallback`'s writer, the active
W&B run) so they land in the same event file or run as the Trainer's logs; a run that reports to neither is
untouched. The scores belong to the weights, not to a data split, so they carry no `train/` or `eval/` prefix.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback, WandbCallback

from ..core.partition import Partition
from ..modeling.measure import ClusterReport
from ..modeling.plot import render_blocks


logger = logging.getLogger(__name__)

# The `report_to` names whose runs get per-matrix scores and the heatmap (the handles `active_trackers` finds).
TRACKERS = ("tensorboard", "wandb")
PREFIX = "clusterability"
HEATMAP_TAG = f"{PREFIX}/blocks"


def report_scalars(report: ClusterReport) -> dict[str, float]:
    """`clusterability/<module>` for every target matrix, plus the mean and its normalised value."""
    scalars = {f"{PREFIX}/{row.name}": float(row.score) for row in report.rows}
    scalars[f"{PREFIX}/mean"] = float(report.mean)
    scalars[f"{PREFIX}/normalised"] = float(report.normalised)
    return scalars


def _heatmap(weights: Mapping[str, torch.Tensor], partitions: Mapping[str, Partition]):
    """The heatmap as a PIL image, or None without matplotlib (the optional `plots` extra)."""
    try:
        png = render_blocks(weights, partitions)
    except ImportError:
        logger.warning("matplotlib is not installed: no block heatmap for the trackers (pip install matplotlib).")
        return None
    from PIL import Image  # a dependency of matplotlib

    return Image.open(io.BytesIO(png)).convert("RGB")


def active_trackers(callbacks: Iterable[TrainerCallback]) -> dict[str, Any]:
    """The tracker handles ready to write: `{"tensorboard": SummaryWriter, "wandb": wandb module}`."""
    found: dict[str, Any] = {}
    for callback in callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
            found["tensorboard"] = callback.tb_writer
        elif isinstance(callback, WandbCallback):
            import wandb

            if wandb.run is not None:
                found["wandb"] = wandb
    return found


def send_report(
    trackers: Mapping[str, Any],
    report: ClusterReport,
    weights: Mapping[str, torch.Tensor] | None,
    step: int,
) -> None:
    """Write the per-matrix scores and, when `weights` (the panels to draw) are given, the heatmap."""
    if not trackers:
        return
    scalars = report_scalars(report)
    image = _heatmap(weights, report.partitions) if weights else None
    writer = trackers.get("tensorboard")
    if writer is not None:
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, step)
        if image is not None:
            import numpy as np

            writer.add_image(HEATMAP_TAG, np.asarray(image), step, dataformats="HWC")
        writer.flush()
    wandb = trackers.get("wandb")
    if wandb is not None:
        payload: dict[str, Any] = dict(scalars)
        if image is not None:
            payload[HEATMAP_TAG] = wandb.Image(image)
        wandb.log({**payload, "train/global_step": step})
