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


# ---- random bad input: a Partition or a clear ValueError / TypeError, never another exception ----------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


label_values = st.one_of(
    st.integers(min_value=-3, max_value=6),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
labels = st.one_of(
    st.lists(st.integers(min_value=0, max_value=4), max_size=6),
    st.lists(label_values, max_size=5),
    st.lists(st.lists(st.integers(min_value=0, max_value=3), max_size=3), max_size=3),
    st.builds(
        lambda values, dtype: torch.tensor(values).to(dtype),
        st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=6),
        st.sampled_from([torch.int8, torch.int32, torch.int64, torch.uint8, torch.float32, torch.bool, torch.float16]),
    ),
    label_values,
)
ks = st.one_of(st.integers(min_value=-2, max_value=8), st.floats(), st.booleans(), st.none(), st.text(max_size=2))


@settings(max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(labels, labels, ks)
def test_random_partitions_are_valid_or_refused_clearly(rows, cols, k):
    try:
        p = Partition(rows, cols, k)
    except (ValueError, TypeError) as err:
        assert str(err).strip(), "an error without a message"
        return
    for side in (p.row_labels, p.col_labels):
        assert side.dtype == torch.long and side.ndim == 1 and side.numel() > 0
        assert 0 <= int(side.min()) and int(side.max()) < p.n_clusters


@pytest.mark.parametrize("floats", [[0.0, 1.7], torch.tensor([0.0, 1.0]), torch.tensor([True, False])])
def test_float_and_bool_labels_are_refused_not_truncated(floats):
    with pytest.raises(TypeError, match="integer"):
        Partition(floats, [0, 1], 2)
