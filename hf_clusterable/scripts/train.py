"""The recipe runner behind `hf-clusterable train`, TRL / alignment-handbook style.

    hf-clusterable train --config recipes/gpt2/wikitext103/config_full.yaml [--flag value ...]
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m hf_clusterable train --config RECIPE.yaml

The recipe and its flags are parsed into argument dataclasses by `train_args.py`.

Three tasks cover the paper's experiments: `causal_lm` (GPT-2, Pythia, Gemma... on text from the Hub or local files),
`image_classification` (`ClusterNetForImageClassification` on MNIST / CIFAR-10 images) and `modular_addition` (the
one-layer transformer on (a + b) mod p, built in code). Every run evaluates on a held-out split, saves the model with
its `cluster_config.json`, `clusters.safetensors` and `cluster_metrics.json`, and writes a model card.

`trainer: sft` runs a `causal_lm` recipe through TRL's `SFTTrainer` with `ClusterabilityMixin` instead: TRL
tokenises, packs and (for chat data) applies the chat template; `block_size` becomes its `max_length`, `packing` and
`text_column` its own, and every TrainingArguments key of the recipe carries over.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

from ..examples.offline import OFFLINE_GEMMA, OFFLINE_PYDOC, OFFLINE_PYDOC_CHAT, OFFLINE_SMOLLM2
from ..training.checkpoints import last_complete_checkpoint
from ..utils.hub import require_local_or_repo
from ..utils.io import check_output_dir, check_writable_folder
from .train_args import ClusterArguments, ModelArguments, ScriptArguments, parse_args


logger = logging.getLogger(__name__)

PIPELINE_TAGS = {"causal_lm": "text-generation", "image_classification": "image-classification"}


# ---- checks, data and model ---------------------------------------------------------------------------------------


def resume_checkpoint(args: TrainingArguments, overwrite: bool) -> str | None:
    """The checkpoint to resume from, or None; refuses to write into a non-empty folder that holds no checkpoint."""
    out = check_writable_folder(args.output_dir, "--output_dir")
    if args.resume_from_checkpoint:
        if not Path(args.resume_from_checkpoint).is_dir():
            raise FileNotFoundError(f"--resume_from_checkpoint {args.resume_from_checkpoint}: no such folder.")
        return args.resume_from_checkpoint
    last = last_complete_checkpoint(str(out))
    if last is None:
        check_output_dir(out, "--output_dir", overwrite=overwrite)
    return last


def load_raw_data(script_args: ScriptArguments):
    """The dataset the recipe names: local files, the stdlib's prose, a local folder or a Hub dataset."""
    from datasets import load_dataset

    from ..examples.datasets import pydoc_chat_dataset, pydoc_dataset
    from ..utils.data_files import load_data_files

    if script_args.train_file:
        if script_args.dataset_name:
            logger.warning("train_file given: using local files instead of dataset %s.", script_args.dataset_name)
        files = {"train": script_args.train_file}
        if script_args.validation_file:
            files["validation"] = script_args.validation_file
        return load_data_files(files, {"train": "--train_file", "validation": "--validation_file"})
    if script_args.dataset_name == OFFLINE_PYDOC:
        return pydoc_dataset(seed=0)
    if script_args.dataset_name == OFFLINE_PYDOC_CHAT:
        return pydoc_chat_dataset(seed=0)
    name = require_local_or_repo(script_args.dataset_name, "--dataset_name")
    return load_dataset(name, script_args.dataset_config_name)


def resolve_model_path(model_args: ModelArguments) -> tuple[str, str | None]:
    """(path or Hub id, GGUF file) of the pretrained model."""
    if model_args.model_name_or_path == OFFLINE_GEMMA:
        from ..examples.offline import gemma3_270m_gguf

        return gemma3_270m_gguf()
    if model_args.model_name_or_path == OFFLINE_SMOLLM2:
        from ..examples.offline import smollm2_135m_gguf

        return smollm2_135m_gguf()
    name = require_local_or_repo(model_args.model_name_or_path, "--model_name_or_path")
    return name, model_args.gguf_file


