"""Measuring a model from its safetensors files, one matrix at a time, never the whole model in memory.

A Llama-2-7B is 13.5 GB of bf16 weights (a 70B, 140 GB), yet co-clustering and scoring look at one MLP at a time.
The model's structure (module names, `Conv1D` or `Linear`, shapes) comes from a skeleton built on the meta device,
which allocates no weights, so `find_targets` resolves exactly the targets it finds on the loaded model. Checkpoint
keys are matched to the skeleton's parameters the way transformers matches them when loading (the architecture's
key renamings, then the base-model prefix added or dropped), and a tied weight is read from the tensor it is tied
to. Each lookup reads one tensor of one shard into fp32 with `safe_open`, a block of rows at a time, so a matrix
costs its fp32 copy and no more: a Llama-2-7B is measured in about 0.5 GiB above the interpreter, a 70B-shaped
one in about 1.8 GiB (`benchmarks/measure_from_disk.py`).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers.pytorch_utils import Conv1D
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .loading import auto_class_for, load_model


def streamable(path: str | os.PathLike, gguf_file: str | None = None) -> bool:
    """True when `path` is a local folder whose weights can be read tensor by tensor: a `config.json` and
    unquantised safetensors weights (one `model.safetensors`, or shards with their index)."""
    folder = Path(path).expanduser()
    if gguf_file or not (folder / CONFIG_NAME).is_file():
        return False
    if not ((folder / SAFE_WEIGHTS_INDEX_NAME).is_file() or (folder / SAFE_WEIGHTS_NAME).is_file()):
        return False
    try:
        config = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False  # the loader reports what is wrong with it
    return isinstance(config, dict) and "quantization_config" not in config  # packed weights are no plain matrices


def checkpoint_files(folder: Path) -> dict[str, Path]:
    """Checkpoint key -> the safetensors file holding it, from the shard index or from the single file's header."""
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            return {str(key): folder / str(name) for key, name in weight_map.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"could not read the shard index {index}: {err!r}; re-save the model.") from err
    single = folder / SAFE_WEIGHTS_NAME
    try:
        with safe_open(single, framework="pt") as f:
            return dict.fromkeys(f.keys(), single)
    except (OSError, SafetensorError) as err:
        raise ValueError(f"could not read {single}: {err}; re-save the model.") from err


def skeleton(folder: Path) -> nn.Module:
    """The model `load_model` builds for `folder`, on the meta device: names, module types and shapes, no weights."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        return auto_class_for(config).from_config(config).eval()


def parameter_keys(model: nn.Module, keys: Iterable[str]) -> dict[str, str]:
    """Model parameter name -> checkpoint key, matched as transformers matches them when loading.

    The architecture's renamings apply first, then the base-model prefix is added or dropped (a `GPT2Model`
    checkpoint stores `h.0.mlp.c_fc.weight` for `transformer.h.0.mlp.c_fc.weight`). Keys a converter merges or
    splits on load (fused MoE experts, ...) are left out: they are not one stored tensor. A tied parameter maps to
    the key of the tensor it is tied to.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    state = model.state_dict()
    prefix = getattr(model, "base_model_prefix", None)
    found: dict[str, str] = {}
    for key in sorted(keys):
        name, converted = rename_source_key(
            key, renamings, converters, base_model_prefix=prefix, meta_state_dict=state
        )
        if name not in state and key in state:  # as transformers does: a key that needed no renaming keeps its name
            name, converted = rename_source_key(key, [], [], base_model_prefix=prefix, meta_state_dict=state)
        if converted is None and name in state:
            found.setdefault(name, key)
    for tied, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        if tied not in found and source in found:
            found[tied] = found[source]
    return found


def read_fp32(path: Path, key: str, shape: tuple[int, ...], block_elements: int = 2**23) -> torch.Tensor:
    """A stored tensor of `shape` (at least 1-D) as a new fp32 tensor, read in blocks of rows, each through its own
    `safe_open`.

    `safe_open` maps the file, and the pages a block touches stay resident until that mapping is closed: one
    opening per block lets them go block by block, so reading a matrix costs its fp32 copy and one block more.
    """
    out = torch.empty(shape, dtype=torch.float32)
    rows = max(1, block_elements // max(1, out[0].numel()))
    for start in range(0, shape[0], rows):
        with safe_open(path, framework="pt") as f:
            out[start : start + rows] = f.get_slice(key)[start : start + rows]
    return out


class DiskWeights(Mapping[str, torch.Tensor]):
    """The `(out, in)` weights of a checkpoint's matrices by module name, each read from disk when looked up.

    Nothing is kept between lookups, so whoever holds the returned tensor decides what stays in memory. `model` is
    the skeleton on the meta device. A tensor comes as a new fp32 tensor (what co-clustering and scoring compute
    in) in its stored layout, transposed for GPT-2's `Conv1D` as `get_weight` gives it of a loaded model, so every
    computation sees the values and the memory layout it would see on the loaded model.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).expanduser()
        self.files = checkpoint_files(self.folder)
        self.model = skeleton(self.folder)
        self.keys_of = parameter_keys(self.model, self.files)
        self.modules = {
            name: module
            for name, module in self.model.named_modules()
            if isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.ndim == 2
        }

    def select(self, names: Iterable[str]) -> DiskWeights:
        """The same checkpoint, restricted to `names` (e.g. the matrices a plot draws)."""
        view = copy.copy(self)
        view.modules = {name: self.modules[name] for name in names}
        return view

    def __iter__(self) -> Iterator[str]:
        return iter(self.modules)

    def __len__(self) -> int:
        return len(self.modules)

    def __contains__(self, name: object) -> bool:
        return name in self.modules

    def __getitem__(self, name: str) -> torch.Tensor:
        module = self.modules[name]
        key = self.keys_of.get(f"{name}.weight")
        if key is None:
            raise ValueError(
                f"{self.folder} holds no tensor for {name}.weight (it is missing, or transformers converts it on "
                "load); load the model with from_pretrained and measure that instead."
            )
        path = self.files[key]
        try:
            with safe_open(path, framework="pt") as f:
                shape = tuple(f.get_slice(key).get_shape())
            if shape != tuple(module.weight.shape):
                raise ValueError(
                    f"{key} in {path} has shape {shape} but {CONFIG_NAME} gives {name} the shape "
                    f"{tuple(module.weight.shape)}; the config does not match the weights."
                )
            tensor = read_fp32(path, key, shape)
        except (OSError, SafetensorError) as err:
            raise OSError(f"could not read {key} from {path}: {err}") from err
        return tensor.T if isinstance(module, Conv1D) else tensor


def open_model(name: str | os.PathLike, gguf_file: str | None = None) -> nn.Module | DiskWeights:
    """`DiskWeights` for a local folder of safetensors weights (nothing loaded), else the model from `load_model`
    (a Hub id, a GGUF file, `.bin` weights, a quantised checkpoint)."""
    if streamable(name, gguf_file):
        return DiskWeights(name)
    return load_model(os.fspath(name), gguf_file)
