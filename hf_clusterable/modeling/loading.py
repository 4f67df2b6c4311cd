"""Loading a model by name for commands that take one: a local folder or a Hub id, optionally a GGUF file in it.

One loader for every command (`measure`, `push`, `train`, `extract`), so they agree on what a name means: the causal
LM head when the architecture has one, the bare model otherwise, and GGUF weights de-quantised to plain floats.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..utils.hub import require_local_or_repo


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


def load_model(name: str, gguf_file: str | None = None, *, auto_class: Any = None, **kwargs: Any) -> nn.Module:
    """A model from a local folder or Hub id: `auto_class` if given, else the causal LM class when the architecture
    has one and `AutoModel` otherwise. `kwargs` go to `from_pretrained` (revision, dtype, config overrides...)."""
    from transformers import AutoConfig

    name = require_local_or_repo(name, "model", "model folder")
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    if auto_class is None:
        config = AutoConfig.from_pretrained(
            name, **{k: v for k, v in kwargs.items() if k in ("gguf_file", "revision")}
        )
        auto_class = auto_class_for(config)
    model = auto_class.from_pretrained(name, **kwargs)
    return dequantised(model) if gguf_file else model
