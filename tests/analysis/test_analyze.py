"""`analyze` and `hf-clusterable analyze`: the whole analysis on planted, tiny and PEFT models, and its CLI."""

import json

import pytest
import torch
from PIL import Image

from hf_clusterable import ClusterConfig, ClusterNetConfig, ClusterNetForImageClassification, cluster_model
from hf_clusterable.analysis.ablation import cut_test, evaluate_task
from hf_clusterable.analysis.analyze import analyze
from hf_clusterable.analysis.tasks import causal_lm_task
from hf_clusterable.cli.main import main
from hf_clusterable.examples.models import modular_addition_model
from hf_clusterable.examples.modular_addition import (
    TASK_NAME,
    load_modular_addition_split,
    modular_addition_task,
    save_modular_addition_split,
)
from hf_clusterable.modeling.clusters import save_clusters
from hf_clusterable.modeling.measure import resolve_clusters
from hf_clusterable.modeling.targets import find_targets
from tests.testing_utils import BLOCKS, planted_model, planted_task, random_tokens, tiny_model


def test_planted_specialists_are_found_and_random_splits_are_not():
    model, task = planted_model(aligned=True), planted_task()
    _, targets, partitions = resolve_clusters(model, BLOCKS)
    ab = analyze(model, task, BLOCKS, random_splits=3, max_categories=0).ablation
    damage = torch.tensor(ab.loss_damage)
    assert torch.equal(damage.argmax(0), torch.arange(4))  # cluster c hurts class c
    assert ab.specialisation > 0.95 and ab.concentration > 0.95
    assert max(ab.random_specialisation) < 0.8
    assert cut_test(model, task, targets, partitions).loss == pytest.approx(evaluate_task(model, task).loss)


def test_entangled_model_is_less_specialised_and_fails_the_cut_test():
    aligned = analyze(planted_model(True), planted_task(), BLOCKS, random_splits=0, max_categories=0)
    spread = analyze(planted_model(False), planted_task(), BLOCKS, random_splits=0, max_categories=0)
    assert spread.ablation.specialisation < aligned.ablation.specialisation - 0.3
    assert aligned.cut_accuracy_drop == 0 and spread.cut_accuracy_drop >= 0.5  # classes 1 and 2 cross blocks
    assert spread.clusterability < aligned.clusterability


def test_peft_model_is_analysed_through_a_merged_copy():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_model("gpt2"), LoraConfig(r=2, target_modules=["c_fc"], fan_in_fan_out=True, init_lora_weights=False)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = analyze(model, causal_lm_task(random_tokens(8, 12).tolist()), BLOCKS, random_splits=1, max_categories=1)
    assert len(report.ablation.loss_damage) == 4
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---- command line ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    from transformers import TrainingArguments

    from hf_clusterable.examples.datasets import digits
    from hf_clusterable.training.metrics import accuracy
    from hf_clusterable.training.trainer import ClusterableTrainer

    path = tmp_path_factory.mktemp("digits")
    torch.manual_seed(0)
    model = ClusterNetForImageClassification(ClusterNetConfig(image_size=8, hidden_sizes=[32, 32]))
    args = TrainingArguments(
        output_dir=str(path), max_steps=60, learning_rate=1e-2, per_device_train_batch_size=64, report_to="none",
        save_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    data = digits()
    trainer = ClusterableTrainer(
        model=model, args=args, train_dataset=data["train"], compute_metrics=accuracy, cluster_config=BLOCKS
    )
    trainer.train()
    trainer.save_model(str(path))
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hf-clusterable: error:") and "Traceback" not in "".join(err)
    return err[-1]


def test_cli_digits_writes_report_json_and_plots(digits_checkpoint, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["analyze", str(digits_checkpoint), "--task", "digits", "--output-dir", str(out), "--quiet"]) == 0
    assert "specialisation" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    for section in ("## Cut test", "## Cluster ablation", "## Effective circuit size", "blocks.png", "damage.png"):
        assert section in report
    data = json.loads((out / "analysis.json").read_text())
    assert data["full"]["accuracy"] > 0.2 and len(data["ablation"]["loss_damage"]) == 4
    assert len(data["circuits"]["fractions"]) == len(data["circuits"]["categories"]) > 0
    for png in ("blocks.png", "damage.png", "circuits.png"):
        assert Image.open(out / png).size[0] > 200


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--task", "mnist"], "unknown task 'mnist'"),
        (["--task", "causal-lm"], "needs --dataset"),
        (["--task", "digits", "--share", "0"], "--share must be in (0, 1]"),
    ],
)
def test_cli_bad_arguments_fail_in_one_line_and_write_nothing(digits_checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "report"
    assert main(["analyze", str(digits_checkpoint), "--output-dir", str(out), "--quiet", *extra]) == 2
    assert message in _one_line_error(capsys)
    assert not out.exists()


def test_cli_checkpoint_without_clusters(tmp_path, capsys):
    tiny_model("gpt2").save_pretrained(tmp_path / "plain")
    data = tmp_path / "tokens.jsonl"
    data.write_text(json.dumps({"input_ids": list(range(10))}) + "\n")
    argv = ["analyze", str(tmp_path / "plain"), "--task", "causal-lm", "--dataset", str(data), "--quiet"]
    assert main(argv) == 2
    assert "has no cluster_config.json" in _one_line_error(capsys)
    assert not (tmp_path / "plain" / "analysis").exists()


def test_cli_dataset_without_labels(digits_checkpoint, tmp_path, capsys):
    data = tmp_path / "unlabelled.jsonl"
    data.write_text("\n".join(json.dumps({"pixel_values": [[[0.5] * 8] * 8]}) for _ in range(3)) + "\n")
    out = tmp_path / "report"
    argv = ["analyze", str(digits_checkpoint), "--task", "digits", "--dataset", str(data), "--output-dir", str(out)]
    assert main(argv) == 2
    assert "no 'labels' column" in _one_line_error(capsys)
    assert not out.exists()


def test_cli_causal_lm_with_token_dataset(tmp_path, capsys):
    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path / "lm")
    ClusterConfig(init="blocks", n_clusters=4, model_type="gpt2").save_pretrained(tmp_path / "lm")
    save_clusters(tmp_path / "lm", cluster_model(model, BLOCKS, find_targets(model, n_clusters=4)))
    data = tmp_path / "tokens.jsonl"
    data.write_text("\n".join(json.dumps({"input_ids": r}) for r in random_tokens(12, 16).tolist()) + "\n")
    argv = ["analyze", str(tmp_path / "lm"), "--task", "causal-lm", "--dataset", str(data), "--quiet"]
    assert main(argv) == 0
    report = (tmp_path / "lm" / "analysis" / "report.md").read_text()
    assert "causal-lm" in report and "freq1" in report


