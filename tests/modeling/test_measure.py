import json

import pytest
import torch

from hf_clusterable import ClusterConfig, Partition, clusterability, measure, save_clusters
from hf_clusterable.modeling.targets import get_weight
from tests.testing_utils import tiny_model


def test_default_measure_reports_scores_against_baselines():
    model = tiny_model("llama")
    report = measure(model)
    assert report.n_clusters == 4 and len(report.rows) == 6
    modules = dict(model.named_modules())
    for row in report.rows:
        direct = float(clusterability(get_weight(modules[row.name]), report.partitions[row.name]))
        assert row.score == pytest.approx(direct)
        assert 0.0 < row.baseline < 1.0
        assert row.normalised == pytest.approx((row.score - row.baseline) / (1 - row.baseline))
    assert report.mean == pytest.approx(sum(r.score for r in report.rows) / 6)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["matrices"][0]["name"] == "model.layers.0.mlp.gate_proj"
    table = report.to_markdown()
    assert "| model.layers.1.mlp.down_proj | 32x96 |" in table and "**mean**" in table


def test_blocks_on_random_init_score_about_the_baseline():
    report = measure(tiny_model("gpt2", n_embd=64, n_inner=256), ClusterConfig(init="blocks"))
    assert report.baseline == pytest.approx(0.25)
    assert report.mean == pytest.approx(0.25, abs=0.03)


def test_checkpoint_folder_uses_saved_partitions(tmp_path):
    model = tiny_model("gpt2")
    config = ClusterConfig(init="blocks", model_type="gpt2")
    first = measure(model, config)
    # plant a block-diagonal c_fc in layer 0 and save deliberately different clusters for it
    name = "transformer.h.0.mlp.c_fc"
    parts = dict(first.partitions)
    custom = Partition(torch.arange(96) % 4, torch.arange(32) % 4, 4)
    parts[name] = custom
    parts["transformer.h.0.mlp.c_proj"] = custom.T
    config.save_pretrained(tmp_path)
    save_clusters(tmp_path, parts)
    with torch.no_grad():
        w = dict(model.named_modules())[name].weight  # Conv1D: (in, out)
        w.mul_((custom.col_labels[:, None] == custom.row_labels[None, :]).float())
    report = measure(model, tmp_path)
    assert report.partitions[name] == custom
    assert next(r for r in report.rows if r.name == name).score == pytest.approx(1.0)


def test_model_type_mismatch_is_caught(tmp_path):
    ClusterConfig(model_type="llama").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="written for model_type 'llama'"):
        measure(tiny_model("gpt2"), tmp_path)


def test_saved_partitions_that_do_not_fit_are_caught(tmp_path):
    ClusterConfig(init="blocks").save_pretrained(tmp_path)
    save_clusters(tmp_path, measure(tiny_model("gpt2"), ClusterConfig(init="blocks")).partitions)
    with pytest.raises(ValueError, match="does not match this model"):
        measure(tiny_model("gpt2", n_inner=64), tmp_path)


@pytest.mark.parametrize("model", [None, 3, torch.zeros(3, 3)])
def test_something_that_is_not_a_model_is_named(model):
    with pytest.raises(TypeError, match="measure needs a torch.nn.Module"):
        measure(model)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("clusters", ["spectral", "blocks", "saved"])
def test_non_finite_weights_name_the_matrix(tmp_path, bad, clusters):
    model = tiny_model("gpt2")
    config = ClusterConfig(init="spectral" if clusters == "spectral" else "blocks")
    if clusters == "saved":
        config.save_pretrained(tmp_path)
        save_clusters(tmp_path, measure(model, config).partitions)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight[3, 2] = bad
    with pytest.raises(ValueError, match=r"transformer\.h\.1\.mlp\.c_proj has NaN or Inf weights"):
        measure(model, tmp_path if clusters == "saved" else config)


def test_a_dict_of_partitions_is_measured_as_given():
    model = tiny_model("gpt2")
    mine = {
        "transformer.h.0.mlp.c_fc": Partition(torch.arange(96) % 3, torch.arange(32) % 3, 3),
        "transformer.h.1.attn.c_attn": Partition.blocks(96, 32, 3),
    }
    report = measure(model, mine)
    assert report.n_clusters == 3 and [r.name for r in report.rows] == list(mine)
    assert report.partitions == mine
    modules = dict(model.named_modules())
    direct = float(clusterability(get_weight(modules["transformer.h.0.mlp.c_fc"]), mine["transformer.h.0.mlp.c_fc"]))
    assert report.rows[0].score == pytest.approx(direct)


@pytest.mark.parametrize(
    "partitions,error,match",
    [
        ({}, ValueError, "no partitions"),
        ({"transformer.h.0.mlp.c_fc": "blocks"}, TypeError, "Partition"),
        ({"transformer.h.0.mlp.c_fc": Partition.blocks(32, 96, 3)}, ValueError, "shape mismatch"),
        (
            {
                "transformer.h.0.mlp.c_fc": Partition.blocks(96, 32, 3),
                "transformer.h.0.mlp.c_proj": Partition.blocks(32, 96, 2),
            },
            ValueError,
            "one n_clusters",
        ),
    ],
)
def test_bad_partition_dicts_are_named(partitions, error, match):
    with pytest.raises(error, match=match):
        measure(tiny_model("gpt2"), partitions)


def test_a_config_with_a_pathological_regex_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr("hf_clusterable.modeling.targets.REGEX_SECONDS", 0.3)
    ClusterConfig(targets="(.|..)*[A-Z]").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="took more than"):
        measure(tiny_model("llama"), tmp_path)
