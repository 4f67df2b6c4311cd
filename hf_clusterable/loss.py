"""The clusterability loss: `loss_weight * (1 - mean C)` over the target matrices, cheap enough to run every step.

Partitions are fixed between re-clusterings, so their device-side pieces (row labels, one-hot column labels) are
built once here. A step then reads each weight once: square, one small matmul against the one-hot, a gather. No
boolean block mask, index list or loop over clusters is built per step. Sharded weights (FSDP2, ZeRO-3) are scored
where they live, see `distributed.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from .distributed import module_block_mass
from .partition import Partition
from .score import baseline, col_onehot
from .targets import Target, base_model, stored_weight


class ClusterabilityLoss:
    """Differentiable mean clusterability of `targets` under `partitions`, computed in fp32."""

    def __init__(self, model: nn.Module, targets: list[Target], partitions: dict[str, Partition]):
        # Module objects survive DDP/compile/FSDP2 wrapping, so they are looked up once, not every step.
        modules = dict(base_model(model).named_modules())
        self.targets = targets
        self.partitions = partitions
        self._terms = []
        for t in targets:
            module = modules[t.name]
            device = stored_weight(module).device
            self._terms.append(
                (module, partitions[t.name].row_labels.to(device), col_onehot(partitions[t.name], device))
            )
        self.baseline = sum(baseline(partitions[t.name]) for t in targets) / len(targets)

    def scores(self) -> torch.Tensor:
        """Clusterability of every target matrix, shape `(len(targets),)`."""
        out = []
        for module, rows, onehot in self._terms:
            inside, total = module_block_mass(module, rows, onehot)
            out.append(inside / total.clamp_min(torch.finfo(torch.float32).tiny))
        return torch.stack(out)

    def __call__(self) -> torch.Tensor:
        """Mean clusterability (a 0-dim tensor); the regulariser is `loss_weight * (1 - this)`."""
        return self.scores().mean()
