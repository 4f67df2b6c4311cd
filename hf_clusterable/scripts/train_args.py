"""The arguments of `hf-clusterable train`, TRL style: dataclasses parsed from a YAML recipe and the command line.

A recipe is a flat YAML file whose keys are the flags of four argument groups: `ScriptArguments` (task and data),
`ModelArguments`, `ClusterArguments` (flat fields that build a `ClusterConfig`, since `HfArgumentParser` parses
neither nested dataclasses nor `list[str] | str` unions) and transformers' `TrainingArguments` (v5 keys). Recipe values
are defaults; flags given on the command line override them. Keys renamed since transformers v4 are refused with
their new name.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.hf_argparser import string_to_bool

from ..config import ClusterConfig
from ..constants import TRAIN_TASKS
from ..examples.offline import OFFLINE_GEMMA, OFFLINE_PYDOC, OFFLINE_SMOLLM2
from ..utils.validation import compile_regex


# Keys that recipes written for transformers v4 / older TRL use, and what to write instead.
_RENAMED_KEYS = {
    "torch_dtype": "dtype (transformers v5)",
    "overwrite_output_dir": "overwrite (removed from TrainingArguments in transformers v5)",
    "logging_dir": "nothing: removed in transformers v5.2; loggers pick their own folder",
    "max_seq_length": "block_size",
    "warmup_ratio": "warmup_steps (transformers v5: a float below 1 is a ratio of the total steps)",
    "dataset_config": "dataset_config_name",
}


@dataclass
class ScriptArguments:
    """The task, its data, and where the evaluation split comes from."""

    task: Literal["causal_lm", "image_classification", "modular_addition"] = field(
        default="causal_lm", metadata={"help": "causal_lm, image_classification or modular_addition."}
    )
    trainer: Literal["default", "sft"] = field(
        default="default",
        metadata={"help": "default: ClusterableTrainer on tokenised blocks; sft: TRL's SFTTrainer with the loss "
                  "(text, or chat data in prompt/completion or messages columns; pip install 'hf-clusterable[trl]')."},
    )  # fmt: skip
    chat_template_path: str | None = field(
        default=None, metadata={"help": "trainer sft: a .jinja chat template, for a tokenizer that has none."}
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": f"Hub dataset id or a local dataset folder (e.g. an imagefolder); {OFFLINE_PYDOC} is the "
                  "stdlib's English prose."},
    )  # fmt: skip
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_file: str | None = field(
        default=None,
        metadata={"help": "Local training file (.txt, .csv, .json, .jsonl, .parquet); replaces dataset_name."},
    )
    validation_file: str | None = field(default=None, metadata={"help": "Local held-out file, same format."})
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Held-out split; default 'validation', else 'test', else carved out of train."}
    )
    validation_fraction: float = field(
        default=0.05, metadata={"help": "Share of the training split held out when the data has no other split."}
    )
    text_column: str = field(
        default="text", metadata={"help": "Column holding the text (causal_lm; chat data needs none)."}
    )
    block_size: int = field(default=1024, metadata={"help": "Tokens per training sequence (causal_lm)."})
    packing: bool = field(
        default=True,
        metadata={"help": "Join documents into full blocks of block_size tokens; false pads each document instead."},
    )
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column: str = field(default="label", metadata={"help": "Column holding the class labels."})
    modulus: int = field(default=113, metadata={"help": "p in (a + b) mod p (modular_addition)."})
    train_fraction: float = field(default=0.3, metadata={"help": "Share of all pairs used for training."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N held-out examples."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})
    overwrite: bool = field(
        default=False, metadata={"help": "Write into a non-empty output_dir that holds no checkpoint."}
    )

    def __post_init__(self) -> None:
        if self.task not in TRAIN_TASKS:
            raise ValueError(f"task must be one of {TRAIN_TASKS}, got {self.task!r}.")
        if self.trainer not in ("default", "sft"):
            raise ValueError(f"trainer must be default or sft, got {self.trainer!r}.")
        if self.trainer == "sft" and self.task != "causal_lm":
            raise ValueError(f"trainer sft fine-tunes language models: set task causal_lm, not {self.task}.")
        if self.chat_template_path is not None:
            if self.trainer != "sft":
                raise ValueError("chat_template_path is used by trainer sft only; set trainer: sft or remove it.")
            if not (Path(self.chat_template_path).is_file() and self.chat_template_path.endswith((".jinja", ".j2"))):
                raise ValueError(f"chat_template_path {self.chat_template_path}: no such .jinja file.")
        if self.task != "modular_addition" and not (self.dataset_name or self.train_file):
            raise ValueError(f"task {self.task} needs data: set dataset_name (Hub id or folder) or train_file.")
        if self.validation_file and not self.train_file:
            raise ValueError("validation_file needs train_file too.")
        if self.block_size < 2:
            raise ValueError(f"block_size must be >= 2, got {self.block_size}.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")


@dataclass
class ModelArguments:
    """A pretrained model (Hub id, local folder, GGUF) or a fresh one built from a registered model type."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": f"Hub id or local folder of a pretrained model; {OFFLINE_GEMMA} and {OFFLINE_SMOLLM2} are "
            "GGUF files from PyPI packages."
        },
    )
    model_type: str | None = field(
        default=None, metadata={"help": "Train from scratch: a registered model type (gpt2, hf_clusterable_net...)."}
    )
    config_overrides: dict | str | None = field(
        default=None, metadata={"help": "Config fields to set: a YAML mapping, or a JSON string on the command line."}
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub model."})
    dtype: str | None = field(
        default=None, metadata={"help": "Weights dtype: auto, float32, bfloat16 or float16 (v5 name of torch_dtype)."}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "eager, sdpa, flash_attention_2..."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside model_name_or_path."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    trainable_parameters: str | None = field(
        default=None,
        metadata={"help": "Regex over parameter names: only matches train (e.g. 'mlp' trains the MLPs alone)."},
    )
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters (the loss sees W + BA)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules given adapters; default: PEFT's choice for the architecture."}
    )

    def __post_init__(self) -> None:
        if (self.model_name_or_path is None) == (self.model_type is None):
            raise ValueError(
                "set exactly one of model_name_or_path (pretrained) and model_type (from scratch), got "
                f"{self.model_name_or_path!r} and {self.model_type!r}."
            )
        if isinstance(self.config_overrides, str):
            try:
                self.config_overrides = json.loads(self.config_overrides)
            except json.JSONDecodeError as err:
                raise ValueError(f"config_overrides must be a JSON object, e.g. '{{\"n_layer\": 2}}': {err}") from err
        if self.config_overrides is not None and not isinstance(self.config_overrides, dict):
            raise ValueError(f"config_overrides must be a mapping, got {self.config_overrides!r}.")
        if self.use_peft and self.trainable_parameters:
            raise ValueError("use either use_peft or trainable_parameters, not both.")
        if self.trainable_parameters:
            try:
                re.compile(self.trainable_parameters)
            except re.error as err:
                raise ValueError(f"trainable_parameters is not a valid regex: {err}") from err


