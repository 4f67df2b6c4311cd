"""`analyze` on a model at chance: a warning on the command line and in the report, never sizes taken at face value."""

import json

from hf_clusterable import ClusterConfig, measure, save_clusters
from hf_clusterable.analysis.analyze import analyze
from hf_clusterable.analysis.report import majority_accuracy
from hf_clusterable.cli.main import main
from hf_clusterable.examples.models import modular_addition_model
from hf_clusterable.examples.modular_addition import modular_addition_task, save_modular_addition_split
from tests.testing_utils import BLOCKS, planted_model, planted_task


FAST = dict(random_splits=0, max_categories=0, steps=1, per_cluster=False)


def test_chance_is_always_answering_the_most_frequent_target():
    task = planted_task(n=10)  # labels 0,1,2,3,0,1,2,3,0,1: the most frequent makes up 3 of 10
    assert majority_accuracy(planted_model(), task) == 0.3


def test_an_untrained_model_is_flagged_and_a_trained_one_is_not():
    untrained = analyze(modular_addition_model(p=7, d_model=16, d_mlp=16), modular_addition_task(7), BLOCKS, **FAST)
    assert untrained.at_chance and untrained.to_dict()["at_chance"] is True
    assert untrained.chance_accuracy >= 1 / 7
    markdown = untrained.to_markdown()
    assert "> **Warning:** The model is at chance on this data" in markdown
    assert untrained.summary().startswith("AT CHANCE")
    trained = analyze(planted_model(), planted_task(), BLOCKS, **FAST)
    assert not trained.at_chance and trained.chance_warning() is None
    assert "Warning" not in trained.to_markdown() and "\n\n## Cut test" in trained.to_markdown()


def test_cli_warns_in_its_output_and_in_the_report(tmp_path, capsys):
    checkpoint = tmp_path / "ma"
    model = modular_addition_model(p=7, d_model=16, d_mlp=16)
    model.save_pretrained(checkpoint)
    ClusterConfig(init="blocks").save_pretrained(checkpoint)
    save_clusters(checkpoint, measure(model, BLOCKS).partitions)
    save_modular_addition_split(checkpoint, p=7, train_fraction=0.5, seed=0)
    fast = ["--random-splits", "0", "--circuit-categories", "0", "--bisection-steps", "1", "--no-per-cluster"]
    assert main(["analyze", str(checkpoint), "--task", "modular-addition", "--quiet", *fast]) == 0
    captured = capsys.readouterr()
    assert "hf-clusterable: warning: the model is at chance on this data" in captured.err
    assert captured.out.startswith("AT CHANCE")
    assert "at chance" in (checkpoint / "analysis" / "report.md").read_text()
    assert json.loads((checkpoint / "analysis" / "analysis.json").read_text())["at_chance"] is True


def test_partitions_made_by_hand_are_analysed_as_given():
    from hf_clusterable import Partition

    model = planted_model()
    mine = {"hidden.0": Partition.blocks(8, 4, 4), "classifier": Partition.blocks(4, 8, 4)}
    report = analyze(model, planted_task(), mine, **FAST)
    assert report.partitions == mine and report.n_clusters == 4
    assert report.cut_accuracy_drop == 0  # the planted model is block-diagonal under these blocks
