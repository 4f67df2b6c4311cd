"""`ClusterConfig`: what to cluster and how hard to push, saved as `cluster_config.json` next to the weights.

Modelled on PEFT's config mixin: a flat dataclass, `save_pretrained`/`from_pretrained` that read a local folder or
the Hub, unknown keys dropped with a warning so configs written by newer versions still load, and the library
version stored for provenance.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.utils import PushToHubMixin

from .constants import CONFIG_NAME
from .utils.hub import hub_download_kwargs, resolve_file
from .utils.io import atomic_write
from .utils.validation import compile_regex, require_int
from .version import __version__


INITS = ("spectral", "blocks")
SCHEDULES = ("constant", "linear", "cosine")
TEACHER_DTYPES = ("bfloat16",)


@dataclass
class ClusterConfig(PushToHubMixin):
    """How to partition and regularise a model's matrices.

    Args:
        n_clusters (`int`, defaults to 4): clusters per matrix (the paper's k).
        targets (`list[str]` or `str`, *optional*): module names or name suffixes (a list), or a regex matched
            against full module names (a string). `None` uses the MLP matrices registered for the model type.
        coupled (`bool`, defaults to `True`): give an MLP's matrices one set of labels, so each cluster is a
            sub-MLP (hidden neuron i keeps its label in up, gate and down). `False` clusters every matrix alone,
            as the paper's code does.
        loss_weight (`float`, defaults to 20.0): lambda in `task_loss + lambda * (1 - mean clusterability)`.
        init (`str`, defaults to `"spectral"`): `"spectral"` co-clusters the weights; `"blocks"` uses fixed
            contiguous blocks (training from scratch).
        cluster_step (`int`, defaults to 0): optimizer step at which spectral clusters are computed; the loss
            applies from then on (a warm-up of N plain steps when > 0).
        recluster_every (`int`, defaults to 0): recompute spectral clusters every this many steps; 0 keeps them fixed.
        balance (`float`, defaults to 0.5): spectral clusters keep between (1 - balance) and (1 + balance) times
            their fair share of rows and of columns; 0 forces equal sizes.
        seed (`int`, defaults to 0): seed of the co-clustering.
        loss_weight_schedule (`str`, defaults to `"constant"`): how lambda reaches `loss_weight` once the loss
            applies: `"constant"` at once, `"linear"` or `"cosine"` ramps from 0 over `loss_weight_warmup_steps`
            steps counted from `cluster_step` (a sudden large lambda wrecks a pretrained model before the task loss
            can answer).
        loss_weight_warmup_steps (`int`, defaults to 0): length of the ramp; 0 means constant.
        distill_weight (`float`, defaults to 0.0): weight of the KL divergence from the frozen starting model's
            next-token distribution to the trained model's (self-distillation), added to the task loss; it keeps
            the model's behaviour while the regulariser moves its weights.
        distill_temperature (`float`, defaults to 1.0): softmax temperature of both distributions (the KL is
            scaled by its square, so gradients keep their size).
        teacher_dtype (`str`, *optional*): `"bfloat16"` keeps the frozen teacher copy in bf16 (half the memory);
            `None` keeps the model's dtype. A PEFT model needs no copy: its teacher is the base with adapters off.
        project_step (`int`, *optional*): optimizer step at which every target's off-block weights are set to zero
            (clusterability exactly 1) and kept at zero from then on, so the steps after it heal the model with the
            clusters fixed. `None` never projects.
    """

    n_clusters: int = field(default=4, metadata={"help": "Clusters per matrix (k)."})
    targets: list[str] | str | None = field(
        default=None, metadata={"help": "Module names/suffixes or a regex; default: the model type's MLP matrices."}
    )
    coupled: bool = field(default=True, metadata={"help": "One set of labels per MLP, so clusters are sub-MLPs."})
    loss_weight: float = field(default=20.0, metadata={"help": "lambda in task + lambda * (1 - mean C)."})
    init: str = field(default="spectral", metadata={"help": "'spectral' co-clustering or fixed 'blocks'."})
    cluster_step: int = field(default=0, metadata={"help": "Step at which spectral clusters are computed."})
    recluster_every: int = field(default=0, metadata={"help": "Re-cluster every N steps; 0 keeps clusters fixed."})
    balance: float = field(default=0.5, metadata={"help": "Allowed relative deviation of cluster sizes from n/k."})
    seed: int = field(default=0, metadata={"help": "Seed of the spectral co-clustering."})
    loss_weight_schedule: str = field(
        default="constant", metadata={"help": "'constant', or a 'linear'/'cosine' ramp of lambda from 0."}
    )
    loss_weight_warmup_steps: int = field(
        default=0, metadata={"help": "Steps of the lambda ramp, counted from cluster_step; 0 is constant."}
    )
    distill_weight: float = field(
        default=0.0, metadata={"help": "Weight of the KL from the frozen starting model (self-distillation)."}
    )
    distill_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the distillation."})
    teacher_dtype: str | None = field(
        default=None, metadata={"help": "'bfloat16' stores the frozen teacher copy in bf16; None keeps the dtype."}
    )
    project_step: int | None = field(
        default=None, metadata={"help": "Step at which off-block weights are zeroed and kept at zero; None never."}
    )
    model_type: str | None = field(default=None, metadata={"help": "Filled in from the model when saved."})
    base_model_name_or_path: str | None = field(default=None, metadata={"help": "Filled in from the model."})
    hf_clusterable_version: str = field(default=__version__, metadata={"help": "Version that wrote this config."})

    def __post_init__(self) -> None:
        require_int("n_clusters", self.n_clusters, 2)
        if isinstance(self.loss_weight, bool) or not isinstance(self.loss_weight, (int, float)):
            raise ValueError(f"loss_weight must be a number, got {self.loss_weight!r}.")
        if not math.isfinite(self.loss_weight) or self.loss_weight < 0:
            raise ValueError(f"loss_weight must be finite and >= 0, got {self.loss_weight!r} (the paper uses 20-40).")
        if not isinstance(self.init, str) or self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}.")
        for name in ("cluster_step", "recluster_every", "seed", "loss_weight_warmup_steps"):
            require_int(name, getattr(self, name), 0)
        if not isinstance(self.loss_weight_schedule, str) or self.loss_weight_schedule not in SCHEDULES:
            raise ValueError(f"loss_weight_schedule must be one of {SCHEDULES}, got {self.loss_weight_schedule!r}.")
        for name, low in (("distill_weight", 0.0), ("distill_temperature", None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}.")
            if (low is not None and value < low) or (low is None and value <= 0):
                raise ValueError(f"{name} must be {'>= 0' if low is not None else '> 0'}, got {value!r}.")
        if self.teacher_dtype is not None and self.teacher_dtype not in TEACHER_DTYPES:
            raise ValueError(f"teacher_dtype must be None or one of {TEACHER_DTYPES}, got {self.teacher_dtype!r}.")
        if self.project_step is not None:
            require_int("project_step", self.project_step, 1, "the step after which off-block weights are zeroed")
            if self.init == "spectral" and self.project_step <= self.cluster_step:
                raise ValueError(
                    f"project_step {self.project_step} must come after cluster_step {self.cluster_step}: "
                    "spectral clusters must exist before their off-block weights can be zeroed."
                )
        if isinstance(self.balance, bool) or not isinstance(self.balance, (int, float)) or not 0 <= self.balance < 1:
            raise ValueError(f"balance must be in [0, 1), got {self.balance!r}; 0 forces equal cluster sizes.")
        if not isinstance(self.coupled, bool):
            raise ValueError(f"coupled must be true or false, got {self.coupled!r}.")
        for name in ("model_type", "base_model_name_or_path", "hf_clusterable_version"):
            value = getattr(self, name)
            if not isinstance(value, str) and (value is not None or name == "hf_clusterable_version"):
                raise ValueError(f"{name} must be a string, got {value!r}.")
        if isinstance(self.targets, str):
            compile_regex("targets", self.targets)
        elif self.targets is not None:
            targets = list(self.targets) if isinstance(self.targets, (list, tuple)) else None
            if not targets or not all(isinstance(t, str) and t for t in targets):
                raise ValueError(
                    f"targets must be a regex string or a non-empty list of module names, got {self.targets!r}."
                )
            self.targets = targets

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write `cluster_config.json` atomically. Extra kwargs (from `push_to_hub`) are accepted and ignored."""
        if os.path.isfile(save_directory):
            raise ValueError(f"save_directory {save_directory} is a file; pass a folder.")
        atomic_write(Path(save_directory, CONFIG_NAME), self.to_json_string())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterConfig:
        if not isinstance(data, Mapping):
            raise TypeError(f"a cluster config must be a JSON object (a mapping), got {type(data).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known, key=str)
        if unknown:
            warnings.warn(
                f"Ignoring unknown keys {unknown} in {CONFIG_NAME}; it was probably written by a newer "
                "hf-clusterable (`pip install -U hf-clusterable`).",
                stacklevel=2,
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> ClusterConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"could not read {path}: {err}; rewrite it with ClusterConfig.save_pretrained.") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}.")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"invalid {CONFIG_NAME} at {path}: {err}") from err

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, subfolder: str | None = None, **kwargs
    ) -> ClusterConfig:
        """Load from a local folder or a Hub repo id; Hub kwargs (revision, token, ...) go to `hf_hub_download`."""
        hub_keys = hub_download_kwargs()
        hub_kwargs = {k: v for k, v in kwargs.items() if k in hub_keys}
        overrides = {k: v for k, v in kwargs.items() if k not in hub_keys}
        path = resolve_file(pretrained_model_name_or_path, CONFIG_NAME, subfolder, **hub_kwargs)
        config = cls.from_json_file(path)
        return dataclasses.replace(config, **overrides) if overrides else config
