"""Bipartite spectral co-clustering (Dhillon 2001) of |W|, with aligned and balanced clusters.

Rows and columns are embedded in one space and clustered by a single k-means, so row cluster c and column cluster
c share a centroid and therefore belong together (the paper's code runs two k-means and leaves labels unaligned).
Cluster sizes are kept within a tolerance of n/k on each side: an unbalanced partition with one giant block scores
high for free. Everything runs in torch on the weight's device, in fp32 whatever the weight's dtype.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .partition import Partition, check_n_clusters


def as_weight(weight: torch.Tensor | np.ndarray, name: str = "weight") -> torch.Tensor:
    """Accept a torch tensor or numpy array and check it is a finite 2-D matrix."""
    weight = torch.as_tensor(weight)
    if weight.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (out_features, in_features) matrix, got shape {tuple(weight.shape)}.")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name} contains NaN or Inf values; fix or reload the weights before clustering them.")
    return weight


def size_bounds(n: int, n_clusters: int, tolerance: float) -> tuple[int, int]:
    """Smallest and largest allowed cluster size; k * lo <= n <= k * hi always holds, so a valid split exists."""
    fair = n / n_clusters
    lo = max(1, math.floor((1.0 - tolerance) * fair))
    hi = max(math.ceil(fair), math.floor((1.0 + tolerance) * fair))
    return lo, hi


def _move(
    cost: torch.Tensor, labels: torch.Tensor, donors: torch.Tensor, receiver: int, count: int, spare: torch.Tensor
):
    """Move the `count` points whose move from a donor cluster to `receiver` costs least, taking at most spare[d]."""
    candidates = torch.nonzero(donors[labels]).squeeze(1)
    delta = cost[candidates, receiver] - cost[candidates, labels[candidates]]
    candidates = candidates[torch.argsort(delta, stable=True)]
    # Cap how many each donor gives: rank of a candidate among those of its own donor must be < spare[donor].
    src = labels[candidates]
    rank = torch.zeros_like(src)
    for d in torch.unique(src).tolist():
        mask = src == d
        rank[mask] = torch.arange(int(mask.sum()), device=src.device)
    chosen = candidates[rank < spare[src]][:count]
    labels[chosen] = receiver


def balanced_assign(cost: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Nearest-centroid labels, then the cheapest moves that bring every cluster size into [lo, hi]."""
    k = cost.shape[1]
    labels = cost.argmin(1)
    counts = torch.bincount(labels, minlength=k)
    while bool((counts > hi).any()):  # drain over-full clusters into ones with room
        src = int(torch.argmax(counts))
        room = (hi - counts).clamp_min(0)
        dst = int(torch.argmax(room))
        n_move = int(min(counts[src] - hi, room[dst]))
        donors = torch.zeros(k, dtype=torch.bool, device=cost.device)
        donors[src] = True
        _move(cost, labels, donors, dst, n_move, counts - hi)
        counts = torch.bincount(labels, minlength=k)
    while bool((counts < lo).any()):  # fill under-full clusters from those that can spare points
        dst = int(torch.argmin(counts))
        _move(cost, labels, counts > lo, dst, int(lo - counts[dst]), counts - lo)
        counts = torch.bincount(labels, minlength=k)
    return labels