def load_model(model_args: ModelArguments, task: str, label_names: list[str] | None = None):
    """The model for `task`; fresh models get their label count from the data."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageClassification

    from ..examples.models import register_auto_classes
    from ..modeling.loading import load_model as load_pretrained

    register_auto_classes()  # model_type hf_clusterable_net (the paper's ClusterNet)
    auto = AutoModelForImageClassification if task == "image_classification" else AutoModelForCausalLM
    overrides = dict(model_args.config_overrides or {})
    if model_args.model_type is not None:
        if label_names is not None and "num_labels" not in overrides:
            overrides["num_labels"] = len(label_names)
            overrides["id2label"] = dict(enumerate(label_names))
            overrides["label2id"] = {name: i for i, name in enumerate(label_names)}
        try:
            config = AutoConfig.for_model(model_args.model_type, **overrides)
        except (KeyError, ValueError) as err:
            raise ValueError(f"cannot build a {model_args.model_type!r} config: {err}") from err
        return auto.from_config(config, **_given(dtype=model_args.dtype))
    path, gguf_file = resolve_model_path(model_args)
    kwargs = _given(
        revision=model_args.model_revision if path == model_args.model_name_or_path else None,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
    )
    return load_pretrained(path, gguf_file, auto_class=auto, **kwargs, **overrides)


def load_tokenizer(model_args: ModelArguments):
    from transformers import AutoTokenizer

    if model_args.tokenizer_name_or_path:
        return AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path)
    if model_args.model_type is not None:
        raise ValueError("a model built from model_type needs tokenizer_name_or_path for text.")
    path, gguf_file = resolve_model_path(model_args)
    return AutoTokenizer.from_pretrained(path, **_given(gguf_file=gguf_file))


def _given(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


def limit(dataset, n: int | None):
    return dataset.select(range(min(n, len(dataset)))) if n is not None else dataset


def prepare_model(model, model_args: ModelArguments):
    """LoRA adapters or a frozen subset, as asked."""
    if model_args.use_peft:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            target_modules=model_args.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lora)
    if model_args.trainable_parameters:
        pattern = re.compile(model_args.trainable_parameters)
        kept = 0
        for name, param in model.named_parameters():
            param.requires_grad_(bool(pattern.search(name)))
            kept += param.numel() if param.requires_grad else 0
        if kept == 0:
            raise ValueError(f"trainable_parameters {model_args.trainable_parameters!r} matches no parameter name.")
        total = sum(p.numel() for p in model.parameters())
        logger.info("training %d of %d parameters (%.1f%%)", kept, total, 100 * kept / total)
    return model


# ---- the three tasks ----------------------------------------------------------------------------------------------


def held_out_data(script_args: ScriptArguments, args: TrainingArguments) -> tuple[Any, Any, dict[str, Any]]:
    """(train, held-out, Trainer kwargs) before any model-specific preparation."""
    from ..training.data import held_out_splits

    kwargs: dict[str, Any] = {}
    if script_args.task == "modular_addition":
        from ..examples.modular_addition import answer_logits, modular_addition, modular_addition_accuracy

        raw = modular_addition(p=script_args.modulus, train_fraction=script_args.train_fraction, seed=args.seed)
        train_data, eval_data, eval_name = raw["train"], raw["test"], "test"
        kwargs.update(compute_metrics=modular_addition_accuracy, preprocess_logits_for_metrics=answer_logits)
    else:
        with args.main_process_first(desc="loading data"):
            raw = load_raw_data(script_args)
        train_data, eval_data, eval_name = held_out_splits(
            raw, script_args.train_split, script_args.eval_split, script_args.validation_fraction, args.seed
        )
    train_data = limit(train_data, script_args.max_train_samples)
    eval_data = limit(eval_data, script_args.max_eval_samples)
    logger.info("%d training and %d held-out (%s) examples", len(train_data), len(eval_data), eval_name)
    return train_data, eval_data, kwargs


def image_label_names(train_data, script_args: ScriptArguments) -> list[str]:
    for column in (script_args.image_column, script_args.label_column):
        if column not in train_data.column_names:
            raise ValueError(f"no column {column!r} in the data (it has {train_data.column_names}).")
    names = getattr(train_data.features[script_args.label_column], "names", None)
    return names if names is not None else [str(i) for i in range(max(train_data[script_args.label_column]) + 1)]


def prepare_images(model, train_data, eval_data, script_args: ScriptArguments, args: TrainingArguments):
    """Images as `pixel_values` of the model's channel count and size, and the accuracy metric."""
    from ..training.data import image_transform
    from ..training.metrics import accuracy

    config = model.config
    transform = image_transform(
        config.num_channels, config.image_size, script_args.image_column, script_args.label_column
    )
    args.remove_unused_columns = False  # the transform reads the raw image column the model never sees
    return train_data.with_transform(transform), eval_data.with_transform(transform), {"compute_metrics": accuracy}


