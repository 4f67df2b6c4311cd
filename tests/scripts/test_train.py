"""The recipe entry point: argument parsing from YAML + flags, data preparation, and refusing bad input early."""

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict
from PIL import Image as PILImage
from transformers import PreTrainedTokenizerFast

from hf_clusterable.cli.main import main as cli_main
from hf_clusterable.constants import CLUSTERS_NAME
from hf_clusterable.examples.modular_addition import load_modular_addition_split
from hf_clusterable.scripts.train import prepare_model
from hf_clusterable.scripts.train_args import ModelArguments, parse_args
from hf_clusterable.training.data import (
    DataCollatorForCausalLM,
    held_out_splits,
    image_transform,
    tokenize_for_causal_lm,
)
from tests.testing_utils import RECIPES, requires_gguf, tiny_model


MODULAR = str(RECIPES / "transformer-1l/modular-addition/config_full.yaml")


def write_recipe(tmp_path: Path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_recipe_values_are_defaults_and_flags_override_them(tmp_path):
    script, model, cluster, training = parse_args(
        ["--config", MODULAR, "--output_dir", str(tmp_path), "--cluster_loss_weight", "40", "--no_cluster_coupled"]
    )
    assert script.task == "modular_addition" and script.modulus == 113
    assert model.model_type == "gpt2" and model.config_overrides["n_layer"] == 1
    assert training.learning_rate == 1e-3 and training.lr_scheduler_kwargs == {"num_decay_steps": 1000}
    assert training.output_dir == str(tmp_path)
    config = cluster.to_cluster_config(training.seed)
    assert config.loss_weight == 40.0 and config.init == "blocks" and config.coupled is False


def test_cluster_flags_build_a_cluster_config(tmp_path):
    *_, cluster, training = parse_args(
        ["--config", MODULAR, "--cluster_targets", "mlp.c_fc", "mlp.c_proj", "--n_clusters", "8", "--seed", "3"]
    )
    config = cluster.to_cluster_config(training.seed)
    assert config.targets == ["mlp.c_fc", "mlp.c_proj"] and config.n_clusters == 8 and config.seed == 3
    *_, cluster, training = parse_args(["--config", MODULAR, "--cluster_target_regex", r"h\.0\.mlp\.c_fc"])
    assert cluster.to_cluster_config(0).targets == r"h\.0\.mlp\.c_fc"
    *_, cluster, _ = parse_args(["--config", MODULAR, "--cluster_targets", "a", "--cluster_target_regex", "b"])
    with pytest.raises(ValueError, match="either cluster_targets or cluster_target_regex"):
        cluster.to_cluster_config(0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_name_or_path: gpt2\ntorch_dtype: bfloat16\n", r"torch_dtype -> dtype"),
        ("model_name_or_path: gpt2\noverwrite_output_dir: true\n", r"overwrite_output_dir -> overwrite"),
        ("model_name_or_path: gpt2\nwarmup_ratio: 0.1\n", r"warmup_ratio -> warmup_steps"),
        ("- a list\n", "must be a mapping"),
        ("model_name_or_path: gpt2\nmodel_type: gpt2\ndataset_name: x\n", "exactly one of model_name_or_path"),
        ("model_type: gpt2\n", "needs data"),
        ("model_type: gpt2\ntask: regression\n", "task must be one of"),
        ("model_type: gpt2\ntask: modular_addition\nconfig_overrides: '{bad'\n", "config_overrides must be a JSON"),
        ("model_type: gpt2\ntask: modular_addition\ntrainer: dpo\n", "trainer must be one of default, sft"),
        ("model_type: gpt2\ntask: modular_addition\ntrainer: sft\n", "trainer sft fine-tunes language models"),
        ("model_type: gpt2\ntask: modular_addition\nchat_template_path: x.jinja\n", "used by trainer sft only"),
        ("model_type: gpt2\ndataset_name: x\ntrainer: sft\nchat_template_path: no.jinja\n", "no such .jinja"),
    ],
)
def test_bad_recipes_fail_with_one_clear_line(tmp_path, capsys, text, message):
    out = tmp_path / "out"
    assert cli_main(["train", "--config", write_recipe(tmp_path, text), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hf-clusterable: error:")
    assert re.search(message, err[0]), err[0]
    assert not out.exists()


def test_missing_recipe_and_missing_files_fail_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli_main(["train", "--config", str(tmp_path / "nope.yaml"), "--output_dir", str(out)]) == 2
    assert "no such recipe file" in capsys.readouterr().err
    recipe = write_recipe(tmp_path, "model_type: gpt2\ntrain_file: /nonexistent/train.txt\n")
    assert cli_main(["train", "--config", recipe, "--output_dir", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli_main(["train", "--config", MODULAR, "--output_dir", str(out), "--n_clusters", "1"]) == 2
    assert "n_clusters must be an integer >= 2" in capsys.readouterr().err
    assert not out.exists()


def test_a_non_empty_output_dir_without_checkpoint_is_not_clobbered(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    flags = ["train", "--config", MODULAR, "--output_dir", str(out), "--max_steps", "10", "--disable_tqdm", "true"]
    assert cli_main(flags) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert cli_main([*flags, "--overwrite", "--eval_steps", "5"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()


def test_modular_addition_run_records_its_split_and_analyze_uses_it(tmp_path, capsys):
    out = tmp_path / "out"
    flags = ["train", "--config", MODULAR, "--output_dir", str(out), "--max_steps", "2", "--disable_tqdm", "true"]
    assert cli_main([*flags, "--train_fraction", "0.5", "--seed", "5", "--max_train_samples", "64"]) == 0
    assert load_modular_addition_split(out) == {"p": 113, "train_fraction": 0.5, "seed": 5}
    fast = ["--quiet", "--random-splits", "0", "--circuit-categories", "0", "--bisection-steps", "1"]
    assert cli_main(["analyze", str(out), "--task", "modular-addition", *fast]) == 0
    assert "train fraction 0.5, seed 5" in capsys.readouterr().err
    report = json.loads((out / "analysis" / "analysis.json").read_text())
    assert report["full"]["n_examples"] == 113 * 113 - round(0.5 * 113 * 113)


def test_train_help_lists_every_argument_group(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "-h"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--config", "--task", "--model_name_or_path", "--cluster_loss_weight", "--learning_rate", "--dtype"):
        assert flag in text


def test_held_out_split_is_never_the_training_split():
    data = Dataset.from_dict({"text": [f"doc {i}" for i in range(100)]})
    train, held, name = held_out_splits(DatasetDict({"train": data}), "train", None, 0.1, seed=0)
    assert len(held) == 10 and len(train) == 90 and not set(held["text"]) & set(train["text"])
    assert name.startswith("train[")
    both = DatasetDict({"train": data, "test": data.select(range(5)), "validation": data.select(range(7))})
    assert held_out_splits(both, "train", None, 0.1, 0)[2] == "validation"
    assert held_out_splits(both, "train", "test", 0.1, 0)[2] == "test"
    with pytest.raises(ValueError, match="is the training split"):
        held_out_splits(both, "train", "train", 0.1, 0)
    with pytest.raises(ValueError, match="no split 'dev'"):
        held_out_splits(both, "train", "dev", 0.1, 0)
    with pytest.raises(ValueError, match="validation_fraction"):
        held_out_splits(DatasetDict({"train": data}), "train", None, 0.0, 0)


def _tokenizer(tiny_models):
    return PreTrainedTokenizerFast.from_pretrained(tiny_models["gpt2"])


def test_packing_makes_full_blocks_with_eos_between_documents(tiny_models):
    tok = _tokenizer(tiny_models)
    docs = ["The first document is here.", "", "  ", "A second, longer document follows it, with more words."]
    packed = tokenize_for_causal_lm(Dataset.from_dict({"text": docs}), tok, "text", 8, packing=True)
    ids = [tok(d)["input_ids"] for d in docs if d.strip()]
    stream = ids[0] + [tok.eos_token_id] + ids[1] + [tok.eos_token_id]
    assert len(packed) == len(stream) // 8
    assert all(len(r) == 8 for r in packed["input_ids"]) and packed["labels"] == packed["input_ids"]
    assert sum(packed["input_ids"], []) == stream[: 8 * len(packed)]


def test_padding_is_masked_but_eos_is_trained(tiny_models):
    tok = _tokenizer(tiny_models)
    rows = tokenize_for_causal_lm(
        Dataset.from_dict({"text": ["short", "a much longer piece of text than the first"]}),
        tok,
        "text",
        64,
        packing=False,
    )
    features = [{"input_ids": [*r, tok.eos_token_id]} for r in rows["input_ids"]]
    batch = DataCollatorForCausalLM(pad_token_id=tok.eos_token_id)(features)  # pad id == EOS, as for GPT-2
    n0 = len(features[0]["input_ids"])
    assert batch["labels"][0, n0 - 1] == tok.eos_token_id  # the real EOS keeps its label
    assert (batch["labels"][0, n0:] == -100).all() and (batch["attention_mask"][0, n0:] == 0).all()
    assert (batch["labels"][1] != -100).all()


def test_image_transform_converts_mode_and_size():
    grey = PILImage.fromarray((torch.arange(64).reshape(8, 8) * 4).numpy().astype("uint8"))
    out = image_transform(3, 32)({"image": [grey, grey.convert("RGB")], "label": [1, 2]})
    assert [tuple(x.shape) for x in out["pixel_values"]] == [(3, 32, 32), (3, 32, 32)]
    assert all(0.0 <= float(x.min()) and float(x.max()) <= 1.0 for x in out["pixel_values"])
    assert out["labels"] == [1, 2]
    assert tuple(image_transform(1, 8)({"image": [grey], "label": [0]})["pixel_values"][0].shape) == (1, 8, 8)


def test_trainable_parameters_freezes_the_rest():
    model = prepare_model(tiny_model("gpt2"), ModelArguments(model_type="gpt2", trainable_parameters=r"mlp\."))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".mlp." in n for n in trainable)
    with pytest.raises(ValueError, match="matches no parameter"):
        prepare_model(tiny_model("gpt2"), ModelArguments(model_type="gpt2", trainable_parameters="nothing_here"))


def test_lora_recipe_flags(tmp_path, tiny_models):
    """use_peft: the adapters train and the saved folder holds them with the cluster files."""
    from hf_clusterable.scripts.train import main

    (tmp_path / "train.txt").write_text("\n".join(f"line {i} of some local text for training" for i in range(200)))
    flags = [
        "--model_name_or_path", str(tiny_models["gpt2"]), "--train_file", str(tmp_path / "train.txt"),
        "--output_dir", str(tmp_path / "out"), "--use_peft", "--lora_r", "4", "--block_size", "16",
        "--max_steps", "2", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    assert main(flags) == 0
    out = tmp_path / "out"
    assert (out / "adapter_model.safetensors").is_file() and (out / "cluster_config.json").is_file()
    assert json.loads((out / "eval_results.json").read_text())["eval_loss"] > 0


@pytest.mark.slow
@requires_gguf
def test_gemma_gguf_recipe_runs_two_steps_on_the_real_model(tmp_path):
    """The documented CPU path: real Gemma 3 270M from the embedded GGUF on stdlib prose (2 short steps), projected
    onto its clusters after the first step as the recipe says."""
    recipe = str(RECIPES / "gemma-3-270m/pydoc/config_cpu.yaml")
    flags = [
        "train", "--config", recipe, "--output_dir", str(tmp_path / "out"), "--max_steps", "2", "--block_size", "32",
        "--per_device_train_batch_size", "1", "--max_eval_samples", "2", "--disable_tqdm", "true",
    ]  # fmt: skip
    assert cli_main(flags) == 0
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    first = next(e for e in state["log_history"] if "eval_loss" in e)  # eval_on_start, before any step
    last = json.loads((tmp_path / "out" / "eval_results.json").read_text())  # the final held-out evaluation
    assert first["eval_loss"] < 8.0  # a pretrained model on English prose, not a random one (ln 262144 = 12.5)
    assert 0.2 < first["eval_clusterability"] < 0.5  # enmeshed before the projection
    assert last["eval_clusterability"] == 1.0  # separate sub-MLPs after it
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "quantization_config" not in saved  # de-quantised floats saved as a plain model


CHAT = str(RECIPES / "gemma-3-270m/chat/config_cpu.yaml")


def chat_flags(tmp_path, tiny_models, *extra: str) -> list[str]:
    return [
        "train", "--config", CHAT, "--output_dir", str(tmp_path / "out"),
        "--model_name_or_path", str(tiny_models["gemma3_text"]),
        "--config_overrides", '{"max_position_embeddings": 192}',
        "--block_size", "192", "--max_steps", "6", "--logging_steps", "3", "--per_device_train_batch_size", "4",
        "--max_train_samples", "48", "--max_eval_samples", "8", "--learning_rate", "3e-3", "--report_to", "none",
        "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def test_sft_recipe_trains_through_trl_with_the_loss(tmp_path, tiny_models, monkeypatch):
    """trainer: sft runs TRL's SFTTrainer (checkpointing on, chat template from the recipe) with the mixin."""
    monkeypatch.chdir(RECIPES.parent)
    assert cli_main(chat_flags(tmp_path, tiny_models)) == 0
    out = tmp_path / "out"
    state = json.loads((out / "trainer_state.json").read_text())
    logs = [e for e in state["log_history"] if "loss" in e]
    assert len(logs) == 2
    for entry in logs:  # TRL's metrics and the loss's, side by side
        assert {"mean_token_accuracy", "entropy", "num_tokens", "clusterability", "cluster_loss"} <= entry.keys()
    assert logs[1]["clusterability"] > logs[0]["clusterability"]
    args = json.loads(json.dumps(torch.load(out / "training_args.bin", weights_only=False).to_dict(), default=str))
    assert args["gradient_checkpointing"] is True and args["max_length"] == 192 and args["packing"] is False
    assert "<start_of_turn>" in (out / "chat_template.jinja").read_text()
    assert (out / CLUSTERS_NAME).is_file()


def test_sft_without_trl_says_how_to_install_it(tmp_path, tiny_models, monkeypatch, capsys):
    monkeypatch.chdir(RECIPES.parent)
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl raises ImportError
    assert cli_main(chat_flags(tmp_path, tiny_models)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "pip install 'hf-clusterable[trl]'" in errors[0]
    assert not (tmp_path / "out").exists()


def test_sft_chat_data_needs_a_chat_template(tmp_path, tiny_models, monkeypatch, capsys):
    monkeypatch.chdir(RECIPES.parent)
    recipe = tmp_path / "chat.yaml"
    recipe.write_text(Path(CHAT).read_text().replace("chat_template_path:", "# chat_template_path:"))
    flags = chat_flags(tmp_path, tiny_models)
    flags[flags.index(CHAT)] = str(recipe)
    assert cli_main(flags) == 2
    assert "no chat template; set chat_template_path" in capsys.readouterr().err
