"""Every recipe runs offline at tiny scale: a tiny model saved from a config, tiny local data written here, 2 steps.

The Hub model and dataset of each recipe are replaced by local ones through the same flags a user would pass
(`--model_name_or_path`, `--train_file`/`--validation_file`, `--dataset_name` of a folder); everything else (task,
columns, cluster settings, schedule) comes from the recipe itself. The accelerate configs are checked with
accelerate's own loader, and two are launched for real on CPU.
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from datasets import ClassLabel, Dataset, Features, Image
from safetensors.torch import load_file

from hf_clusterable import ClusterConfig
from hf_clusterable.constants import CLUSTERS_NAME, CONFIG_NAME, HEATMAP_NAME, METRICS_NAME
from hf_clusterable.examples.offline import pydoc_text
from hf_clusterable.scripts.train import main as train_main
from tests.testing_utils import RECIPES, ROOT, TINY_TYPES, free_port, run_launch


ALL_RECIPES = sorted(p.relative_to(RECIPES).as_posix() for p in RECIPES.glob("*/*/config_*.yaml"))
# Flags that shrink any recipe to a few seconds on one CPU thread.
TINY_RUN = [
    "--max_steps", "2", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
    "--logging_steps", "1", "--eval_steps", "1", "--save_strategy", "no", "--bf16", "false",
    "--dataloader_num_workers", "0", "--report_to", "none", "--disable_tqdm", "true",
]  # fmt: skip


def recipe(path: str) -> dict:
    return yaml.safe_load((RECIPES / path).read_text())


def digit_images(n: int, size: int, mode: str) -> tuple[list, list[int]]:
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    data = load_digits()
    images = []
    for pixels in data.images[:n]:
        grey = PILImage.fromarray((pixels * 255 / 16).astype(np.uint8)).resize((size, size))
        images.append(grey.convert(mode))
    return images, [int(t) for t in data.target[:n]]


def local_data(path: str, tmp: Path) -> list[str]:
    """Write tiny local data shaped like the recipe's Hub dataset; the flags that point the recipe at it."""
    r = recipe(path)
    if r["task"] == "modular_addition" or r.get("dataset_name") in ("offline:pydoc", "offline:pydoc-chat"):
        return ["--max_train_samples", "64", "--max_eval_samples", "16"]
    if r["task"] == "image_classification":
        size, channels = r["config_overrides"]["image_size"], r["config_overrides"]["num_channels"]
        images, labels = digit_images(60, size, "L" if channels == 1 else "RGB")
        if r["image_column"] == "image":  # an imagefolder: <split>/<class>/<file>.png
            for i, (image, label) in enumerate(zip(images, labels, strict=True)):
                folder = tmp / "images" / ("train" if i < 40 else "test") / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"{i}.png")
            return ["--dataset_name", str(tmp / "images")]
        features = Features({r["image_column"]: Image(), r["label_column"]: ClassLabel(num_classes=10)})
        for name, part in (("train", slice(0, 40)), ("validation", slice(40, 60))):
            columns = {r["image_column"]: images[part], r["label_column"]: labels[part]}
            Dataset.from_dict(columns, features=features).to_parquet(str(tmp / f"{name}.parquet"))
        return ["--train_file", str(tmp / "train.parquet"), "--validation_file", str(tmp / "validation.parquet")]
    paragraphs = pydoc_text()[:120]
    column = r["text_column"]
    if column == "text":  # plain text files, one document per line, with WikiText's blank lines
        (tmp / "train.txt").write_text("\n\n".join(paragraphs[:100]).replace("\n\n", "\n \n"))
        (tmp / "validation.txt").write_text("\n".join(paragraphs[100:]))
        return ["--train_file", str(tmp / "train.txt"), "--validation_file", str(tmp / "validation.txt")]
    # JSON lines with the recipe's column and no validation file: the recipe's validation_fraction is held out
    (tmp / "train.jsonl").write_text("".join(json.dumps({column: p}) + "\n" for p in paragraphs))
    return ["--train_file", str(tmp / "train.jsonl"), "--validation_fraction", "0.2"]


def tiny_flags(path: str, tmp: Path, tiny_models: dict[str, Path]) -> list[str]:
    r = recipe(path)
    flags = ["--config", str(RECIPES / path), "--output_dir", str(tmp / "out"), *TINY_RUN, *local_data(path, tmp)]
    if "model_name_or_path" in r:
        flags += ["--model_name_or_path", str(tiny_models[TINY_TYPES[r["model_name_or_path"]]])]
    if r.get("trainer") == "sft":  # chat examples: a block must hold a templated question and some of its answer
        flags += ["--block_size", "192", "--config_overrides", '{"max_position_embeddings": 192}']
    elif r["task"] == "causal_lm":
        flags += ["--block_size", "16"]
    if r["task"] == "causal_lm":
        flags += ["--preprocessing_num_workers", "1"]
    if r.get("cluster_step", 0) > 0:  # a warm-up of plain steps: shorten it so the loss applies from step 1 on
        flags += ["--cluster_step", "1"]
    if r.get("cluster_project_step") is not None:  # project after the first step, heal in the second
        flags += ["--cluster_project_step", str(r.get("cluster_step", 0) and 2 or 1)]
    if r.get("cluster_loss_weight_warmup_steps", 0) > 0:
        flags += ["--cluster_loss_weight_warmup_steps", "1"]
    return flags


def test_every_recipe_is_found():
    assert len(ALL_RECIPES) >= 8, ALL_RECIPES
    assert {p.split("/")[0] for p in ALL_RECIPES} >= {
        "gpt2",
        "pythia-70m",
        "pythia-160m",
        "gemma-3-270m",
        "transformer-1l",
        "cnn",
    }