def text_tokenizer(model, script_args: ScriptArguments, model_args: ModelArguments):
    """The tokenizer, with a pad token, after checking that a block fits the model's positions."""
    tokenizer = load_tokenizer(model_args)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token; set one in its files.")
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked by length, so EOS stays trained
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and script_args.block_size > max_positions:
        raise ValueError(f"block_size {script_args.block_size} exceeds the model's {max_positions} positions.")
    return tokenizer


def prepare_text(model, train_data, eval_data, script_args: ScriptArguments, model_args, args: TrainingArguments):
    """Tokenised blocks (packed, or padded with the padding masked), the collator and the tokenizer."""
    from ..training.data import DataCollatorForCausalLM, tokenize_for_causal_lm

    tokenizer = text_tokenizer(model, script_args, model_args)
    with args.main_process_first(desc="tokenising"):
        train_data, eval_data = (
            tokenize_for_causal_lm(
                data,
                tokenizer,
                script_args.text_column,
                script_args.block_size,
                script_args.packing,
                script_args.preprocessing_num_workers,
            )
            for data in (train_data, eval_data)
        )
    if len(train_data) == 0 or len(eval_data) == 0:
        raise ValueError(
            f"no full block of {script_args.block_size} tokens in the training or held-out text; "
            "lower block_size or set packing false."
        )
    kwargs = {"data_collator": DataCollatorForCausalLM(tokenizer.pad_token_id), "processing_class": tokenizer}
    return train_data, eval_data, kwargs


# ---- TRL's SFTTrainer ---------------------------------------------------------------------------------------------

# Columns that make a dataset conversational for TRL: the tokenizer's chat template renders them.
CHAT_COLUMNS = ("messages", "prompt")


def require_trl() -> None:
    """One line saying how to install TRL, before any work, when a recipe asks for a TRL trainer without it."""
    try:
        import trl  # noqa: F401
    except ImportError:
        raise ImportError("trainer: sft needs TRL: pip install 'hf-clusterable[trl]'.") from None


@functools.cache
def clusterable_sft_trainer() -> type:
    """`ClusterabilityMixin` + TRL's `SFTTrainer` (built on first use, so TRL stays optional)."""
    from trl import SFTTrainer

    from ..training.mixin import ClusterabilityMixin

    return type("ClusterableSFTTrainer", (ClusterabilityMixin, SFTTrainer), {"__module__": __name__})


def sft_config(args: TrainingArguments, script_args: ScriptArguments):
    """The recipe's TrainingArguments as TRL's `SFTConfig`, with the data keys in TRL's names."""
    from trl import SFTConfig

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    return SFTConfig(
        **values,
        max_length=script_args.block_size,
        packing=script_args.packing,
        dataset_text_field=script_args.text_column,
        chat_template_path=script_args.chat_template_path,
        dataset_num_proc=script_args.preprocessing_num_workers,
    )


