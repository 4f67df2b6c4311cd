"""Final projection: set every off-block weight of the target matrices to zero, so the clusters are separate.

A high clusterability score still leaves some weight between clusters, and a model can lean on that small remainder.
Projecting removes it (clusterability becomes exactly 1: with coupled clusters every MLP is then k separate
sub-MLPs), and training on with the off-block weights held at zero heals the damage under the fixed clusters.
The same operation, undone afterwards, is the *cut test*: how much held-out loss the off-block weights carry.

Works on plain and GPT-2 `Conv1D` layers (through the same `(out, in)` view the loss uses). Not on LoRA layers with
active adapters (merge them first: the effective weight W + BA is not a parameter that can be set) nor on weights
sharded by FSDP2 or ZeRO-3 (gather the model first); both are refused with one line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import TrainerCallback

from ..core.partition import Partition
from ..modeling.distributed import is_sharded
from ..modeling.targets import Target, get_weight, modules_by_name


def in_block_mask(partition: Partition, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean `(out, in)` mask, True where row and column share a cluster."""
    rows, cols = partition.row_labels.to(device), partition.col_labels.to(device)
    return rows[:, None] == cols[None, :]


def _matrix(module: nn.Module, name: str) -> torch.Tensor:
    """The `(out, in)` view of a target's stored weight that in-place edits reach (`.T` of a Conv1D's storage)."""
    if is_sharded(module):
        raise ValueError(
            f"{name} is sharded (FSDP2 / ZeRO-3); projection needs whole weights: gather the model first."
        )
    if isinstance(module, LoraLayer) and not module.merged and not module.disable_adapters and module.active_adapters:
        raise ValueError(f"{name} has active LoRA adapters; merge them (merge_and_unload) before projecting.")
    return get_weight(module)


class Projector:
    """Zeroes the off-block weights of `targets` under `partitions`; masks are built once, on the weights' device."""

    def __init__(self, model: nn.Module, targets: list[Target], partitions: dict[str, Partition]):
        modules = modules_by_name(model)
        self._items = []
        for t in targets:
            matrix = _matrix(modules[t.name], t.name)
            self._items.append((t.name, modules[t.name], in_block_mask(partitions[t.name], matrix.device)))

    @torch.no_grad()
    def project(self) -> None:
        """Zero every off-block weight in place (the parameters keep their identity, so optimizers are unaffected)."""
        for name, module, mask in self._items:
            _matrix(module, name).mul_(mask)

    @torch.no_grad()
    def saved(self) -> dict[str, torch.Tensor]:
        """Copies of the target weights, in their stored layout, for `restore`."""
        return {name: _matrix(module, name).detach().clone() for name, module, _ in self._items}

    @torch.no_grad()
    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        for name, module, _ in self._items:
            _matrix(module, name).copy_(saved[name])


def check_projectable(model: nn.Module, targets: list[Target]) -> None:
    """Raise the one-line reason if any target cannot be projected (sharded, or LoRA with active adapters)."""
    modules = modules_by_name(model)
    for t in targets:
        _matrix(modules[t.name], t.name)


def project_off_block(model: nn.Module, targets: list[Target], partitions: dict[str, Partition]) -> None:
    """Zero the off-block weights of every target matrix of `model` in place (clusterability exactly 1)."""
    Projector(model, targets, partitions).project()


@contextmanager
def cut_off_block(model: nn.Module, targets: list[Target], partitions: dict[str, Partition]) -> Iterator[nn.Module]:
    """Inside the context the off-block weights are zero; on exit the original weights are back, bit for bit.

    The cut test: evaluate inside to see how much the model relies on the weights between its clusters.
    """
    projector = Projector(model, targets, partitions)
    saved = projector.saved()
    projector.project()
    try:
        yield model
    finally:
        projector.restore(saved)


class ProjectionCallback(TrainerCallback):
    """Projects at the end of optimizer step `step` and after every later step, so off-block weights stay zero.

    At step `step` itself the optimizer's state is also cleared. Before the projection the regulariser's gradients
    dominate, and an Adam-type optimizer keeps their scale in its second moments, which decay over about a thousand
    steps: kept, they would shrink every step of the heal to a fraction of the learning rate. Cleared, the heal starts
    fresh at the full rate (the state is rebuilt at the next step; a resumed run past `step` keeps its saved state).

    `projector` returns the `Projector` for the partitions in use (None while there are none yet). `check` runs when
    training begins (after the host has sharded or wrapped the model) and raises if projection could never run, so
    a run that would fail at `step` fails before its first step instead.
    """

    def __init__(self, step: int, projector: Callable[[], Projector | None], check: Callable[[], None] | None = None):
        self.step = step
        self.projector = projector
        self.check = check

    def on_train_begin(self, args, state, control, **kwargs):
        if self.check is not None and state.global_step < self.step:
            self.check()
        return control

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step >= self.step:
            projector = self.projector()
            if projector is None:
                raise ValueError(f"project_step {self.step}: no clusters exist yet to project onto.")
            projector.project()
            if state.global_step == self.step and optimizer is not None:
                optimizer.state.clear()
        return control
