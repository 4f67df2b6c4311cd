import pytest
import torch

from hf_clusterable import Partition, baseline, clusterability, normalised


def _random_partition(n, m, k, seed):
    g = torch.Generator().manual_seed(seed)
    return Partition(torch.randint(0, k, (n,), generator=g), torch.randint(0, k, (m,), generator=g), k)


def _direct(weight, p):
    mask = p.row_labels[:, None] == p.col_labels[None, :]
    sq = weight.double() ** 2
    return float(sq[mask].sum() / sq.sum())


@pytest.mark.parametrize("seed", range(5))
def test_matches_direct_mask_computation(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(37, 53, generator=g)
    p = _random_partition(37, 53, 1 + seed % 4 + 1, seed)
    assert float(clusterability(w, p)) == pytest.approx(_direct(w, p), rel=1e-6)


def test_block_diagonal_scores_one_and_unstructured_scores_baseline():
    p = Partition.blocks(40, 60, 4)
    w = torch.randn(40, 60) * (p.row_labels[:, None] == p.col_labels[None, :])
    assert float(clusterability(w, p)) == pytest.approx(1.0)
    # an unstructured (constant-magnitude) matrix scores exactly the baseline, whatever the block sizes
    q = _random_partition(40, 60, 3, 7)
    assert float(clusterability(torch.ones(40, 60), q)) == pytest.approx(baseline(q))
    assert baseline(p) == pytest.approx(0.25)
    assert normalised(baseline(q), baseline(q)) == pytest.approx(0.0)
    assert normalised(1.0, 0.25) == pytest.approx(1.0)


def test_random_matrices_average_to_baseline():
    p = _random_partition(200, 300, 4, 3)
    scores = [
        float(clusterability(torch.randn(200, 300, generator=torch.Generator().manual_seed(s)), p)) for s in range(20)
    ]
    assert sum(scores) / len(scores) == pytest.approx(baseline(p), abs=5e-3)


def test_gradient_matches_analytic():
    w = torch.randn(8, 12, dtype=torch.float32, requires_grad=True)
    p = _random_partition(8, 12, 3, 1)
    c = clusterability(w, p)
    c.backward()
    mask = (p.row_labels[:, None] == p.col_labels[None, :]).float()
    wd = w.detach()
    total, inside = (wd**2).sum(), (wd**2 * mask).sum()
    expected = 2 * wd * (mask * total - inside) / total**2
    torch.testing.assert_close(w.grad, expected, rtol=1e-4, atol=1e-6)


def test_bf16_weights_are_scored_in_fp32():
    w = torch.randn(64, 32)
    p = Partition.blocks(64, 32, 4)
    c = clusterability(w.bfloat16(), p)
    assert c.dtype == torch.float32
    assert float(c) == pytest.approx(_direct(w.bfloat16().float(), p), rel=1e-6)


def test_zero_matrix_scores_zero_and_shape_mismatch_raises():
    p = Partition.blocks(4, 4, 2)
    assert float(clusterability(torch.zeros(4, 4), p)) == 0.0
    with pytest.raises(ValueError, match="does not match partition shape"):
        clusterability(torch.zeros(4, 5), p)
    with pytest.raises(ValueError, match="2-D"):
        clusterability(torch.zeros(4), p)