def _sq_dist(points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    # Plain broadcasting: the embeddings have only a few dimensions, where torch.cdist is orders of magnitude slower.
    return (points.unsqueeze(1) - centers.unsqueeze(0)).square().sum(-1)


def _kmeans_pp(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    first = torch.randint(points.shape[0], (1,), generator=generator, device=points.device)
    centers = points[first]
    for _ in range(1, k):
        d2 = _sq_dist(points, centers).min(1).values
        probs = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        nxt = torch.multinomial(probs, 1, generator=generator)
        centers = torch.cat([centers, points[nxt]])
    return centers


def joint_kmeans(
    rows: torch.Tensor,
    cols: torch.Tensor,
    k: int,
    *,
    generator: torch.Generator,
    bounds: tuple[tuple[int, int], tuple[int, int]] | None,
    n_init: int = 3,
    max_iter: int = 50,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means over row and column embeddings together; sizes per side bounded when `bounds` is given."""
    points = torch.cat([rows, cols])
    n_rows = rows.shape[0]
    best, best_inertia = None, math.inf
    for _ in range(n_init):
        centers = _kmeans_pp(points, k, generator)
        labels = None
        for _ in range(max_iter):
            cost = _sq_dist(points, centers)
            if bounds is None:
                new = cost.argmin(1)
            else:
                new = torch.cat(
                    [balanced_assign(cost[:n_rows], *bounds[0]), balanced_assign(cost[n_rows:], *bounds[1])]
                )
            if labels is not None and torch.equal(new, labels):
                break
            labels = new
            sums = torch.zeros_like(centers).index_add_(0, labels, points)
            counts = torch.bincount(labels, minlength=k).unsqueeze(1)
            centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
        inertia = float(cost.gather(1, labels.unsqueeze(1)).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best[:n_rows], best[n_rows:]


def _canonical(row_labels: torch.Tensor, col_labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Renumber clusters by their first row (then column) so equal partitions get equal labels."""
    first = torch.full((k,), row_labels.numel() + col_labels.numel(), dtype=torch.long, device=row_labels.device)
    positions = torch.arange(row_labels.numel() + col_labels.numel(), device=row_labels.device)
    first.scatter_reduce_(0, torch.cat([row_labels, col_labels]), positions, reduce="amin")
    rename = torch.empty_like(first)
    rename[torch.argsort(first, stable=True)] = torch.arange(k, device=first.device)
    return rename[row_labels], rename[col_labels]


def _leading_singular_vectors(matrix: torch.Tensor, n_vectors: int) -> tuple[torch.Tensor, torch.Tensor]:
    n, m = matrix.shape
    if n * m * min(n, m) <= 2**27:  # small enough that an exact SVD is cheaper than thinking about accuracy
        u, _, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u[:, :n_vectors], vh[:n_vectors].T
    u, _, v = torch.svd_lowrank(matrix, q=min(n_vectors + 10, n, m), niter=4)
    return u[:, :n_vectors], v[:, :n_vectors]


def spectral_cocluster(
    weight: torch.Tensor | np.ndarray,
    n_clusters: int,
    *,
    seed: int = 0,
    balanced: bool = True,
    tolerance: float = 0.5,
    n_init: int = 3,
) -> Partition:
    """Co-cluster the rows and columns of a `(out_features, in_features)` weight into `n_clusters` aligned clusters.

    Follows Dhillon (2001): normalise |W| by row and column degrees, embed rows and columns with the singular
    vectors after the trivial leading one, and cluster both sets of points jointly. With `balanced=True` each
    cluster keeps between (1 - tolerance) and (1 + tolerance) times its fair share n/k of rows and of columns.
    Rows or columns with no weight at all (dead neurons) are embedded at the origin instead of dividing by zero.
    Deterministic for a given `seed` and device.
    """
    weight = as_weight(weight)
    check_n_clusters(n_clusters, tuple(weight.shape))
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}; 0 forces equal cluster sizes.")
    a = weight.detach().float().abs()
    row_scale = a.sum(1).rsqrt().nan_to_num(posinf=0.0)
    col_scale = a.sum(0).rsqrt().nan_to_num(posinf=0.0)
    normalised = row_scale[:, None] * a * col_scale[None, :]
    n_vectors = 1 + math.ceil(math.log2(n_clusters))
    with torch.random.fork_rng(devices=[weight.device] if weight.device.type == "cuda" else []):
        torch.manual_seed(seed)
        u, v = _leading_singular_vectors(normalised, n_vectors)
    rows, cols = row_scale[:, None] * u[:, 1:], col_scale[:, None] * v[:, 1:]
    bounds = None
    if balanced:
        bounds = (size_bounds(a.shape[0], n_clusters, tolerance), size_bounds(a.shape[1], n_clusters, tolerance))
    generator = torch.Generator(device=weight.device).manual_seed(seed)
    row_labels, col_labels = joint_kmeans(rows, cols, n_clusters, generator=generator, bounds=bounds, n_init=n_init)
    return Partition(*_canonical(row_labels, col_labels, n_clusters), n_clusters)
