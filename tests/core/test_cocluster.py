import numpy as np
import pytest
import torch
from sklearn.datasets import make_biclusters
from sklearn.metrics import consensus_score

from hf_clusterable import Partition, clusterability, spectral_cocluster
from hf_clusterable.core.cocluster import balanced_assign, size_bounds


def _biclusters(p: Partition):
    k = p.n_clusters
    rows = np.stack([(p.row_labels == c).numpy() for c in range(k)])
    cols = np.stack([(p.col_labels == c).numpy() for c in range(k)])
    return rows, cols


@pytest.mark.parametrize("shape,noise,k", [((120, 90), 5, 3), ((300, 200), 15, 4), ((200, 400), 10, 5)])
def test_recovers_planted_shuffled_coclusters_with_aligned_labels(shape, noise, k):
    data, rows, cols = make_biclusters(shape=shape, n_clusters=k, noise=noise, shuffle=True, random_state=1)
    p = spectral_cocluster(data, k, seed=0)
    # consensus_score pairs row cluster c with column cluster c, so it is high only if labels are aligned
    assert consensus_score(_biclusters(p), (rows, cols)) > 0.95
    truth_rows, truth_cols = rows.argmax(0), cols.argmax(0)
    for c in range(k):
        row_major = np.bincount(truth_rows[p.row_labels.numpy() == c]).argmax()
        col_major = np.bincount(truth_cols[p.col_labels.numpy() == c]).argmax()
        assert row_major == col_major


def test_separate_kmeans_would_misalign_but_ours_scores_like_the_truth():
    data, rows, cols = make_biclusters(shape=(200, 160), n_clusters=4, noise=5, shuffle=True, random_state=0)
    w = torch.tensor(data, dtype=torch.float32)
    truth = Partition(torch.tensor(rows.argmax(0)), torch.tensor(cols.argmax(0)), 4)
    ours = spectral_cocluster(w, 4)
    assert float(clusterability(w, ours)) == pytest.approx(float(clusterability(w, truth)), abs=1e-3)
    shuffled = Partition(ours.row_labels, (ours.col_labels + 1) % 4, 4)  # what unaligned labels look like
    assert float(clusterability(w, shuffled)) < 0.5 * float(clusterability(w, ours))


@pytest.mark.parametrize("tolerance", [0.0, 0.25, 0.5])
def test_balanced_on_random_and_lopsided_matrices(tolerance):
    g = torch.Generator().manual_seed(0)
    lopsided = torch.rand(300, 120, generator=g)
    lopsided[:20, :10] += 5.0  # one strong small block invites a giant leftover cluster
    for w in (torch.randn(256, 96, generator=g), lopsided):
        p = spectral_cocluster(w, 4, tolerance=tolerance)
        for sizes, n in ((p.row_sizes(), w.shape[0]), (p.col_sizes(), w.shape[1])):
            lo, hi = size_bounds(n, 4, tolerance)
            assert int(sizes.min()) >= lo and int(sizes.max()) <= hi


def test_unbalanced_option_is_plain_kmeans():
    data, *_ = make_biclusters(shape=(100, 100), n_clusters=2, noise=1, random_state=0)
    p = spectral_cocluster(data, 2, balanced=False)
    assert int(p.row_sizes().sum()) == 100


def test_balanced_assign_respects_bounds_with_ties():
    cost = torch.zeros(50, 4)  # every point equally close to every centre (dead neurons all sit at the origin)
    labels = balanced_assign(cost, 10, 15)
    counts = torch.bincount(labels, minlength=4)
    assert int(counts.min()) >= 10 and int(counts.max()) <= 15


def test_deterministic_and_seeded():
    w = torch.randn(128, 64, generator=torch.Generator().manual_seed(3))
    a, b = spectral_cocluster(w, 4, seed=5), spectral_cocluster(w, 4, seed=5)
    assert a == b
    assert spectral_cocluster(w.numpy(), 4, seed=5) == a  # numpy input gives the same answer


def test_dead_neurons_and_low_precision():
    data, rows, cols = make_biclusters(shape=(120, 80), n_clusters=4, noise=2, shuffle=False, random_state=0)
    w = torch.tensor(data, dtype=torch.float32)
    w[:5] = 0.0  # dead output neurons
    w[:, -3:] = 0.0  # dead inputs
    p = spectral_cocluster(w, 4)
    assert p.shape == (120, 80)
    assert float(clusterability(w, p)) > 0.9
    assert spectral_cocluster(w.bfloat16(), 4).shape == (120, 80)


@pytest.mark.parametrize(
    "weight,k,match",
    [
        (torch.randn(10, 10), 1, "at least 2"),
        (torch.randn(10, 3), 4, "smaller side"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 2, "NaN or Inf"),
        (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), 2, "NaN or Inf"),
        (torch.randn(10), 2, "2-D"),
        (torch.randn(2, 3, 4), 2, "2-D"),
    ],
)
def test_bad_input(weight, k, match):
    with pytest.raises(ValueError, match=match):
        spectral_cocluster(weight, k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_like_on_cpu():
    data, rows, cols = make_biclusters(shape=(300, 200), n_clusters=4, noise=5, shuffle=True, random_state=1)
    w = torch.tensor(data, dtype=torch.float32)
    p = spectral_cocluster(w.cuda(), 4)
    assert p.row_labels.device.type == "cuda"
    assert consensus_score(_biclusters(p.to("cpu")), (rows, cols)) > 0.95


def _faint_planted(seed: int, n: int = 768, m: int = 3072, k: int = 4):
    """N(0,1) plus 0.5 N(0,1) inside k equal blocks, shuffled: true normalised score ~0.06, near detection."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.arange(n) * k // n, torch.arange(m) * k // m
    w = torch.randn(n, m, generator=g) + 0.5 * torch.randn(n, m, generator=g) * (rows[:, None] == cols[None, :])
    row_order, col_order = torch.randperm(n, generator=g), torch.randperm(m, generator=g)
    return w[row_order][:, col_order].contiguous(), rows[row_order], cols[col_order]


@pytest.mark.parametrize("seed", [0, 1])
def test_recovers_faint_planted_blocks(seed):
    # A 2-iteration randomized SVD with ceil(log2 k) vectors found these rows at adjusted Rand ~0.2; an exact SVD
    # reaches ~0.9. The adaptive Krylov embedding with k - 1 vectors must get close to the exact one.
    from sklearn.metrics import adjusted_rand_score

    w, rows, cols = _faint_planted(seed)
    p = spectral_cocluster(w, 4, seed=0)
    assert adjusted_rand_score(rows.numpy(), p.row_labels.numpy()) >= 0.7
    truth = Partition(rows, cols, 4)
    assert float(clusterability(w, p)) >= float(clusterability(w, truth))


def test_n_vectors_is_checked():
    with pytest.raises(ValueError, match="n_vectors must be an integer"):
        spectral_cocluster(torch.randn(10, 10), 2, n_vectors=0)
    assert spectral_cocluster(torch.randn(64, 48), 4, n_vectors=2).shape == (64, 48)
