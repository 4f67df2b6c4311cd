"""Cluster ablation: which neurons a cluster is, zeroing and restoring them, the specialisation index."""

import math

import pytest
import torch

from hf_clusterable import cluster_model
from hf_clusterable.analysis.ablation import (
    ablation_units,
    concentration_index,
    random_units,
    restored,
    specialisation_index,
    zero_cluster,
)
from hf_clusterable.modeling.targets import find_targets, get_weight
from tests.testing_utils import BLOCKS, planted_model, tiny_model


def test_specialisation_index_separates_specialisation_from_importance():
    diagonal = torch.eye(4).repeat_interleave(3, dim=1)  # 12 categories, 3 per cluster
    assert specialisation_index(diagonal) == pytest.approx(1.0)
    assert concentration_index(diagonal) == pytest.approx(1.0)
    dominant = torch.tensor([10.0, 1.0, 1.0, 1.0])[:, None] * torch.rand(1, 12) + 0.0  # rank 1: importance only
    assert specialisation_index(dominant) == pytest.approx(0.0, abs=1e-9)
    assert concentration_index(dominant) > 0.6
    assert specialisation_index(torch.ones(4, 12)) == pytest.approx(0.0, abs=1e-9)
    assert concentration_index(torch.ones(4, 12)) == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(specialisation_index(-torch.ones(4, 12)))  # ablations that only help are no damage
    halves = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    assert specialisation_index(halves) == pytest.approx(1.0)


def test_coupled_ablation_zeroes_hidden_neurons_and_restores():
    model = tiny_model("gpt2")
    with torch.no_grad():
        for block in model.transformer.h:
            block.mlp.c_fc.bias.normal_()  # GPT-2 starts with zero biases, which would hide a bias left on
    targets = find_targets(model, n_clusters=4)
    partitions = cluster_model(model, BLOCKS, targets)
    units = ablation_units(model, targets, partitions)
    assert {(u.module.rsplit(".", 1)[-1], u.axis) for u in units} == {("c_fc", 0), ("c_proj", 1)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fc, proj = model.transformer.h[0].mlp.c_fc, model.transformer.h[0].mlp.c_proj
    hidden = partitions["transformer.h.0.mlp.c_fc"].row_labels == 2
    with restored(model, [u.module for u in units]):
        zero_cluster(model, units, 2)
        assert get_weight(fc)[hidden].abs().sum() == 0 and fc.bias[hidden].abs().sum() == 0
        assert get_weight(proj)[:, hidden].abs().sum() == 0
        assert get_weight(fc)[~hidden].abs().min() > 0 and get_weight(proj)[:, ~hidden].abs().min() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    shuffled = random_units(units, seed=0)
    by_layer = {}
    for u in shuffled:
        by_layer.setdefault(u.layer, []).append(u.labels)
    assert all(torch.equal(a, b) for a, b in by_layer.values())  # up and down of one MLP share the split
    assert torch.equal(torch.bincount(shuffled[0].labels), torch.bincount(units[0].labels))


def test_head_is_never_ablated():
    model = planted_model()
    targets = find_targets(model, n_clusters=4)  # hidden.0 and classifier
    names = {u.module for u in ablation_units(model, targets, cluster_model(model, BLOCKS, targets))}
    assert names == {"hidden.0"}
    only_head = find_targets(model, ["classifier"], n_clusters=4)
    with pytest.raises(ValueError, match="output head"):
        ablation_units(model, only_head, cluster_model(model, BLOCKS, only_head))
