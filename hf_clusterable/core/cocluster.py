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


_KMEANS_TOL = 1e-3  # centre shift relative to the data's variance at which Lloyd's iterations stop


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

    # Stop when the centres move less than 1e-3 of the data's variance (summed squared shift, as scikit-learn's
    # KMeans but 10x looser), or no point changes cluster. On unstructured data Lloyd's iterations otherwise keep
    # trading a few boundary points until max_iter for no gain.
    shift_tol = _KMEANS_TOL * float(fit.var(0).sum()) if fit.shape[0] > 1 else 0.0
    labels = None
    for _ in range(max_iter):
        new = sq_dist(fit).argmin(-1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        flat = (labels + offsets).flatten()
        sums = torch.zeros(n_init * k, fit.shape[1], device=fit.device).index_add_(0, flat, stacked)
        counts = torch.bincount(flat, minlength=n_init * k).unsqueeze(1)
        previous = centers
        centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers.reshape(n_init * k, -1))
        centers = centers.reshape(n_init, k, -1)
        if float((centers - previous).square().sum((1, 2)).max()) <= shift_tol:
            break
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


# The noise edge: an n x m matrix of independent noise has its top singular value at ~ ||A||_F (1/sqrt(n) +
# 1/sqrt(m)) (Marchenko-Pastur). Measured on |W| of Gaussian matrices from 32x96 to 768x3072, the top deflated
# singular value lies at 0.91-1.02 of that estimate, while faint planted blocks (true normalised score 0.06) give
# values at 1.05-1.09. A singular value counts as structure when it exceeds `_EDGE_MARGIN` times the edge.
_EDGE_MARGIN = 1.03
# Adaptive block Krylov: stop once the subspace of the singular vectors above the noise edge has converged (sin of
# its largest angle to the previous step's below `_SUBSPACE_TOL`), when from step `_NOISE_FROM` no Ritz value is
# above the edge (nothing to converge to: an unstructured matrix), or after `_MAX_STEPS`.
_MAX_STEPS = 16
_SUBSPACE_TOL = 5e-2
_NOISE_FROM = 4  # by then a faint structure's top Ritz value is ~7% above the edge, noise's ~1% below
_OVERSAMPLE = 4
_EXACT_BELOW = 128  # matrices this small get an exact SVD: cheaper than a Krylov basis that nearly spans them


