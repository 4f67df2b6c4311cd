import pytest
import torch

from hf_clusterable import Partition


@pytest.mark.parametrize("n_rows,n_cols,k", [(10, 7, 4), (64, 256, 4), (5, 5, 5), (3072, 768, 4), (13, 2, 2)])
def test_blocks_cover_everything_with_sizes_within_one(n_rows, n_cols, k):
    p = Partition.blocks(n_rows, n_cols, k)
    for sizes, n in ((p.row_sizes(), n_rows), (p.col_sizes(), n_cols)):
        assert int(sizes.sum()) == n
        assert int(sizes.max() - sizes.min()) <= 1
        assert int(sizes.min()) >= 1
    # contiguous: labels never decrease
    assert torch.all(p.row_labels[1:] >= p.row_labels[:-1])
    assert torch.all(p.col_labels[1:] >= p.col_labels[:-1])


def test_transpose_swaps_sides():
    p = Partition.blocks(6, 9, 3)
    assert p.T.shape == (9, 6)
    assert torch.equal(p.T.row_labels, p.col_labels)
    assert p.T.T == p


def test_order_groups_labels():
    p = Partition(torch.tensor([2, 0, 1, 0]), torch.tensor([1, 1, 0, 2, 2]), 3)
    rows, cols = p.order()
    assert p.row_labels[rows].tolist() == [0, 0, 1, 2]
    assert p.col_labels[cols].tolist() == [0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(row_labels=[0, 1], col_labels=[0, 1], n_clusters=1), "at least 2"),
        (dict(row_labels=[0, 3], col_labels=[0, 1], n_clusters=3), r"\[0, 3\)"),
        (dict(row_labels=[0, -1], col_labels=[0, 1], n_clusters=2), r"\[0, 2\)"),
        (dict(row_labels=[[0, 1]], col_labels=[0, 1], n_clusters=2), "1-D"),
    ],
)
def test_invalid_partitions_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Partition(**kwargs)


def test_blocks_rejects_k_larger_than_a_side():
    with pytest.raises(ValueError, match="smaller side"):
        Partition.blocks(3, 100, 4)
