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


def size_bounds(n: int, n_clusters: int, tolerance: float) -> tuple[int, int]:
    """Smallest and largest allowed cluster size; k * lo <= n <= k * hi always holds, so a valid split exists."""
    fair = n / n_clusters
    lo = max(1, math.floor((1.0 - tolerance) * fair))
    hi = max(math.ceil(fair), math.floor((1.0 + tolerance) * fair))
    return lo, hi


def _rank_within(groups: torch.Tensor, k: int) -> torch.Tensor:
    """For each entry, how many earlier entries share its group (0 for the first of each group)."""
    onehot = torch.nn.functional.one_hot(groups, k)
    return (onehot.cumsum(0) * onehot).sum(1) - 1


def balanced_assign(cost: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Nearest-centre labels, then the cheapest moves that bring every cluster size into [lo, hi].

    Over-full clusters are drained into clusters with room, under-full ones are filled from clusters that can spare
    points; each round moves the points whose move costs least, so a round per violated cluster is enough.
    """
    k = cost.shape[1]
    labels = cost.argmin(1)
    counts = torch.bincount(labels, minlength=k)
    while bool((counts > hi).any()):
        src = int(torch.argmax(counts))
        room = (hi - counts).clamp_min(0)
        room[src] = 0
        members = torch.nonzero(labels == src).squeeze(1)
        alt = cost[members].masked_fill(room[None] == 0, torch.inf)
        best, dst = alt.min(1)
        order = torch.argsort(best - cost[members, src], stable=True)[: int(counts[src] - hi)]
        dst = dst[order]
        keep = _rank_within(dst, k) < room[dst]  # never overfill a receiver
        labels[members[order][keep]] = dst[keep]
        counts = torch.bincount(labels, minlength=k)
    while bool((counts < lo).any()):
        dst = int(torch.argmin(counts))
        spare = (counts - lo).clamp_min(0)
        candidates = torch.nonzero(spare[labels] > 0).squeeze(1)
        delta = cost[candidates, dst] - cost[candidates, labels[candidates]]
        candidates = candidates[torch.argsort(delta, stable=True)]
        src = labels[candidates]
        chosen = candidates[_rank_within(src, k) < spare[src]][: int(lo - counts[dst])]  # never drain a donor below lo
        labels[chosen] = dst
        counts = torch.bincount(labels, minlength=k)
    return labels


def _kmeans_pp(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding; keeps each point's squared distance to its nearest centre up to date incrementally."""
    centers = points[torch.randint(points.shape[0], (1,), generator=generator, device=points.device)]
    d2 = (points - centers[0]).square().sum(1)
    for _ in range(1, k):
        probs = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        new = points[torch.multinomial(probs, 1, generator=generator)]
        centers = torch.cat([centers, new])
        d2 = torch.minimum(d2, (points - new[0]).square().sum(1))
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
    sample: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means over row and column embeddings together; sizes per side bounded when `bounds` is given.

    The `n_init` restarts run side by side as one batch (shape `(n_init, points, k)`), so the Python loop runs once
    per Lloyd iteration rather than once per restart and iteration. The best restart's final assignment is then
    moved, at least cost, into the size bounds.
    """
    points = torch.cat([rows, cols])
    n_rows = rows.shape[0]
    # Centres are fitted on at most `sample` points (a few dimensions need no more), then every point is assigned.
    fit = points
    if points.shape[0] > sample:
        fit = points[torch.randperm(points.shape[0], generator=generator, device=points.device)[:sample]]
    centers = torch.stack([_kmeans_pp(fit, k, generator) for _ in range(n_init)])  # (R, k, d)
    offsets = torch.arange(n_init, device=points.device)[:, None] * k
    stacked = fit.repeat(n_init, 1)

    def sq_dist(x: torch.Tensor) -> torch.Tensor:
        # squared distances up to the per-point constant |x|^2, which changes neither argmins nor differences
        return torch.baddbmm(
            centers.square().sum(-1)[:, None, :], x.expand(n_init, -1, -1), centers.transpose(1, 2), alpha=-2
        )

    labels = None
    for _ in range(max_iter):
        new = sq_dist(fit).argmin(-1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        flat = (labels + offsets).flatten()
        sums = torch.zeros(n_init * k, fit.shape[1], device=fit.device).index_add_(0, flat, stacked)
        counts = torch.bincount(flat, minlength=n_init * k).unsqueeze(1)
        centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers.reshape(n_init * k, -1))
        centers = centers.reshape(n_init, k, -1)
    cost = sq_dist(points)
    best = int(torch.argmin(cost.min(-1).values.sum(1)))
    cost = cost[best]
    labels = cost.argmin(1)
    if bounds is None:
        return labels[:n_rows], labels[n_rows:]
    # Sizes are repaired once, on the best restart's final centres; refine() then polishes within the bounds.
    return balanced_assign(cost[:n_rows], *bounds[0]), balanced_assign(cost[n_rows:], *bounds[1])


def _canonical(row_labels: torch.Tensor, col_labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Renumber clusters by their first row (then column) so equal partitions get equal labels."""
    first = torch.full((k,), row_labels.numel() + col_labels.numel(), dtype=torch.long, device=row_labels.device)
    positions = torch.arange(row_labels.numel() + col_labels.numel(), device=row_labels.device)
    first.scatter_reduce_(0, torch.cat([row_labels, col_labels]), positions, reduce="amin")
    rename = torch.empty_like(first)
    rename[torch.argsort(first, stable=True)] = torch.arange(k, device=first.device)
    return rename[row_labels], rename[col_labels]


def refine(
    sq: torch.Tensor,
    row_labels: torch.Tensor,
    col_labels: torch.Tensor,
    k: int,
    bounds: tuple[tuple[int, int], tuple[int, int]] | None,
    sweeps: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local moves on W^2 that raise in-block mass beyond what cluster masses alone would give.

    Each sweep reassigns every row, then every column, to the cluster that maximises its bipartite-modularity gain
    (mass inside the block minus the mass expected from the row's and the block's totals), within the size bounds.
    The spectral step finds the global structure; this polishes it on the quantity clusterability measures.
    """
    total = sq.sum().clamp_min(torch.finfo(sq.dtype).tiny)
    row_mass, col_mass = sq.sum(1), sq.sum(0)
    for _ in range(sweeps):
        before = (row_labels.clone(), col_labels.clone())
        onehot = torch.nn.functional.one_hot(col_labels, k).to(sq.dtype)
        gain = (onehot.T @ sq.T).T - row_mass[:, None] * (col_mass @ onehot)[None] / total  # (n, k)
        row_labels = balanced_assign(-gain, *bounds[0]) if bounds else gain.argmax(1)
        onehot = torch.nn.functional.one_hot(row_labels, k).to(sq.dtype)
        gain = (onehot.T @ sq).T - col_mass[:, None] * (row_mass @ onehot)[None] / total  # (m, k)
        col_labels = balanced_assign(-gain, *bounds[1]) if bounds else gain.argmax(1)
        changed = int((before[0] != row_labels).sum() + (before[1] != col_labels).sum())
        if changed <= 0.01 * (row_labels.numel() + col_labels.numel()):  # converged enough: stop paying passes
            break
    return row_labels, col_labels


def _embedding(a: torch.Tensor, n_vectors: int, generator: torch.Generator, n_iter: int = 2):
    """Singular vectors 2..n_vectors+1 of D1^-1/2 |W| D2^-1/2, scaled back by D^-1/2 (Dhillon's embedding).

    The normalised matrix is never formed: a randomized subspace iteration applies it as an operator. Its leading
    singular pair is known in closed form (value 1, vectors proportional to sqrt(degrees)), so it is deflated
    instead of computed, which keeps the subspace small: few passes over the weight and little memory.
    """
    d_rows, d_cols = a.sum(1), a.sum(0)
    if not (torch.isfinite(d_rows).all() and torch.isfinite(d_cols).all()):
        raise ValueError("weight contains NaN or Inf values; fix or reload the weights before clustering them.")
    r = d_rows.rsqrt().nan_to_num(posinf=0.0)  # dead rows and columns get 0 instead of a division by zero
    c = d_cols.rsqrt().nan_to_num(posinf=0.0)
    u1 = d_rows.sqrt() / d_rows.sum().sqrt().clamp_min(torch.finfo(a.dtype).tiny)
    v1 = d_cols.sqrt() / d_cols.sum().sqrt().clamp_min(torch.finfo(a.dtype).tiny)

    # The subspace is kept as rows, (q, n) and (q, m): MKL is several times faster with the skinny operand on the
    # left of the product than with |W| on the left.
    def apply(xt: torch.Tensor) -> torch.Tensor:  # (q, m) -> (q, n)
        return ((xt * c) @ a.T) * r - (xt @ v1)[:, None] * u1

    def apply_t(yt: torch.Tensor) -> torch.Tensor:  # (q, n) -> (q, m)
        return ((yt * r) @ a) * c - (yt @ u1)[:, None] * v1

    def orthonormal_rows(z: torch.Tensor) -> torch.Tensor:
        return torch.linalg.qr(z.T).Q.T

    q = min(n_vectors + 6, *a.shape)
    basis = orthonormal_rows(apply(torch.randn(q, a.shape[1], generator=generator, device=a.device)))
    for _ in range(n_iter):
        basis = orthonormal_rows(apply(orthonormal_rows(apply_t(basis))))
    u_small, _, vh = torch.linalg.svd(apply_t(basis), full_matrices=False)  # (q, m) = basis-coords x columns
    u, v = basis.T @ u_small[:, :n_vectors], vh[:n_vectors].T
    return r[:, None] * u, c[:, None] * v


def spectral_cocluster(
    weight: torch.Tensor | np.ndarray,
    n_clusters: int,
    *,
    seed: int = 0,
    balanced: bool = True,
    tolerance: float = 0.5,
    n_init: int = 3,
    refine_sweeps: int = 2,
) -> Partition:
    """Co-cluster the rows and columns of a `(out_features, in_features)` weight into `n_clusters` aligned clusters.

    Follows Dhillon (2001): normalise |W| by row and column degrees, embed rows and columns with the singular
    vectors after the trivial leading one, and cluster both sets of points jointly. With `balanced=True` each
    cluster keeps between (1 - tolerance) and (1 + tolerance) times its fair share n/k of rows and of columns.
    Rows or columns with no weight at all (dead neurons) are embedded at the origin instead of dividing by zero.
    Deterministic for a given `seed` and device.
    """
    weight = torch.as_tensor(weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must be a 2-D (out_features, in_features) matrix, got shape {tuple(weight.shape)}.")
    check_n_clusters(n_clusters, tuple(weight.shape))
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}; 0 forces equal cluster sizes.")
    generator = torch.Generator(device=weight.device).manual_seed(seed)
    a = weight.detach().float().abs()
    rows, cols = _embedding(a, math.ceil(math.log2(n_clusters)), generator)
    bounds = None
    if balanced:
        bounds = (size_bounds(a.shape[0], n_clusters, tolerance), size_bounds(a.shape[1], n_clusters, tolerance))
    row_labels, col_labels = joint_kmeans(rows, cols, n_clusters, generator=generator, bounds=bounds, n_init=n_init)
    if refine_sweeps:
        a = a.square_() if a.data_ptr() != weight.data_ptr() else a.square()  # |W| is our copy: reuse it as W^2
        row_labels, col_labels = refine(a, row_labels, col_labels, n_clusters, bounds, refine_sweeps)
    return Partition(*_canonical(row_labels, col_labels, n_clusters), n_clusters)
