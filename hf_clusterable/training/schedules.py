"""The clusterability loss weight over training: constant, or ramped from 0 after the warm-up.

A pretrained model hit by a large lambda at once loses much of what it knew before the task loss can answer: the
first steps follow the regulariser alone. A ramp lets the task loss keep up. Pure functions of the step, so the value
is the same after a resume and can be tested exactly.
"""

from __future__ import annotations

import math

from ..config import ClusterConfig


def scheduled_weight(weight: float, step: int, start: int, warmup_steps: int, schedule: str = "constant") -> float:
    """Lambda at optimizer step `step` for a loss that applies from step `start`.

    `"linear"` rises as `weight * (step - start) / warmup_steps`, `"cosine"` as `weight * (1 - cos(pi * t)) / 2` with
    `t = (step - start) / warmup_steps`; both reach `weight` at `start + warmup_steps` and stay there. `"constant"` (or
    `warmup_steps == 0`) is `weight` from `start` on. Before `start` the value is 0.
    """
    if step < start:
        return 0.0
    if schedule == "constant" or warmup_steps <= 0:
        return float(weight)
    progress = min((step - start) / warmup_steps, 1.0)
    if schedule == "linear":
        return float(weight) * progress
    if schedule == "cosine":
        return float(weight) * 0.5 * (1.0 - math.cos(math.pi * progress))
    raise ValueError(f"unknown loss_weight_schedule {schedule!r}; use constant, linear or cosine.")


def loss_weight_at(config: ClusterConfig, step: int) -> float:
    """Lambda of `config` at optimizer step `step` (the loss applies from `cluster_step`)."""
    start = config.cluster_step if config.init == "spectral" else 0
    return scheduled_weight(
        config.loss_weight, step, start, config.loss_weight_warmup_steps, config.loss_weight_schedule
    )
