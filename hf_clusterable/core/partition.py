"""A partition of a weight matrix's rows and columns into k aligned clusters.

Block c of a matrix is (rows labelled c) x (columns labelled c), so row cluster c and column cluster c must mean the
same thing. Labels live in long tensors so they can sit on the weight's device and index it without copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..utils.validation import require_int


def check_n_clusters(n_clusters: int, shape: tuple[int, int], name: str = "matrix") -> None:
    """Raise a one-line, actionable error when k cannot split a matrix of this shape."""
    require_int("n_clusters", n_clusters, 2, "modularity needs at least 2 clusters")
    if n_clusters > min(shape):
        raise ValueError(
            f"n_clusters={n_clusters} is larger than the smaller side of {name} {tuple(shape)}; "
            f"use n_clusters <= {min(shape)} or leave this matrix out of the targets."
        )


def _contiguous_labels(n: int, k: int) -> torch.Tensor:
    # floor(i * k / n) gives k runs whose lengths differ by at most one and cover every index.
    return torch.arange(n, dtype=torch.long).mul_(k).div_(n, rounding_mode="floor")


def _as_labels(side: str, labels: object) -> torch.Tensor:
    """Labels as a long tensor; floats (a cast would truncate them silently), bools and non-numbers are refused."""
    try:
        tensor = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError, OverflowError) as err:
        raise TypeError(f"{side} must be integer cluster labels, got {type(labels).__name__} ({err}).") from None
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"{side} must be integer cluster labels, got dtype {tensor.dtype}.")
    return tensor.long()


@dataclass(eq=False)
class Partition:
    """Cluster labels for the rows (output neurons) and columns (input neurons) of one `(out, in)` matrix."""

    row_labels: torch.Tensor
    col_labels: torch.Tensor
    n_clusters: int

    def __post_init__(self) -> None:
        self.row_labels = _as_labels("row_labels", self.row_labels)
        self.col_labels = _as_labels("col_labels", self.col_labels)
        check_n_clusters(self.n_clusters, (max(self.n_clusters, 2), max(self.n_clusters, 2)))
        for side, labels in (("row_labels", self.row_labels), ("col_labels", self.col_labels)):
            if labels.ndim != 1 or labels.numel() == 0:
                raise ValueError(f"{side} must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}.")
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.n_clusters:
                raise ValueError(f"{side} must lie in [0, {self.n_clusters}), found values in [{lo}, {hi}].")

    @classmethod
    def blocks(cls, n_rows: int, n_cols: int, n_clusters: int) -> Partition:
        """Contiguous equal blocks (sizes differ by at most 1), the fixed partition for training from scratch."""
        check_n_clusters(n_clusters, (n_rows, n_cols))
        return cls(_contiguous_labels(n_rows, n_clusters), _contiguous_labels(n_cols, n_clusters), n_clusters)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row_labels.numel(), self.col_labels.numel())

    @property
    def T(self) -> Partition:  # mirrors Tensor.T
        """The same clusters for the transposed matrix (e.g. a down projection sharing an up projection's labels)."""
        return Partition(self.col_labels, self.row_labels, self.n_clusters)

    def row_sizes(self) -> torch.Tensor:
        return torch.bincount(self.row_labels, minlength=self.n_clusters)

    def col_sizes(self) -> torch.Tensor:
        return torch.bincount(self.col_labels, minlength=self.n_clusters)

    def order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column permutations that make the blocks contiguous (for plots and analysis)."""
        return torch.sort(self.row_labels, stable=True).indices, torch.sort(self.col_labels, stable=True).indices

    def to(self, device: torch.device | str) -> Partition:
        return Partition(self.row_labels.to(device), self.col_labels.to(device), self.n_clusters)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Partition):
            return NotImplemented
        return (
            self.n_clusters == other.n_clusters
            and torch.equal(self.row_labels.cpu(), other.row_labels.cpu())
            and torch.equal(self.col_labels.cpu(), other.col_labels.cpu())
        )

    def __repr__(self) -> str:
        return (
            f"Partition(shape={self.shape}, n_clusters={self.n_clusters}, "
            f"row_sizes={self.row_sizes().tolist()}, col_sizes={self.col_sizes().tolist()})"
        )
