"""Loading a model by name for commands that take one: a local folder or a Hub id, optionally a GGUF file in it.

One loader for every command (`measure`, `push`, `train`, `extract`), so they agree on what a name means: the causal
LM head when the architecture has one, the bare model otherwise, and GGUF weights de-quantised to plain floats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from ..utils.hub import looks_local, require_local_or_repo


def dequantised(model: nn.Module) -> nn.Module:
    """Clear the GGUF marks of a model transformers has already de-quantised into plain float tensors.

    The weights are ordinary `nn.Linear` parameters, but the model keeps the GGUF "quantizer", so `Trainer` would
    refuse to fine-tune it and `save_pretrained` would record a quantization config that the saved floats do not have.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model


def auto_class_for(config: Any) -> Any:
    """The causal LM auto class when the architecture has one, `AutoModel` otherwise (one choice for every loader)."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    return AutoModelForCausalLM if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING else AutoModel


def gguf_source(name: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(folder or Hub id, GGUF file name) to load: a `.gguf` path is its folder and name, and a local folder without a
    `config.json` uses its one `.gguf` file, so `measure DIR` needs no `gguf_file` when there is nothing to choose."""
    path = Path(name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf" and gguf_file is None:
        return str(path.parent), path.name
    if not path.is_dir() or not looks_local(name):
        return name, gguf_file
    found = sorted(p.name for p in path.glob("*.gguf"))
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise FileNotFoundError(
                f"gguf_file {gguf_file}: no such file in {name}"
                + (f" (it holds {', '.join(found)})." if found else ".")
            )
        return name, gguf_file
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return name, None
    if len(found) == 1:
        return name, found[0]
    if found:
        raise ValueError(f"{name} holds {len(found)} GGUF files ({', '.join(found[:4])}); pick one with gguf_file.")
    raise ValueError(f"{name} is not a model folder: it has no config.json and no .gguf file.")


def load_model(name: str, gguf_file: str | None = None, *, auto_class: Any = None, **kwargs: Any) -> nn.Module:
    """A model from a local folder or Hub id: `auto_class` if given, else the causal LM class when the architecture
    has one and `AutoModel` otherwise. `kwargs` go to `from_pretrained` (revision, dtype, config overrides...)."""
    from transformers import AutoConfig

    name, gguf_file = gguf_source(require_local_or_repo(name, "model", "model folder"), gguf_file)
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if auto_class is None:
        config = AutoConfig.from_pretrained(
            name, **{k: v for k, v in kwargs.items() if k in ("gguf_file", "revision")}
        )
        auto_class = auto_class_for(config)
    model = auto_class.from_pretrained(name, **kwargs)
    return dequantised(model) if gguf_file else model
