"""Clusterability: the share of a matrix's squared weight that lies inside its k diagonal blocks.

Scores are built from two sums (in-block mass, total mass) so a weight split across processes can be scored by
summing per-shard masses before dividing. The in-block mass is computed with one matmul against a one-hot of the
column labels, so no boolean block mask is ever built.
"""

from __future__ import annotations

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


class _BlockMass(torch.autograd.Function):
    """(in-block, total) squared mass with a hand-written backward: two passes over W instead of autograd's five.

    d(inside)/dW = 2W [r_i == c_j] and d(total)/dW = 2W, so the gradient is 2W times a k x k table of upstream
    gradients looked up by (row label, column label), expanded with one skinny matmul.
    """

    @staticmethod
    def forward(ctx, weight: torch.Tensor, row_labels: torch.Tensor, col_onehot: torch.Tensor):
        w = weight.float()
        # (k, n): squared mass of each row in each column cluster; the skinny operand goes on the left, which MKL
        # runs several times faster than (n, m) @ (m, k).
        per_cluster = col_onehot.T @ (w * w).T
        ctx.save_for_backward(weight, row_labels, col_onehot)
        return per_cluster.gather(0, row_labels.unsqueeze(0)).sum(), per_cluster.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_inside: torch.Tensor, grad_total: torch.Tensor):
        weight, row_labels, col_onehot = ctx.saved_tensors
        k = col_onehot.shape[1]
        row_term = F.one_hot(row_labels, k).float() * (2 * grad_inside) + 2 * grad_total  # (n, k)
        # Each column has exactly one cluster, so row_term @ onehot.T is the table looked up per entry. Build it in
        # the weight's own memory layout (Conv1D weights are transposed views) so the product streams contiguously.
        if weight.T.is_contiguous() and not weight.is_contiguous():
            grad = (col_onehot @ row_term.T).mul_(weight.T.float()).T
        else:
            grad = (row_term @ col_onehot.T).mul_(weight.float())
        return grad.to(weight.dtype), None, None


def block_mass(
    weight: torch.Tensor, row_labels: torch.Tensor, col_onehot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(in-block squared mass, total squared mass) in fp32, differentiable in `weight`.

    `col_onehot` is the `(n_cols, k)` fp32 one-hot of the column labels on the weight's device; callers that score
    the same partition every step build it once. Both are sums, so shards of one matrix can be added up.
    """
    return _BlockMass.apply(weight, row_labels, col_onehot)


def col_onehot(partition: Partition, device: torch.device | str | None = None) -> torch.Tensor:
    labels = partition.col_labels if device is None else partition.col_labels.to(device)
    return F.one_hot(labels, partition.n_clusters).float()


def clusterability(weight: torch.Tensor, partition: Partition) -> torch.Tensor:
    """C = (sum of W^2 inside the k blocks) / (sum of all W^2), a 0-dim fp32 tensor differentiable in `weight`.

    An all-zero matrix scores 0 (there is no mass to place inside any block).
    """
    weight = torch.as_tensor(weight)
    _check_shape(weight, partition)
    rows = partition.row_labels.to(weight.device)
    inside, total = block_mass(weight, rows, col_onehot(partition, weight.device))
    return inside / total.clamp_min(torch.finfo(torch.float32).tiny)


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
