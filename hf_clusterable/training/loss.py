"""The clusterability loss: `loss_weight * (1 - mean C)` over the target matrices, cheap enough to run every step.

Partitions are fixed between re-clusterings, so their device-side codes (labels and one-hots) are built once here.
A step then reads each weight a few times: square, one small matmul, a gather; no boolean block mask, index list or
loop over clusters is built per step.

During training the masses are computed inside each target module's forward (`capture`). Their backward then
runs when the model's backward reaches that layer, so only one extra weight-sized gradient is alive at a time
(computed after the forward, all of them would be produced first and held until the backward arrived), and FSDP2
weights are seen unsharded. Sharded weights outside forward (FSDP2, ZeRO-3) are scored where they live, see
`distributed.py`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..core.partition import Partition
from ..core.score import BlockCodes, baseline, mass_ratio
from ..modeling.distributed import is_zero3, module_block_mass
from ..modeling.targets import Target, modules_by_name, stored_weight


class ClusterabilityLoss:
    """Differentiable mean clusterability of `targets` under `partitions`, computed in fp32."""

    def __init__(self, model: nn.Module, targets: list[Target], partitions: dict[str, Partition]):
        # Module objects survive DDP/compile/FSDP2 wrapping, so they are looked up once, not every step.
        modules = modules_by_name(model)
        self.targets = targets
        self.partitions = partitions
        self._terms = []
        for t in targets:
            module = modules[t.name]
            device = stored_weight(module).device
            self._terms.append((module, BlockCodes.of(partitions[t.name], device)))
        self.baseline = sum(baseline(partitions[t.name]) for t in targets) / len(targets)
        self._captured: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def _mass(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._captured is not None and i in self._captured:
            return self._captured.pop(i)
        module, codes = self._terms[i]
        return module_block_mass(module, codes)

    def scores(self) -> torch.Tensor:
        """Clusterability of every target matrix, shape `(len(targets),)` (masses captured in forward if any)."""
        out = [mass_ratio(*self._mass(i)) for i in range(len(self._terms))]
        self._captured = None
        return torch.stack(out)

    def __call__(self) -> torch.Tensor:
        """Mean clusterability (a 0-dim tensor); the regulariser is `loss_weight * (1 - this)`."""
        return self.scores().mean()

    @contextmanager
    def capture(self):
        """Compute each target's masses inside its module's forward while the model runs in this context.

        Call the loss after the forward; targets the forward did not run (and ZeRO-3 modules, which need their own
        gathering forward) are computed then. Under gradient checkpointing a target's forward runs twice, once in
        the forward pass and again during the backward; the hooks are gone by the recomputation, so:
        - non-reentrant checkpointing records how many tensors each block saves and requires the same count when
          it recomputes the block. The masses' own saved tensors (the weight and the labels, which the
          recomputation would not change) are therefore kept out of its bookkeeping, and their backward still runs
          when the model's backward reaches the layer.
        - reentrant checkpointing runs the first forward without gradients, so masses taken there would carry
          none (the regulariser would silently stop training the weights). A forward without gradients is skipped
          and its masses are computed after the forward instead.
        """
        self._captured = {}
        handles = []
        for i, (module, codes) in enumerate(self._terms):
            if is_zero3(module):
                continue

            def hook(module, args, output, i=i, codes=codes):
                # A module run twice in one forward is scored once; one run without gradients is not scored here.
                if i in self._captured or not torch.is_grad_enabled():
                    return
                with torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
                    self._captured[i] = module_block_mass(module, codes)

            handles.append(module.register_forward_hook(hook))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    """Saved-tensor hook that keeps the tensor as autograd would without any hook (no checkpoint bookkeeping)."""
    return tensor
