"""Which matrices of a model are clustered, how each is oriented, and which share labels.

Every weight is read as `(out_features, in_features)`: GPT-2's `Conv1D` stores the transpose, so it is viewed
through `.T` (no copy). A LoRA layer contributes its effective weight W + delta, so the loss reaches the adapters.
Matrices of one MLP form a *group* whose partition has the hidden neurons as rows and the residual dimensions as
columns; a down projection is stored the other way round and takes the transposed partition.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..constants import ROLE_OUT, TRANSFORMERS_MODELS_TO_CLUSTER_TARGETS
from ..core.partition import check_n_clusters
from ..utils.validation import compile_regex


@dataclass(frozen=True)
class Target:
    """One clustered matrix.

    `group` names the matrices sharing labels; `transposed` is True when this matrix's rows are the group's column
    side (a down projection). `shape` is `(out_features, in_features)`.
    """

    name: str
    group: str
    transposed: bool
    shape: tuple[int, int]

    @property
    def group_shape(self) -> tuple[int, int]:
        return (self.shape[1], self.shape[0]) if self.transposed else self.shape


def base_model(model: nn.Module) -> nn.Module:
    """Strip PEFT and torch.compile wrappers so module names are the plain transformers names."""
    model = getattr(model, "_orig_mod", model)
    return model.get_base_model() if isinstance(model, PeftModel) else model


def modules_by_name(model: nn.Module) -> dict[str, nn.Module]:
    """Modules under their plain transformers names (what targets and partitions are keyed by), wrappers stripped."""
    return dict(base_model(model).named_modules())


def stored_weight(module: nn.Module) -> torch.Tensor:
    if isinstance(module, BaseTunerLayer):
        return stored_weight(module.get_base_layer())
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{type(module).__name__} has no weight tensor to cluster.")
    return weight


def weight_shape(module: nn.Module) -> tuple[int, int]:
    """`(out, in)` shape, using DeepSpeed ZeRO-3's `ds_shape` when the local tensor is a placeholder."""
    stored = stored_weight(module)
    shape = tuple(getattr(stored, "ds_shape", stored.shape))
    if len(shape) != 2:
        raise ValueError(f"{type(module).__name__} weight has shape {shape}; only 2-D matrices can be clustered.")
    return (shape[1], shape[0]) if _is_conv1d(module) else shape


def _is_conv1d(module: nn.Module) -> bool:
    if isinstance(module, BaseTunerLayer):
        return _is_conv1d(module.get_base_layer())
    return isinstance(module, Conv1D)


def get_weight(module: nn.Module) -> torch.Tensor:
    """The module's effective weight as `(out_features, in_features)`: a view for plain layers, W + delta for LoRA."""
    weight = stored_weight(module)
    if isinstance(module, LoraLayer) and not module.merged and not module.disable_adapters:
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                weight = weight + module.get_delta_weight(adapter)  # delta is already in the stored layout
    return weight.T if _is_conv1d(module) else weight


def _matrix_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules with a 2-D weight, skipping the internals of PEFT tuner layers (lora_A, base_layer, ...)."""
    found: dict[str, nn.Module] = {}
    tuner_prefixes: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(p) for p in tuner_prefixes):
            continue
        if isinstance(module, BaseTunerLayer):
            tuner_prefixes.append(name + ".")
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and len(getattr(weight, "ds_shape", weight.shape)) == 2:
            found[name] = module
    return found


# Time one targets regex may spend on all of a model's module names. A sane pattern needs microseconds per name; a
# pattern with nested repeats such as (a|aa)+ backtracks exponentially, and a downloaded cluster_config.json must not
# be able to hang measure, push or a resumed training run.
REGEX_SECONDS = 2.0


def matching_names(names: list[str], targets: list[str] | str, seconds: float | None = None) -> list[str]:
    """The names `targets` selects: a list matches whole names or dotted suffixes, a string is a regex matched
    against whole names within `seconds` in all (default `REGEX_SECONDS`; the `regex` engine, which also avoids most
    exponential cases)."""
    if not isinstance(targets, str):
        return [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]
    pattern = compile_regex("targets", targets)
    seconds = REGEX_SECONDS if seconds is None else seconds
    deadline = time.monotonic() + seconds
    matched = []
    for name in names:
        try:
            if pattern.fullmatch(name, timeout=max(deadline - time.monotonic(), 1e-3)) is not None:
                matched.append(name)
        except TimeoutError:
            raise ValueError(
                f"targets regex {targets!r} took more than {seconds:g} s to match {len(names)} module names "
                f"(stopped at {name!r}); simplify it: nested repeats such as (.*)* or (a|aa)+ backtrack exponentially."
            ) from None
    return matched


def _candidates(names: list[str], limit: int = 25) -> str:
    patterns = sorted({re.sub(r"\.\d+(?=\.|$)", ".N", n) for n in names})
    shown = ", ".join(patterns[:limit])
    return shown + (f", ... ({len(patterns) - limit} more)" if len(patterns) > limit else "")


def _role(name: str, roles: dict[str, str]) -> tuple[str, str] | None:
    for suffix, role in roles.items():
        if name == suffix or name.endswith("." + suffix):
            return suffix, role
    return None


def find_targets(
    model: nn.Module, targets: list[str] | str | None = None, *, coupled: bool = True, n_clusters: int | None = None
) -> list[Target]:
    """Resolve target matrices in `model` (default: the registered MLP matrices of its `model_type`, or the
    `cluster_targets` its class declares).

    With `coupled=True`, matrices whose suffix has an MLP role in the registry share labels with the other matrices
    of the same MLP; anything else is clustered on its own. Raises a one-line error listing candidate module names
    when nothing matches, and checks `n_clusters` against every matrix before any work is done.
    """
    model = base_model(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    modules = _matrix_modules(model)
    default = TRANSFORMERS_MODELS_TO_CLUSTER_TARGETS.get(model_type, getattr(type(model), "cluster_targets", None))
    roles = default if isinstance(default, dict) else {}
    if targets is None:
        if default is None:
            raise ValueError(
                f"no default targets for model_type {model_type!r}; pass targets (module names or suffixes, or a "
                f"regex). Candidate matrices: {_candidates(list(modules))}"
            )
        targets = default if isinstance(default, str) else list(roles)
    matched = matching_names(list(modules), targets)
    if not matched:
        raise ValueError(
            f"targets {targets!r} match no module with a 2-D weight in {type(model).__name__}. "
            f"Candidate matrices: {_candidates(list(modules))}"
        )
    found = []
    for name in matched:
        shape = weight_shape(modules[name])
        if n_clusters is not None:
            check_n_clusters(n_clusters, shape, name)
        role = _role(name, roles) if coupled else None
        if role is None:
            found.append(Target(name, name, False, shape))
        else:
            suffix, kind = role
            found.append(Target(name, name[: -len(suffix)].rstrip("."), kind == ROLE_OUT, shape))
    _check_groups(found)
    return found


def _check_groups(targets: list[Target]) -> None:
    shapes: dict[str, tuple[str, tuple[int, int]]] = {}
    for t in targets:
        first = shapes.setdefault(t.group, (t.name, t.group_shape))
        if first[1] != t.group_shape:
            raise ValueError(
                f"{t.name} {t.shape} cannot share clusters with {first[0]} (hidden x residual {first[1]}); "
                "set coupled=False to cluster each matrix on its own."
            )


def groups(targets: list[Target]) -> dict[str, list[Target]]:
    """Targets by group, in model order."""
    out: dict[str, list[Target]] = {}
    for t in targets:
        out.setdefault(t.group, []).append(t)
    return out
