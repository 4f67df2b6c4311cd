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


def block_mass(
    weight: torch.Tensor, row_labels: torch.Tensor, col_onehot: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(in-block squared mass, total squared mass) in fp32.

    `col_onehot` is the `(n_cols, k)` one-hot of the column labels, in fp32 on the weight's device; callers that
    score the same partition every step build it once. Differentiable in `weight`.
    """
    per_row = weight.float().square() @ col_onehot  # (n_rows, k): squared mass of each row in each column cluster
    inside = per_row.gather(1, row_labels.unsqueeze(1)).sum()
    return inside, per_row.sum()


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