@dataclass
class ClusterArguments:
    """`ClusterConfig` as flat flags (see `hf_clusterable.ClusterConfig` for the meaning of each)."""

    n_clusters: int = field(default=4, metadata={"help": "Clusters per matrix (k)."})
    cluster_targets: list[str] | None = field(
        default=None, metadata={"help": "Module names or suffixes to cluster; default: the model type's MLPs."}
    )
    cluster_target_regex: str | None = field(
        default=None, metadata={"help": "Regex over module names instead of cluster_targets (matrices alone)."}
    )
    cluster_coupled: bool = field(
        default=True, metadata={"help": "One set of labels per MLP, so every cluster is a sub-MLP."}
    )
    cluster_loss_weight: float = field(default=20.0, metadata={"help": "lambda in task + lambda * (1 - mean C)."})
    cluster_init: Literal["spectral", "blocks"] = field(
        default="spectral", metadata={"help": "spectral co-clustering (pretrained) or fixed blocks (from scratch)."}
    )
    cluster_step: int = field(default=0, metadata={"help": "Plain steps before spectral clusters are computed."})
    recluster_every: int = field(default=0, metadata={"help": "Re-cluster every N steps; 0 keeps clusters fixed."})
    cluster_balance: float = field(default=0.5, metadata={"help": "Allowed relative deviation of cluster sizes."})
    cluster_seed: int | None = field(default=None, metadata={"help": "Co-clustering seed; default: the run's seed."})
    cluster_loss_weight_schedule: Literal["constant", "linear", "cosine"] = field(
        default="constant", metadata={"help": "constant lambda, or a linear/cosine ramp from 0 after cluster_step."}
    )
    cluster_loss_weight_warmup_steps: int = field(default=0, metadata={"help": "Steps of the lambda ramp."})
    cluster_distill_weight: float = field(
        default=0.0, metadata={"help": "Weight of the KL to the frozen starting model (self-distillation)."}
    )
    cluster_distill_temperature: float = field(default=1.0, metadata={"help": "Temperature of the distillation."})
    cluster_teacher_dtype: Literal["bfloat16"] | None = field(
        default=None, metadata={"help": "bfloat16 keeps the frozen teacher copy in bf16; default: the model's dtype."}
    )
    cluster_project_step: int | None = field(
        default=None, metadata={"help": "Step at which off-block weights are zeroed and kept at zero (C = 1)."}
    )

    def to_cluster_config(self, default_seed: int) -> ClusterConfig:
        if self.cluster_targets and self.cluster_target_regex:
            raise ValueError("use either cluster_targets or cluster_target_regex, not both.")
        return ClusterConfig(
            n_clusters=self.n_clusters,
            targets=self.cluster_targets or self.cluster_target_regex or None,
            coupled=self.cluster_coupled,
            loss_weight=float(self.cluster_loss_weight),
            init=self.cluster_init,
            cluster_step=self.cluster_step,
            recluster_every=self.recluster_every,
            balance=float(self.cluster_balance),
            seed=default_seed if self.cluster_seed is None else self.cluster_seed,
            loss_weight_schedule=self.cluster_loss_weight_schedule,
            loss_weight_warmup_steps=self.cluster_loss_weight_warmup_steps,
            distill_weight=float(self.cluster_distill_weight),
            distill_temperature=float(self.cluster_distill_temperature),
            teacher_dtype=self.cluster_teacher_dtype,
            project_step=self.cluster_project_step,
        )


