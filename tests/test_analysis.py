import json
import math

import pytest
import torch
from datasets import Dataset
from PIL import Image

from hf_clusterable import ClusterConfig, ClusterNetConfig, ClusterNetForImageClassification, cluster_model
from hf_clusterable.analysis import (
    ablation_units,
    analyze,
    circuit_sizes,
    concentration_index,
    cut_test,
    evaluate,
    random_units,
    restored,
    specialisation_index,
    zero_cluster,
)
from hf_clusterable.cli import main
from hf_clusterable.clusters import save_clusters
from hf_clusterable.measure import resolve_clusters
from hf_clusterable.models import modular_addition_model
from hf_clusterable.targets import find_targets, get_weight
from hf_clusterable.tasks import causal_lm_task, classification_task, frequency_categories, modular_addition_task
from tests.testing_utils import random_tokens, tiny_model


BLOCKS = ClusterConfig(init="blocks", n_clusters=4)


def planted_model(aligned: bool = True) -> ClusterNetForImageClassification:
    """4 pixels -> 8 hidden -> 4 classes; class c is pixel c. Aligned: hidden neurons 2c, 2c+1 (cluster c of the
    contiguous blocks) carry class c alone. Misaligned: neuron i carries class i mod 4, so every class is spread
    over two clusters and crosses block boundaries."""
    model = ClusterNetForImageClassification(ClusterNetConfig(image_size=2, hidden_sizes=[8], num_labels=4)).eval()
    carries = [i // 2 for i in range(8)] if aligned else [i % 4 for i in range(8)]
    with torch.no_grad():
        model.hidden[0].weight.zero_()
        model.classifier.weight.zero_()
        model.hidden[0].bias.zero_()
        model.classifier.bias.zero_()
        for neuron, c in enumerate(carries):
            model.hidden[0].weight[neuron, c] = 3.0
            model.classifier.weight[c, neuron] = 3.0
    return model


def planted_task(n: int = 200, noise: float = 0.05):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 4
    pixels = torch.nn.functional.one_hot(labels, 4).float() + noise * torch.rand(n, 4, generator=g)
    return classification_task(Dataset.from_dict({"pixel_values": pixels.view(n, 1, 2, 2), "labels": labels}))


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


def test_planted_specialists_are_found_and_random_splits_are_not():
    model, task = planted_model(aligned=True), planted_task()
    _, targets, partitions = resolve_clusters(model, BLOCKS)
    ab = analyze(model, task, BLOCKS, random_splits=3, max_categories=0).ablation
    damage = torch.tensor(ab.loss_damage)
    assert torch.equal(damage.argmax(0), torch.arange(4))  # cluster c hurts class c
    assert ab.specialisation > 0.95 and ab.concentration > 0.95
    assert max(ab.random_specialisation) < 0.8
    assert cut_test(model, task, targets, partitions).loss == pytest.approx(evaluate(model, task).loss)


def test_entangled_model_is_less_specialised_and_fails_the_cut_test():
    aligned = analyze(planted_model(True), planted_task(), BLOCKS, random_splits=0, max_categories=0)
    spread = analyze(planted_model(False), planted_task(), BLOCKS, random_splits=0, max_categories=0)
    assert spread.ablation.specialisation < aligned.ablation.specialisation - 0.3
    assert aligned.cut_accuracy_drop == 0 and spread.cut_accuracy_drop >= 0.5  # classes 1 and 2 cross blocks
    assert spread.clusterability < aligned.clusterability


def test_circuits_are_small_for_planted_paths_and_model_is_restored():
    model, task = planted_model(), planted_task(noise=0.0)  # other inputs leave logit c at exactly 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _, targets, _ = resolve_clusters(model, BLOCKS)
    circuits = circuit_sizes(model, task, targets, share=0.9, steps=8)
    assert circuits.n_weights == 4 * 8 + 8 * 4
    # class c > 0 needs pixel c -> a hidden neuron -> logit c; class 0 also needs the others (ties answer 0)
    assert max(circuits.fractions[1:]) <= 4 / 64 + 2**-8 < circuits.fractions[0]
    assert 4 / 64 <= circuits.task_fraction <= 0.25
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    lenient = circuit_sizes(model, task, targets, share=0.5, steps=8)
    assert lenient.task_fraction <= circuits.task_fraction


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


def test_frequency_buckets_split_target_mass():
    targets = torch.tensor([0] * 50 + [1] * 20 + [2] * 10 + [3] * 10 + [4] * 5 + [5] * 5)
    table, names = frequency_categories(targets, n_buckets=4)
    # token 0 alone holds half the mass, so the 25-50% bucket is empty and dropped
    assert table.tolist() == [0, 1, 1, 2, 2, 2]
    assert len(names) == 3 and "50% of targets" in names[0] and "30% of targets" in names[1]


def test_causal_lm_task_scores_every_real_token_once():
    rows = [list(range(1, 9)), [5, 6, 7], [9, 9, 9, 9, 9, 2]]
    task = causal_lm_task(rows, batch_size=2)
    model = tiny_model("gpt2")
    result = evaluate(model, task)
    assert result.n_examples == 7 + 2 + 5  # pads are never predictions
    assert sum(result.category_counts) == result.n_examples


def test_token_type_categories_from_a_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "Ġthe": 1, "cat": 2, "Ġ42": 3, ".": 4, "▁dog": 5, "Ċ": 6}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="[PAD]")), pad_token="[PAD]"
    )
    task = causal_lm_task([[1, 2, 3, 4, 5], [1, 5, 4]], tokenizer=tokenizer, categories="type")
    kinds = {name: j for j, name in enumerate(task.category_names)}
    assert task.category_names == ["word start", "word continuation", "number", "punctuation"]  # only those predicted
    assert task.category_of(torch.tensor([1, 2, 3, 4, 5])).tolist() == [
        kinds["word start"],
        kinds["word continuation"],
        kinds["number"],
        kinds["punctuation"],
        kinds["word start"],
    ]
    with pytest.raises(ValueError, match="need the model's tokenizer"):
        causal_lm_task([[1, 2]], categories="type")


def test_modular_addition_task_has_one_category_per_answer():
    task = modular_addition_task(7, seed=0)
    model = modular_addition_model(p=7, d_model=16, n_heads=2, d_mlp=16)
    result = evaluate(model, task)
    assert task.n_categories == 7 and result.n_examples == 49 - round(0.3 * 49)
    assert task.category_of(torch.tensor([7, 3, 100])).tolist() == [-1, 3, -1]  # "=" and unknown ids: no category


def test_dataset_without_labels_is_refused():
    with pytest.raises(ValueError, match="no 'labels' column"):
        classification_task(Dataset.from_dict({"pixel_values": [[0.0] * 4]}))
    with pytest.raises(ValueError, match="neither 'input_ids' nor"):
        causal_lm_task(Dataset.from_dict({"foo": [1]}))


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

    from hf_clusterable.data import accuracy, digits
    from hf_clusterable.trainer import ClusterableTrainer

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