def _deflated_frobenius(a: torch.Tensor, r: torch.Tensor, c: torch.Tensor, chunk: int = 1 << 20) -> float:
    """Frobenius norm of the deflated operator, sqrt(||D1^-1/2 |W| D2^-1/2||_F^2 - 1), in row chunks kept in cache."""
    c2 = c.square()
    rows = max(1, chunk // max(1, a.shape[1]))
    total = sum(
        float((a[i : i + rows].square() @ c2 * r[i : i + rows].square()).sum()) for i in range(0, a.shape[0], rows)
    )
    return max(total - 1.0, 0.0) ** 0.5


def _embedding(
    a: torch.Tensor, n_vectors: tuple[int, int], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular vectors 2.. of D1^-1/2 |W| D2^-1/2, scaled back by D^-1/2 (Dhillon's embedding).

    `n_vectors` = (fewest, most): as many vectors are used as singular values stand above the noise edge (see
    `_EDGE_MARGIN`), within those bounds. k blocks give k - 1 such directions besides the trivial one, and all of
    them are needed to recover faint blocks; an unstructured matrix gets the fewest (Dhillon's ceil(log2 k)), so
    k-means has fewer noise dimensions to fit.

    The normalised matrix is never formed: it is applied as an operator. Its leading singular pair is known in
    closed form (value 1, vectors proportional to sqrt(degrees)), so it is deflated instead of computed. The
    singular vectors come from a block Golub-Kahan-Lanczos (block Krylov) iteration with full
    reorthogonalisation, which converges in about the square root of the iterations a power (subspace) iteration
    needs when the structure is faint and its singular values sit just above the noise. It stops adaptively:
    strong structure converges in 2-3 steps, faint structure in ~8, an unstructured matrix stops after 3.
    """
    fewest, most = n_vectors
    d_rows, d_cols = a.sum(1), a.sum(0)
    if not (torch.isfinite(d_rows).all() and torch.isfinite(d_cols).all()):
        raise ValueError("weight contains NaN or Inf values; fix or reload the weights before clustering them.")
    r = d_rows.rsqrt().nan_to_num(posinf=0.0)  # dead rows and columns get 0 instead of a division by zero
    c = d_cols.rsqrt().nan_to_num(posinf=0.0)
    u1 = d_rows.sqrt() / d_rows.sum().sqrt().clamp_min(torch.finfo(a.dtype).tiny)
    v1 = d_cols.sqrt() / d_cols.sum().sqrt().clamp_min(torch.finfo(a.dtype).tiny)
    edge_per_norm = a.shape[0] ** -0.5 + a.shape[1] ** -0.5

    def used(values: torch.Tensor, frobenius: float) -> int:
        above = int((values > _EDGE_MARGIN * edge_per_norm * frobenius).sum())
        return min(max(above, fewest), most)

    if min(a.shape) <= _EXACT_BELOW or min(a.shape) <= 6 * (most + _OVERSAMPLE):
        normalised = r[:, None] * a * c[None, :] - u1[:, None] * v1[None, :]
        u, values, vh = torch.linalg.svd(normalised, full_matrices=False)
        k = used(values, float(values.square().sum().sqrt()))
        return r[:, None] * u[:, :k], c[:, None] * vh[:k].T

    # Vectors are kept as rows, (q, n) and (q, m): MKL is several times faster with the skinny operand on the left
    # of the product than with |W| on the left.
    def apply(xt: torch.Tensor) -> torch.Tensor:  # (q, m) -> (q, n)
        return ((xt * c) @ a.T) * r - (xt @ v1)[:, None] * u1

    def apply_t(yt: torch.Tensor) -> torch.Tensor:  # (q, n) -> (q, m)
        return ((yt * r) @ a) * c - (yt @ u1)[:, None] * v1

    def orthonormal_rows(z: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
        if basis is not None:
            for _ in range(2):  # twice is enough (Kahan-Parlett) for orthogonality to rounding error
                z = z - (z @ basis.T) @ basis
        return torch.linalg.qr(z.T).Q.T

    block = -(-(most + _OVERSAMPLE) // 8) * 8  # MKL runs 8 rows faster than 7: round up to a multiple of 8
    max_steps = min(_MAX_STEPS, min(a.shape) // (2 * block) - 1)  # the basis stays well inside both dimensions
    frobenius = _deflated_frobenius(a, r, c)
    p = orthonormal_rows(apply(torch.randn(block, a.shape[1], generator=generator, device=a.device)), None)
    p_all, v_all, y_all = p, a.new_empty(0, a.shape[1]), a.new_empty(0, a.shape[0])
    previous = None
    for step in range(1, max_steps + 1):
        v = orthonormal_rows(apply_t(p), v_all)
        v_all = torch.cat([v_all, v])
        y = apply(v)  # rows of A V^T: with the P basis, A restricted to the Krylov spaces is P^T (P y_all^T)
        y_all = torch.cat([y_all, y])
        p = orthonormal_rows(y, p_all)
        p_all = torch.cat([p_all, p])
        u_small, values, vh_small = torch.linalg.svd(p_all @ y_all.T, full_matrices=False)
        k = used(values, frobenius)
        left = u_small[:, :k].T @ p_all
        above = int((values > _EDGE_MARGIN * edge_per_norm * frobenius).sum())
        if step >= _NOISE_FROM and above == 0:
            break
        if previous is not None and previous.shape[0] == k:
            cosines = torch.linalg.svdvals(left @ previous.T)
            if above >= k and float(1 - cosines.min().clamp(max=1.0) ** 2) < _SUBSPACE_TOL**2:
                break
        previous = left
    right = vh_small[:k] @ v_all
    return r[:, None] * left.T, c[:, None] * right.T


def spectral_cocluster(
    weight: torch.Tensor | np.ndarray,
    n_clusters: int,
    *,
    seed: int = 0,
    balanced: bool = True,
    tolerance: float = 0.5,
    n_init: int = 3,
    refine_sweeps: int = 2,
    n_vectors: int | None = None,
) -> Partition:
    """Co-cluster the rows and columns of a `(out_features, in_features)` weight into `n_clusters` aligned clusters.

    Follows Dhillon (2001): normalise |W| by row and column degrees, embed rows and columns with the singular
    vectors after the trivial leading one, and cluster both sets of points jointly. With `balanced=True` each
    cluster keeps between (1 - tolerance) and (1 + tolerance) times its fair share n/k of rows and of columns.
    Rows or columns with no weight at all (dead neurons) are embedded at the origin instead of dividing by zero.
    The embedding uses `n_vectors` singular vectors if given; by default as many as stand above the noise, between
    Dhillon's ceil(log2 k) and k - 1 (k blocks span k - 1 directions besides the trivial one, and dropping some
    loses faint blocks). They are computed by an adaptive block Krylov iteration (see `_embedding`).
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
    if n_vectors is None:  # as many as stand above the noise, from Dhillon's ceil(log2 k) up to k - 1
        bounds_vectors = (math.ceil(math.log2(n_clusters)), n_clusters - 1)
    elif isinstance(n_vectors, bool) or not isinstance(n_vectors, int) or n_vectors < 1:
        raise ValueError(f"n_vectors must be an integer >= 1 (singular vectors to embed with), got {n_vectors!r}.")
    else:
        bounds_vectors = (n_vectors, n_vectors)
    rows, cols = _embedding(a, tuple(min(v, min(a.shape) - 1) for v in bounds_vectors), generator)
    bounds = None
    if balanced:
        bounds = (size_bounds(a.shape[0], n_clusters, tolerance), size_bounds(a.shape[1], n_clusters, tolerance))
    row_labels, col_labels = joint_kmeans(rows, cols, n_clusters, generator=generator, bounds=bounds, n_init=n_init)
    if refine_sweeps:
        a = a.square_() if a.data_ptr() != weight.data_ptr() else a.square()  # |W| is our copy: reuse it as W^2
        row_labels, col_labels = refine(a, row_labels, col_labels, n_clusters, bounds, refine_sweeps)
    return Partition(*_canonical(row_labels, col_labels, n_clusters), n_clusters)
