"""Jinja templates shipped inside the wheel: the model card and the analysis report."""

from __future__ import annotations

import importlib.resources


def template_text(name: str) -> str:
    """The text of a template in this package."""
    return (importlib.resources.files(__name__) / name).read_text(encoding="utf-8")
