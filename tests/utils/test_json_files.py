"""Every JSON file the package writes is strict JSON: NaN and infinities ("nothing to measure") are written as null."""

import json
import math

import pytest

from hf_clusterable import ClusterConfig
from hf_clusterable.analysis.analyze import analyze
from hf_clusterable.constants import METRICS_NAME
from hf_clusterable.modeling.measure import MatrixScore
from tests.testing_utils import BLOCKS, make_args, planted_model, planted_task, tiny_model


def strict(path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in {path.name}"))


def test_trainer_metrics_file_writes_null_for_a_nan_score(tmp_path, monkeypatch):
    from hf_clusterable.training.trainer import ClusterableTrainer

    trainer = ClusterableTrainer(
        model=tiny_model("gpt2"), args=make_args(tmp_path), cluster_config=ClusterConfig(init="blocks")
    )

    def nan_scores(model, targets, partitions):
        return [MatrixScore(t.name, t.shape, math.nan, 0.25) for t in targets]

    monkeypatch.setattr("hf_clusterable.training.trainer.score_matrices", nan_scores)
    trainer.save_cluster_files(str(tmp_path))
    metrics = strict(tmp_path / METRICS_NAME)
    assert metrics["mean"] is None and metrics["matrices"][0]["score"] is None


def test_analysis_json_writes_null_where_there_is_nothing_to_measure(tmp_path):
    model = planted_model()
    report = analyze(model, planted_task(), BLOCKS, random_splits=0, max_categories=0, steps=1, per_cluster=False)
    assert math.isnan(report.circuits.mean_fraction)  # no category measured: nothing to average
    report.save(tmp_path, model)
    assert strict(tmp_path / "analysis.json")["circuits"]["mean_fraction"] is None


def test_cluster_config_refuses_to_write_nan():
    config = ClusterConfig()
    config.loss_weight = math.nan  # set after validation, as a careless caller could
    with pytest.raises(ValueError, match="JSON compliant"):
        config.to_json_string()
