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
