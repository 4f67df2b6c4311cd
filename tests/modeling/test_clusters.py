import json
import math

import pytest
import torch

from hf_clusterable import ClusterConfig, Partition, cluster_model, find_targets, load_clusters, save_clusters
from hf_clusterable.constants import CLUSTERS_NAME
from hf_clusterable.modeling.clusters import check_clusters, group_affinity
from hf_clusterable.modeling.targets import get_weight
from tests.testing_utils import tiny_model


def test_save_load_round_trip_is_exact(tmp_path):
    model = tiny_model("gemma")
    targets = find_targets(model)
    parts = cluster_model(model, ClusterConfig(n_clusters=3), targets)
    save_clusters(tmp_path, parts)
    loaded = load_clusters(tmp_path)
    assert set(loaded) == set(parts)
    assert all(loaded[n] == parts[n] for n in parts)
    check_clusters(loaded, targets, 3)
    assert [p.name for p in tmp_path.iterdir()] == [CLUSTERS_NAME]


def test_mismatches_are_reported(tmp_path):
    model = tiny_model("gpt2")
    targets = find_targets(model)
    parts = cluster_model(model, ClusterConfig(init="blocks"), targets)
    wrong = dict(parts)
    name = targets[0].name
    wrong[name] = Partition.blocks(10, 10, 4)
    with pytest.raises(ValueError, match="shape mismatch"):
        check_clusters(wrong, targets, 4)
    with pytest.raises(ValueError, match="missing"):
        check_clusters({k: v for k, v in parts.items() if k != name}, targets, 4)
    with pytest.raises(ValueError, match="n_clusters"):
        check_clusters(parts, targets, 3)


def test_corrupt_file_is_a_clear_error(tmp_path):
    (tmp_path / CLUSTERS_NAME).write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="could not read"):
        load_clusters(tmp_path)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    parts = {"a": Partition.blocks(4, 4, 2)}
    save_clusters(tmp_path, parts)
    before = (tmp_path / CLUSTERS_NAME).read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("hf_clusterable.config.os.replace", boom)
    with pytest.raises(OSError):
        save_clusters(tmp_path, {"a": Partition(torch.tensor([1, 0, 0, 0]), torch.tensor([0, 1, 1, 1]), 2)})
    assert (tmp_path / CLUSTERS_NAME).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [CLUSTERS_NAME]


def test_group_affinity_in_blocks_is_the_whole_matrix_formula():
    model = tiny_model("gpt2")  # Conv1D: every weight is a transposed view, the down projection joins transposed
    modules = dict(model.named_modules())
    members = [t for t in find_targets(model) if t.group == "transformer.h.0"]
    assert len(members) == 2
    weights = {t.name: get_weight(modules[t.name]).detach() for t in members}
    fc, proj = (weights[t.name] for t in members)  # c_proj is the down projection: it joins as its transpose
    expected = fc.abs() / fc.abs().mean() + proj.T.abs() / proj.abs().mean()
    for block in (1, 7, 100, 2**22):
        torch.testing.assert_close(group_affinity(weights, members, block_elements=block), expected)
    # A bf16 model and the same values handed over in fp32 (as read from disk) give the same bits.
    bf16 = {name: w.to(torch.bfloat16) for name, w in weights.items()}
    fp32 = {name: w.float() for name, w in bf16.items()}
    assert torch.equal(group_affinity(bf16, members, block_elements=100), group_affinity(fp32, members, 100))


# ---- clusters.safetensors written by other tools ------------------------------------------------------------------


def plain_clusters(folder, partitions, dtype=torch.int64):
    """`clusters.safetensors` as any other tool writes it: plain `save_file`, no metadata."""
    from safetensors.torch import save_file

    tensors = {}
    for name, p in partitions.items():
        tensors[f"{name}.row_labels"] = p.row_labels.to(dtype).clone()
        tensors[f"{name}.col_labels"] = p.col_labels.to(dtype).clone()
    save_file(tensors, str(folder / CLUSTERS_NAME))


def test_a_file_without_metadata_takes_k_from_the_config_next_to_it(tmp_path):
    # labels use clusters 0..2 only, so the labels alone would say k = 3; the config says 4
    parts = {"a": Partition(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2]), 4)}
    plain_clusters(tmp_path, parts, torch.int32)
    ClusterConfig(n_clusters=4).save_pretrained(tmp_path)
    loaded = load_clusters(tmp_path)
    assert loaded["a"] == parts["a"] and loaded["a"].row_labels.dtype == torch.long


def test_a_file_without_metadata_or_config_takes_k_from_the_labels(tmp_path):
    plain_clusters(tmp_path, {"a": Partition(torch.tensor([0, 1, 2]), torch.tensor([2, 1, 0, 0]), 3)}, torch.uint8)
    assert load_clusters(tmp_path)["a"].n_clusters == 3
    assert load_clusters(tmp_path / CLUSTERS_NAME, n_clusters=5)["a"].n_clusters == 5


def test_measure_reads_a_plain_file(tmp_path):
    from hf_clusterable import measure

    model = tiny_model("gpt2")
    config = ClusterConfig(init="blocks", n_clusters=3)
    expected = measure(model, config)
    config.save_pretrained(tmp_path)
    plain_clusters(tmp_path, expected.partitions)
    report = measure(model, tmp_path)
    assert report.partitions == expected.partitions and report.mean == pytest.approx(expected.mean)


