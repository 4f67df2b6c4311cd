"""File names and the per-architecture registry of matrices to cluster.

The registry follows PEFT's `TRANSFORMERS_MODELS_TO_*_TARGET_MODULES_MAPPING`: keyed by `config.model_type`, values
map a module-name suffix to its *role* in the MLP. Role "in" means the matrix's rows (read as `(out, in)`) are the
MLP's hidden neurons (up/gate/fc1); role "out" means its columns are (down/fc2). Matrices of one MLP share a group,
so a cluster is a real sub-MLP: hidden neuron i has one label in every matrix of the layer, and so does residual
dimension j.

A model class outside the registry (e.g. the paper's example networks in `hf_clusterable.examples`) declares its own
default with a class attribute `cluster_targets` of the same form; nothing is added to this table at import time.
"""

CONFIG_NAME = "cluster_config.json"
CLUSTERS_NAME = "clusters.safetensors"
METRICS_NAME = "cluster_metrics.json"
HEATMAP_NAME = "cluster_heatmap.png"

ROLE_IN = "in"
ROLE_OUT = "out"

_GPT2_MLP = {"mlp.c_fc": ROLE_IN, "mlp.c_proj": ROLE_OUT}
_NEOX_MLP = {"mlp.dense_h_to_4h": ROLE_IN, "mlp.dense_4h_to_h": ROLE_OUT}
_GLU_MLP = {"mlp.gate_proj": ROLE_IN, "mlp.up_proj": ROLE_IN, "mlp.down_proj": ROLE_OUT}
_FC_MLP = {"fc1": ROLE_IN, "fc2": ROLE_OUT}

# A regex value selects matrices that are each clustered on their own (no MLP coupling).
TRANSFORMERS_MODELS_TO_CLUSTER_TARGETS: dict[str, dict[str, str] | str] = {
    "gpt2": _GPT2_MLP,
    "gpt_neo": _GPT2_MLP,
    "gpt_neox": _NEOX_MLP,
    "gemma": _GLU_MLP,
    "gemma2": _GLU_MLP,
    "gemma3": _GLU_MLP,
    "gemma3_text": _GLU_MLP,
    "llama": _GLU_MLP,
    "mistral": _GLU_MLP,
    "qwen2": _GLU_MLP,
    "qwen3": _GLU_MLP,
    "olmo2": _GLU_MLP,
    "opt": _FC_MLP,
}

# Tasks of `hf-clusterable train` (recipe key `task`) and `hf-clusterable analyze` (`--task`). One spelling in code;
# `task_name` accepts the hyphenated spelling the analyze command has always used.
TRAIN_TASKS = ("causal_lm", "image_classification", "modular_addition")
ANALYSIS_TASKS = ("modular_addition", "digits", "causal_lm")


def task_name(value: str, choices: tuple[str, ...]) -> str:
    """`value` with hyphens read as underscores, checked against `choices`."""
    name = value.replace("-", "_")
    if name not in choices:
        raise ValueError(f"unknown task {value!r}; choose one of {', '.join(choices)}.")
    return name