def prepare_sft(model, train_data, script_args: ScriptArguments, model_args: ModelArguments) -> dict[str, Any]:
    """The tokenizer for TRL (which tokenises the raw data itself), after checking the data has what TRL reads."""
    tokenizer = text_tokenizer(model, script_args, model_args)
    columns = train_data.column_names
    chat = any(c in columns for c in CHAT_COLUMNS)
    if not chat and script_args.text_column not in columns:
        raise ValueError(
            f"no column {script_args.text_column!r} in the data (it has {columns}); set text_column, or give chat "
            "data with prompt/completion or messages columns."
        )
    if chat and tokenizer.chat_template is None and script_args.chat_template_path is None:
        raise ValueError("the data is chat-formatted but the tokenizer has no chat template; set chat_template_path.")
    return {"processing_class": tokenizer}


# ---- the run ------------------------------------------------------------------------------------------------------


def run(script_args: ScriptArguments, model_args: ModelArguments, cluster_args: ClusterArguments, args) -> dict:
    """Train, evaluate on the held-out split, save and write the card; returns the final evaluation metrics."""
    from transformers import set_seed

    from ..training.trainer import ClusterableTrainer

    sft = script_args.trainer == "sft"
    if sft:
        require_trl()
    cluster_config = cluster_args.to_cluster_config(args.seed)  # a bad cluster setting fails before any work
    checkpoint = resume_checkpoint(args, script_args.overwrite)
    if checkpoint is not None:
        logger.info("resuming from checkpoint %s", checkpoint)
    task = script_args.task
    set_seed(args.seed)
    train_data, eval_data, trainer_kwargs = held_out_data(script_args, args)
    label_names = image_label_names(train_data, script_args) if task == "image_classification" else None
    model = load_model(model_args, task, label_names)
    if task == "modular_addition" and model.config.vocab_size < script_args.modulus + 1:
        raise ValueError(
            f"vocab_size {model.config.vocab_size} is too small for modulus {script_args.modulus}: it needs "
            f"{script_args.modulus + 1} tokens (the numbers and '=')."
        )
    if task == "image_classification":
        train_data, eval_data, extra = prepare_images(model, train_data, eval_data, script_args, args)
        trainer_kwargs.update(extra)
    trainer_cls = ClusterableTrainer
    if sft:
        trainer_kwargs.update(prepare_sft(model, train_data, script_args, model_args))
        trainer_cls, args = clusterable_sft_trainer(), sft_config(args, script_args)
    elif task == "causal_lm":
        train_data, eval_data, extra = prepare_text(model, train_data, eval_data, script_args, model_args, args)
        trainer_kwargs.update(extra)
    trainer = trainer_cls(
        model=prepare_model(model, model_args),
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        cluster_config=cluster_config,
        **trainer_kwargs,
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    trainer.save_model(args.output_dir)
    return finish(trainer, script_args, model_args, args)


def finish(trainer, script_args: ScriptArguments, model_args: ModelArguments, args) -> dict:
    """Final held-out evaluation, the card (and push), the split record of modular addition, a clean exit."""
    import torch.distributed as dist

    task = script_args.task
    if task == "modular_addition" and trainer.is_world_process_zero():  # the held-out pairs, for `analyze`
        from ..examples.modular_addition import save_modular_addition_split

        save_modular_addition_split(
            args.output_dir, p=script_args.modulus, train_fraction=script_args.train_fraction, seed=args.seed
        )
    metrics = trainer.evaluate()
    if task == "causal_lm" and "eval_loss" in metrics:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    dataset = None if script_args.train_file else script_args.dataset_name
    card_kwargs = dict(dataset=dataset, tasks=PIPELINE_TAGS.get(task), metrics=metrics)
    trainer.create_model_card(finetuned_from=model_args.model_name_or_path, **card_kwargs)
    if args.push_to_hub:
        trainer.push_to_hub(**card_kwargs)
    if dist.is_available() and dist.is_initialized():  # a clean exit: without it gloo runs abort now and then
        trainer.accelerator.wait_for_everyone()
        dist.destroy_process_group()
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the recipe and flags, set up logging, and run."""
    script_args, model_args, cluster_args, training_args = parse_args(argv)
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)
    logger.info(
        "task %s, %d process(es), output_dir %s",
        script_args.task,
        training_args.world_size,
        os.path.abspath(training_args.output_dir),
    )
    run(script_args, model_args, cluster_args, training_args)
    return 0
