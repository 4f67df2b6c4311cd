"""Scoring weights that are split across processes: FSDP2 DTensor shards and DeepSpeed ZeRO-3 partitions.

Clusterability is a ratio of two sums, so a sharded matrix needs no gather to be scored: every process sums over
its own rows (or columns) with the matching slice of labels, and the sums are all-reduced. The reduced value is the
global one on every process, while the gradient each process keeps is that of its own shard, which is exactly the
derivative of the global loss with respect to the weights it owns.

ZeRO-3 keeps only an empty placeholder outside the module's forward. There the masses are computed by running
the module with its forward temporarily replaced (as TRL does for fused losses), so DeepSpeed's hooks gather the
weight before the computation and again before its backward.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard

from ..core.score import BlockCodes, block_mass
from .targets import get_weight, stored_weight


def is_zero3(module: nn.Module) -> bool:
    """True when the module's weight is a DeepSpeed ZeRO-3 partitioned parameter."""
    return hasattr(stored_weight(module), "ds_id")


def is_sharded(module: nn.Module) -> bool:
    """True when no single process holds the module's whole weight (ZeRO-3 partitions, FSDP2 DTensor shards)."""
    return is_zero3(module) or isinstance(stored_weight(module), DTensor)


def _global_sum(x: torch.Tensor, group) -> torch.Tensor:
    """All-reduced value of `x`, carrying the gradient of this process's own term only."""
    total = x.detach().clone()
    dist.all_reduce(total, group=group)
    return x + (total - x.detach())


def sharded_block_mass(weight: DTensor, codes: BlockCodes) -> tuple[torch.Tensor, torch.Tensor]:
    """`block_mass` of a DTensor on a 1-D mesh (FSDP2: `Shard(0)` of the stored weight; `Shard(1)` once transposed)."""
    if weight.device_mesh.ndim != 1 or len(weight.placements) != 1:
        raise ValueError(
            f"clusterability supports weights sharded on a 1-D device mesh, got placements {weight.placements}; "
            "use plain FSDP2 (fully_shard) or DDP."
        )
    placement, local = weight.placements[0], weight.to_local()
    if isinstance(placement, Replicate):
        return block_mass(local, codes)
    if not isinstance(placement, Shard) or placement.dim not in (0, 1):
        raise ValueError(f"unsupported placement {placement} for a 2-D weight.")
    mesh, dim = weight.device_mesh, placement.dim
    chunk = math.ceil(weight.shape[dim] / mesh.size())  # DTensor shards follow torch.chunk
    start = min(mesh.get_local_rank() * chunk, weight.shape[dim])
    stop = start + local.shape[dim]
    local_codes = codes.slice_rows(start, stop) if dim == 0 else codes.slice_cols(start, stop)
    inside, total = block_mass(local, local_codes)
    group = mesh.get_group()
    return _global_sum(inside, group), _global_sum(total, group)


@contextmanager
def _forward_replaced(module: nn.Module, fn):
    original = module.forward
    module.forward = fn
    try:
        yield
    finally:
        module.forward = original


def zero3_block_mass(module: nn.Module, codes: BlockCodes) -> tuple[torch.Tensor, torch.Tensor]:
    """`block_mass` of a ZeRO-3 module's weight, computed as the module's forward so DeepSpeed gathers it."""
    with _forward_replaced(module, lambda: block_mass(get_weight(module), codes)):
        return module()


def module_block_mass(module: nn.Module, codes: BlockCodes) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable (in-block, total) squared mass of a module's weight, however it is distributed."""
    if is_zero3(module):
        return zero3_block_mass(module, codes)
    weight = get_weight(module)
    if isinstance(weight, DTensor):
        return sharded_block_mass(weight, codes)
    return block_mass(weight, codes)


def full_weight(module: nn.Module) -> torch.Tensor:
    """The whole `(out, in)` weight as a plain detached tensor, gathered from shards when needed.

    For one-off work (co-clustering, measuring, plotting); every process must call it, since it may communicate.
    """
    if is_zero3(module):
        import deepspeed

        with deepspeed.zero.GatheredParameters([stored_weight(module)], modifier_rank=None):
            return get_weight(module).detach().clone()
    weight = get_weight(module).detach()
    return weight.full_tensor() if isinstance(weight, DTensor) else weight
