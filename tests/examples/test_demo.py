"""`hf-clusterable demo`: the offline main job. A short run here; the full one (minutes) is marked slow."""

import io
import json

import pytest
from huggingface_hub import ModelCard
from PIL import Image
from transformers import AutoModelForCausalLM

from hf_clusterable import ClusterConfig, load_clusters
from hf_clusterable.cli.main import main
from hf_clusterable.constants import CLUSTERS_NAME, CONFIG_NAME, HEATMAP_NAME
from hf_clusterable.examples.demo import DEMO_RESULTS_NAME, run_demo
from hf_clusterable.examples.modular_addition import TASK_NAME, load_modular_addition_split
from hf_clusterable.modeling.plot import panel_weights, render_blocks


def test_short_demo_saves_everything_and_reports(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--max-steps", "30", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    for name in ("model.safetensors", "config.json", CONFIG_NAME, CLUSTERS_NAME, "README.md", HEATMAP_NAME):
        assert (out / name).is_file(), name
    assert "test accuracy" in printed and "clusterability" in printed and "lambda = 0" in printed
    results = json.loads((out / DEMO_RESULTS_NAME).read_text())
    ours, reference = results["metrics"], results["reference_metrics"]
    assert ours["eval_clusterability"] > reference["eval_clusterability"] + 0.3  # the loss works within 30 steps
    assert abs(reference["eval_clusterability"] - reference["eval_clusterability_baseline"]) < 0.1
    assert ClusterConfig.from_pretrained(out).init == "blocks" and load_clusters(out)
    card = ModelCard.load(out / "README.md")
    assert card.data.clusterability["mean"] == pytest.approx(ours["eval_clusterability"], abs=1e-3)
    assert HEATMAP_NAME in card.text and "without" in card.text.lower()
    # the heatmap shows the lambda = 0 reference beside each clustered matrix: twice the panels of the model alone
    model = AutoModelForCausalLM.from_pretrained(out)
    alone = Image.open(io.BytesIO(render_blocks(panel_weights(model, load_clusters(out)), load_clusters(out))))
    assert Image.open(out / HEATMAP_NAME).size[0] > 1.5 * alone.size[0]


def test_demo_records_its_data_split_for_analyze(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--max-steps", "10", "--no-reference", "--seed", "2"]) == 0
    assert json.loads((out / TASK_NAME).read_text()) == {
        "task": "modular_addition",
        "p": 113,
        "train_fraction": 0.3,
        "seed": 2,
    }
    assert load_modular_addition_split(out) == {"p": 113, "train_fraction": 0.3, "seed": 2}


def test_demo_refuses_a_non_empty_output_dir(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["demo", "--output-dir", str(out), "--max-steps", "10", "--no-reference"]) == 2
    err = capsys.readouterr().err
    assert f"--output-dir {out} is not empty; pass --overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--loss-weight", "-1"], "--loss-weight must be finite and >= 0"),
        (["--loss-weight", "nan"], "--loss-weight must be finite"),
        (["--max-steps", "0"], "--max-steps must be an integer >= 10, got 0"),
        (["--seed", "-2"], "--seed must be an integer >= 0"),
        (["--threads", "0"], "--threads must be an integer >= 1"),
    ],
)
def test_bad_demo_arguments_fail_before_anything_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_demo_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    assert main(["demo", "--output-dir", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_python_callers_see_parameter_names(tmp_path):
    with pytest.raises(ValueError, match="max_steps must be an integer >= 10"):
        run_demo(str(tmp_path / "demo"), max_steps=5)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="not empty; pass overwrite=True"):
        run_demo(str(tmp_path / "full"))


def test_overwrite_replaces_the_previous_demo_and_its_analysis_only(tmp_path):
    out = tmp_path / "demo"
    (out / "analysis").mkdir(parents=True)
    for name in ("report.md", "analysis.json", "blocks.png"):  # what `analyze` wrote about the previous model
        (out / "analysis" / name).write_text("old")
    (out / "stale_only_the_old_demo_wrote.bin").write_text("old")
    (out / "keep.txt").write_text("mine")  # the user's
    (out / DEMO_RESULTS_NAME).write_text(json.dumps({"files": ["stale_only_the_old_demo_wrote.bin", "../keep.txt"]}))
    assert main(["demo", "--output-dir", str(out), "--max-steps", "10", "--no-reference", "--overwrite"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "analysis" not in names and "stale_only_the_old_demo_wrote.bin" not in names
    assert (out / "keep.txt").read_text() == "mine"
    recorded = json.loads((out / DEMO_RESULTS_NAME).read_text())["files"]
    assert "keep.txt" not in recorded and {CLUSTERS_NAME, "model.safetensors", DEMO_RESULTS_NAME} <= set(recorded)
    assert set(recorded) == names - {"keep.txt"}


@pytest.mark.slow
def test_full_demo_groks_with_block_structure(tmp_path, capsys):
    """The README's first command, as a user runs it: 5000 steps with lambda = 20 and the lambda = 0 reference.

    Its wall time is measured and reported (README), never asserted: timing depends on the machine.
    """
    assert main(["demo", "--output-dir", str(tmp_path / "demo")]) == 0
    results = json.loads((tmp_path / "demo" / DEMO_RESULTS_NAME).read_text())
    ours, reference = results["metrics"], results["reference_metrics"]
    assert ours["eval_accuracy"] >= 0.99 and reference["eval_accuracy"] >= 0.99
    assert ours["eval_clusterability"] >= 0.95 and reference["eval_clusterability"] < 0.4
