"""Clusterability: the share of a matrix's squared weight that lies inside its k diagonal blocks.

Scores are built from two sums (in-block mass, total mass) so a weight split across processes can be scored by
summing per-shard masses before dividing. The in-block mass is computed with one matmul against a one-hot of the
column labels, so no boolean block mask is ever built.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .partition import Partition


def _check_shape(weight: torch.Tensor, partition: Partition) -> None:
    if weight.ndim != 2:
        raise ValueError(f"clusterability needs a 2-D weight, got shape {tuple(weight.shape)}.")
    if tuple(weight.shape) != partition.shape:
        raise ValueError(
            f"weight shape {tuple(weight.shape)} does not match partition shape {partition.shape}; "
            "weights are read as (out_features, in_features)."
        )


class BlockCodes(NamedTuple):
    """A partition's labels and one-hot codes on one device, built once and reused every step."""

    row_labels: torch.Tensor
    col_labels: torch.Tensor
    row_onehot: torch.Tensor
    col_onehot: torch.Tensor

    @classmethod
    def of(cls, partition: Partition, device: torch.device | str | None = None) -> BlockCodes:
        rows, cols = partition.row_labels.to(device), partition.col_labels.to(device)
        k = partition.n_clusters
        return cls(rows, cols, F.one_hot(rows, k).float(), F.one_hot(cols, k).float())

    def slice_rows(self, start: int, stop: int) -> BlockCodes:
        return self._replace(row_labels=self.row_labels[start:stop], row_onehot=self.row_onehot[start:stop])

    def slice_cols(self, start: int, stop: int) -> BlockCodes:
        return self._replace(col_labels=self.col_labels[start:stop], col_onehot=self.col_onehot[start:stop])


class _BlockMass(torch.autograd.Function):
    """(in-block, total) squared mass with a hand-written backward: few passes over W, all in its stored layout.

    d(inside)/dW = 2W [r_i == c_j] and d(total)/dW = 2W, so the gradient is 2W times a k x k table of upstream
    gradients looked up by (row label, column label), expanded with one skinny matmul. GPT-2's Conv1D weight is a
    transposed view: it is scored through its contiguous storage with the roles of the labels swapped, because the
    skinny matmuls run several times faster over contiguous rows on CPU (MKL).
    """

    @staticmethod
    def forward(ctx, weight, row_labels, col_labels, row_onehot, col_onehot):
        transposed = not weight.is_contiguous() and weight.T.is_contiguous()
        w = (weight.T if transposed else weight).float().contiguous()
        lead_onehot, trail_labels, trail_onehot = (
            (col_onehot, row_labels, row_onehot) if transposed else (row_onehot, col_labels, col_onehot)
        )
        per_cluster = lead_onehot.T @ (w * w)  # (k, trailing dim): mass of each column of w in each row cluster
        ctx.transposed = transposed
        ctx.save_for_backward(weight, lead_onehot, trail_onehot)
        return per_cluster.gather(0, trail_labels.unsqueeze(0)).sum(), per_cluster.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_inside, grad_total):
        weight, lead_onehot, trail_onehot = ctx.saved_tensors
        w = weight.T if ctx.transposed else weight
        trail_term = trail_onehot * (2 * grad_inside) + 2 * grad_total  # (trailing dim, k)
        grad = (lead_onehot @ trail_term.T).mul_(w.float())  # each index has one cluster: the table, looked up
        return (grad.T if ctx.transposed else grad).to(weight.dtype), None, None, None, None


def block_mass(weight: torch.Tensor, codes: BlockCodes) -> tuple[torch.Tensor, torch.Tensor]:
    """(in-block squared mass, total squared mass) in fp32, differentiable in `weight`.

    Both are sums, so shards of one matrix can be scored separately and added up.
    """
    return _BlockMass.apply(weight, *codes)


def mass_ratio(inside: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """inside / total, with an all-zero matrix scoring 0 (no mass to place inside any block) instead of NaN."""
    return inside / total.clamp_min(torch.finfo(torch.float32).tiny)


def clusterability(weight: torch.Tensor, partition: Partition) -> torch.Tensor:
    """C = (sum of W^2 inside the k blocks) / (sum of all W^2), a 0-dim fp32 tensor differentiable in `weight`."""
    weight = torch.as_tensor(weight)
    _check_shape(weight, partition)
    return mass_ratio(*block_mass(weight, BlockCodes.of(partition, weight.device)))


def baseline(partition: Partition) -> float:
    """The clusterability an unstructured matrix gets with these block sizes: sum_c n_c m_c / (n m).

    Equals 1/k for equal blocks and grows when one cluster is large, which is why it is reported next to every score.
    """
    rows = partition.row_sizes().double()
    cols = partition.col_sizes().double()
    n, m = partition.shape
    return float((rows * cols).sum() / (n * m))


def normalised(score: float, base: float) -> float:
    """(C - B) / (1 - B): 0 for an unstructured matrix, 1 for a perfectly block-diagonal one."""
    return (score - base) / (1.0 - base) if base < 1.0 else 0.0