@pytest.mark.parametrize(
    "tensors,message",
    [
        ({"a.row_labels": torch.tensor([0.0, 1.7]), "a.col_labels": torch.tensor([0, 1])}, "integer"),
        ({"a.row_labels": torch.tensor([True, False]), "a.col_labels": torch.tensor([0, 1])}, "integer"),
        ({"a.row_labels": torch.zeros(2, 2, dtype=torch.long), "a.col_labels": torch.tensor([0, 1])}, "1-D"),
        ({"a.row_labels": torch.zeros(0, dtype=torch.long), "a.col_labels": torch.tensor([0, 1])}, "1-D"),
        ({"a.row_labels": torch.tensor([0, 1])}, "lacks a.col_labels"),
        ({"a.row_labels": torch.tensor([0, 1]), "a.col_labels": torch.tensor([0, 1]), "x": torch.tensor([1])}, "'x'"),
        ({}, "holds no"),
    ],
)
def test_malformed_label_tensors_are_refused(tmp_path, tensors, message):
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / CLUSTERS_NAME), metadata={"n_clusters": "2"})
    with pytest.raises(ValueError, match=message) as err:
        load_clusters(tmp_path)
    assert str(tmp_path / CLUSTERS_NAME) in str(err.value)


def test_label_shapes_are_checked_from_the_header_before_any_tensor_is_read(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    model = tiny_model("gpt2")
    targets = find_targets(model)
    big = {f"{t.name}.{side}": torch.zeros(2_000_000, dtype=torch.int8) for t in targets for side in ("row", "col")}
    save_file({f"{k}_labels": v for k, v in big.items()}, str(tmp_path / CLUSTERS_NAME))

    import safetensors

    real = safetensors.safe_open

    class NoReads:
        def __init__(self, *args, **kwargs):
            self.file = real(*args, **kwargs)

        def __enter__(self):
            self.file.__enter__()
            return self

        def __exit__(self, *exc):
            return self.file.__exit__(*exc)

        def __getattr__(self, name):
            if name == "get_tensor":
                pytest.fail("a tensor was read before its shape was checked")
            return getattr(self.file, name)

    monkeypatch.setattr("hf_clusterable.modeling.clusters.safe_open", NoReads)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_clusters(tmp_path, n_clusters=4, targets=targets)


def test_oversized_labels_are_refused_from_the_header(tmp_path):
    from safetensors.torch import save_file

    save_file(
        {"a.row_labels": torch.zeros(2**24 + 1, dtype=torch.int8), "a.col_labels": torch.tensor([0, 1])},
        str(tmp_path / CLUSTERS_NAME),
    )
    with pytest.raises(ValueError, match="more labels than"):
        load_clusters(tmp_path, n_clusters=2)


# ---- random files: partitions or a clear ValueError / TypeError, never another exception, never a hang -------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


DTYPES = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64,
          torch.float32, torch.float16, torch.bool]  # fmt: skip
tensor = st.builds(
    lambda shape, dtype, values: torch.tensor(values, dtype=torch.long).reshape(-1)[: math.prod(shape)]
    .resize_(shape).to(dtype).clone(),
    st.lists(st.integers(min_value=0, max_value=4), min_size=0, max_size=2).map(tuple),
    st.sampled_from(DTYPES),
    st.lists(st.integers(min_value=-3, max_value=9), min_size=16, max_size=16),
)  # fmt: skip
key = st.one_of(
    st.builds(
        lambda n, side: f"{n}.{side}", st.sampled_from(["a", "b.c", ""]), st.sampled_from(["row_labels", "col_labels"])
    ),
    st.text(min_size=1, max_size=6),
)
metadata = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["n_clusters", "format", "x"]),
        st.one_of(st.text(max_size=4), st.integers(-2, 9).map(str)),
        max_size=2,
    ),
)
config = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.builds(lambda k: json.dumps({"n_clusters": k}), st.integers(-1, 6) | st.text(max_size=2)),
)


@settings(
    max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(key, tensor, max_size=4), metadata, config, st.binary(max_size=64), st.booleans())
def test_random_cluster_files_load_or_fail_clearly(tmp_path, tensors, meta, config_text, garbage, use_garbage):
    from safetensors.torch import save_file

    for path in tmp_path.iterdir():
        path.unlink()
    target = tmp_path / CLUSTERS_NAME
    if use_garbage:
        target.write_bytes(garbage)
    else:
        save_file(tensors, str(target), metadata=meta)
    if config_text is not None:
        (tmp_path / "cluster_config.json").write_text(config_text)
    try:
        partitions = load_clusters(tmp_path)
    except (ValueError, TypeError) as err:
        assert str(err).strip(), "an error without a message"
        return
    for p in partitions.values():
        assert isinstance(p, Partition) and p.row_labels.dtype == torch.long


def test_spectral_clusters_of_huge_weights_are_those_of_the_same_weights_scaled_down():
    # |W| ~ 1e23: its squares overflow fp32; the affinity is summed in float64 and scaled before anything is squared
    model, huge = tiny_model("gpt2"), tiny_model("gpt2")
    with torch.no_grad():
        for p in huge.parameters():
            p.mul_(1e25)
    targets = find_targets(model)
    config = ClusterConfig(n_clusters=3)
    assert cluster_model(huge, config, targets) == cluster_model(model, config, targets)