@pytest.mark.parametrize("path", ALL_RECIPES)
def test_recipe_uses_transformers_v5_keys(path):
    r = recipe(path)
    assert not {"torch_dtype", "overwrite_output_dir", "logging_dir", "warmup_ratio", "max_seq_length"} & set(r)
    assert r.get("report_to") != "none" and r["output_dir"].startswith("runs/")  # trackers are the user's choice


@pytest.mark.parametrize("path", ALL_RECIPES)
def test_recipe_trains_offline_at_tiny_scale(path, tmp_path, tiny_models, monkeypatch):
    monkeypatch.chdir(ROOT)  # recipes name files (a chat template) relative to the repository root
    assert train_main(tiny_flags(path, tmp_path, tiny_models)) == 0
    out, r = tmp_path / "out", recipe(path)
    for name in ("model.safetensors", "config.json", CONFIG_NAME, CLUSTERS_NAME, METRICS_NAME, "README.md"):
        assert (out / name).is_file(), name
    config = ClusterConfig.from_pretrained(out)
    assert config.n_clusters == r["n_clusters"] and config.loss_weight == r["cluster_loss_weight"]
    assert config.init == r["cluster_init"]
    assert config.loss_weight_schedule == r.get("cluster_loss_weight_schedule", "constant")
    assert config.distill_weight == r.get("cluster_distill_weight", 0.0)
    evaluation = json.loads((out / "eval_results.json").read_text())
    assert np.isfinite(evaluation["eval_loss"])
    assert 0.0 <= evaluation["eval_clusterability"] <= 1.0
    if r["task"] != "causal_lm":
        assert 0.0 <= evaluation["eval_accuracy"] <= 1.0
    else:
        assert (out / "tokenizer.json").is_file()
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert any("cluster_loss" in entry for entry in history)
    if r.get("cluster_project_step") is not None:  # off-block weights zeroed and held at zero
        assert evaluation["eval_clusterability"] == 1.0
    if r.get("cluster_distill_weight", 0.0) > 0:
        assert any("distill_loss" in entry for entry in history)
    assert "clusterability" in (out / "README.md").read_text()


def test_text_is_evaluated_on_held_out_data_and_padding_is_masked(tmp_path, tiny_models):
    """Unpacked text: padded batches whose labels are -100 exactly at the padding; evaluation on validation.txt."""
    flags = tiny_flags("gpt2/wikitext103/config_full.yaml", tmp_path, tiny_models) + ["--packing", "false"]
    assert train_main(flags) == 0
    evaluation = json.loads((tmp_path / "out" / "eval_results.json").read_text())
    assert np.isfinite(evaluation["eval_loss"]) and evaluation["eval_perplexity"] > 1.0


def test_accelerate_configs_load_with_accelerate():
    configs = {p.stem: load_config_from_file(str(p)) for p in (RECIPES / "accelerate_configs").glob("*.yaml")}
    assert set(configs) == {"single_process", "ddp", "fsdp2", "zero3"}
    assert configs["single_process"].distributed_type == "NO"
    assert configs["ddp"].distributed_type == "MULTI_GPU"
    assert configs["fsdp2"].distributed_type == "FSDP" and configs["fsdp2"].fsdp_config["fsdp_version"] == 2
    assert configs["fsdp2"].fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert configs["zero3"].distributed_type == "DEEPSPEED"
    assert configs["zero3"].deepspeed_config["zero_stage"] == 3
    assert configs["zero3"].deepspeed_config["zero3_save_16bit_model"] is True


def launch(config: str, recipe_path: str, out: Path, *extra: str, env: dict | None = None):
    """`accelerate launch --config_file CONFIG -m hf_clusterable train --config RECIPE` (CPU, gloo for DDP)."""
    args = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(RECIPES / "accelerate_configs" / config), "--main_process_port", str(free_port()), *extra,
        "-m", "hf_clusterable", "train", "--config", str(RECIPES / recipe_path), "--output_dir", str(out),
        "--max_steps", "4", "--eval_steps", "2", "--logging_steps", "2", "--per_device_train_batch_size", "32",
        "--disable_tqdm", "true",
    ]  # fmt: skip
    return run_launch(args, env=env)


def test_accelerate_launch_single_process_module_entry_point(tmp_path):
    launch("single_process.yaml", "transformer-1l/modular-addition/config_full.yaml", tmp_path / "out")
    assert (tmp_path / "out" / CLUSTERS_NAME).is_file()


@pytest.mark.slow
def test_accelerate_launch_ddp_two_cpu_processes(tmp_path):
    """The DDP config on CPU: 2 gloo processes train, rank 0 saves, both agree on the clusters."""
    result = launch(
        "ddp.yaml", "transformer-1l/modular-addition/config_full.yaml", tmp_path / "out", "--num_processes", "2"
    )
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / HEATMAP_NAME).is_file()
    assert load_file(out / CLUSTERS_NAME)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert "2 process(es)" in result


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed (CPU build, .venv-ds)")
def test_accelerate_launch_zero3_two_cpu_processes(tmp_path):
    launch(
        "zero3.yaml",
        "transformer-1l/modular-addition/config_full.yaml",
        tmp_path / "out",
        "--num_processes",
        "2",
        env={"DS_ACCELERATOR": "cpu"},
    )
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file() and (out / "README.md").is_file() and (out / HEATMAP_NAME).is_file()
    metrics = json.loads((out / METRICS_NAME).read_text())  # scored from weights gathered on both processes
    assert metrics["global_step"] == 4 and 0.0 < metrics["mean"] <= 1.0