def _modular_checkpoint(path):
    model = modular_addition_model(p=7, d_model=16, n_heads=2, d_mlp=16)
    model.save_pretrained(path)
    ClusterConfig(init="blocks", n_clusters=4, model_type="gpt2").save_pretrained(path)
    save_clusters(path, cluster_model(model, BLOCKS, find_targets(model, n_clusters=4)))
    return model.eval()


def test_cli_modular_addition_rebuilds_the_split_recorded_in_task_json(tmp_path, capsys):
    checkpoint = tmp_path / "ma"
    model = _modular_checkpoint(checkpoint)
    save_modular_addition_split(checkpoint, p=7, train_fraction=0.5, seed=3)
    fast = ["--quiet", "--random-splits", "0", "--circuit-categories", "0", "--bisection-steps", "1"]

    def full(out: str, *extra: str) -> tuple[dict, str]:
        argv = ["analyze", str(checkpoint), "--task", "modular-addition", "--output-dir", str(tmp_path / out)]
        assert main([*argv, *fast, *extra]) == 0
        return json.loads((tmp_path / out / "analysis.json").read_text())["full"], capsys.readouterr().err

    def held_out_loss(**split) -> float:
        return evaluate_task(model, modular_addition_task(7, **split)).loss

    recorded, err = full("recorded")
    assert recorded["n_examples"] == 49 - round(0.5 * 49)  # train_fraction from task.json, not the default 0.3
    assert recorded["loss"] == pytest.approx(held_out_loss(train_fraction=0.5, seed=3))
    assert "task.json" in err and "seed 3" in err and "--data-seed" not in err  # no seed warning
    explicit, err = full("explicit", "--data-seed", "3")
    assert explicit == recorded and "--data-seed" not in err
    other, err = full("other", "--data-seed", "0")  # an explicit seed wins, with a warning
    assert other["loss"] == pytest.approx(held_out_loss(train_fraction=0.5, seed=0))
    assert "warning: --data-seed 0 is not the seed 3 in task.json" in err

    (checkpoint / TASK_NAME).unlink()  # older checkpoints: p from the vocabulary, the default fraction and seed 0
    unrecorded, err = full("unrecorded")
    assert unrecorded["n_examples"] == 49 - round(0.3 * 49) and "task.json" not in err
    assert unrecorded["loss"] == pytest.approx(held_out_loss(seed=0))


def test_cli_malformed_task_json_fails_in_one_line(tmp_path, capsys):
    checkpoint = tmp_path / "ma"
    _modular_checkpoint(checkpoint)
    (checkpoint / TASK_NAME).write_text(json.dumps({"task": "modular_addition", "p": 7, "seed": "3"}))
    assert main(["analyze", str(checkpoint), "--task", "modular-addition", "--quiet"]) == 2
    assert "task.json needs an integer p" in _one_line_error(capsys)
    assert load_modular_addition_split(tmp_path) is None