ArgumentGroups = tuple[ScriptArguments, ModelArguments, ClusterArguments, TrainingArguments]


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        (ScriptArguments, ModelArguments, ClusterArguments, TrainingArguments),
        prog="hf-clusterable train",
        description="Train with the clusterability loss from a YAML recipe; flags override the recipe's values.",
    )
    parser.add_argument("--config", default=None, help="YAML recipe whose keys are defaults for the flags below.")
    return parser


def recipe_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The option behind every key a recipe may set (for a boolean, the `--flag` rather than its `--no_flag`)."""
    actions: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse has no public accessor for a parser's options
        if action.dest not in ("help", "config") and (action.dest not in actions or action.type is not None):
            actions[action.dest] = action
    return actions


def read_recipe(path: str, actions: Mapping[str, argparse.Action]) -> dict:
    """The recipe's key -> value mapping, refusing unknown keys (with the v5 name for renamed ones) and values the
    option's type cannot take (with the file, the key and the value), before argparse sees them."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--config {path}: no such recipe file.")
    try:
        recipe = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"--config {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(recipe, dict):
        raise ValueError(f"--config {path} must be a mapping of flag names to values.")
    unknown = sorted(set(recipe) - set(actions), key=str)
    if unknown:
        hints = "; ".join(f"{k} -> {_RENAMED_KEYS[k]}" for k in unknown if k in _RENAMED_KEYS)
        raise ValueError(
            f"unknown key(s) {unknown} in {path}" + (f" ({hints})" if hints else "") + "; see hf-clusterable train -h."
        )
    return {key: recipe_value(path, key, value, actions[key]) for key, value in recipe.items()}


# Recipe keys holding a regex over module or parameter names, compiled when the recipe is read.
_REGEX_KEYS = ("cluster_target_regex", "trainable_parameters")


def recipe_value(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    """`value` as the default of `action`, after checking it is what the option's type takes, as a string argparse
    will convert or as the YAML value itself. A single name for a list option becomes a one-element list."""
    accepts, what = _option_type(action)
    if value is None:
        if action.default is not None and (action.choices or action.type in (int, float, string_to_bool)):
            raise ValueError(f"--config {path}: {key} must be {what}, got null; leave it out for {action.default!r}.")
        return value  # the dataclass decides
    if key in _REGEX_KEYS:
        try:
            compile_regex(key, value)
        except (ValueError, TypeError) as err:
            raise ValueError(f"--config {path}: {err}") from None
    many = action.nargs in ("+", "*")
    if many and isinstance(value, str):
        value = [value]
    items = value if many and isinstance(value, list) else [value]
    if (many and not isinstance(value, list)) or not all(accepts(item) for item in items):
        hint = " (YAML reads yes/no/on/off as true/false: quote it)" if isinstance(value, bool) else ""
        raise ValueError(f"--config {path}: {key} must be {'a list of ' if many else ''}{what}, got {value!r}{hint}.")
    return value


def _converts(convert: Callable[[str], Any], text: str) -> bool:
    try:
        convert(text)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return False
    return True


def _option_type(action: argparse.Action) -> tuple[Callable[[Any], bool], str]:
    """(does the option take this recipe value?, what it takes in words), from its argparse type and choices."""
    if action.choices:
        return lambda v: isinstance(v, str) and v in action.choices, f"one of {', '.join(map(str, action.choices))}"
    if action.type is string_to_bool:
        return lambda v: isinstance(v, bool) or (isinstance(v, str) and _converts(string_to_bool, v)), "true or false"
    if action.type is int:
        return (
            lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and _converts(int, v)),
            "an integer",
        )
    if action.type is float:
        return (
            lambda v: (
                (isinstance(v, (int, float)) and not isinstance(v, bool))
                or (isinstance(v, str) and _converts(float, v))
            ),
            "a number",
        )
    if action.type is str:  # some string options also take a mapping or a list (lr_scheduler_kwargs, report_to)
        return lambda v: isinstance(v, (str, dict, list)), "a string"
    return lambda v: True, ""


def parse_args(argv: Sequence[str] | None = None) -> ArgumentGroups:
    """Recipe values as defaults, then the command line on top (the TRL parser's behaviour)."""
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not torch.accelerator.is_available():
        # Without use_cpu, TrainingArguments on a machine with no accelerator ignores a multi-process launch: every
        # process would train alone on all the data. With it, accelerate runs DDP over CPU processes (gloo).
        parser.set_defaults(use_cpu=True)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    config_path = pre.parse_known_args(argv)[0].config
    if config_path is not None:
        parser.set_defaults(**read_recipe(config_path, recipe_actions(parser)))
    *groups, _ = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    return tuple(groups)
