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
