"""Means and spreads that skip NaN, which analysis uses for "nothing to measure" (no damage, no skill to keep)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def nanmean(values: Iterable[float]) -> float:
    """Mean of the values that are not NaN; NaN if none are."""
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def nanstd(values: Iterable[float]) -> float:
    """Sample standard deviation of the values that are not NaN; 0 with fewer than two of them."""
    finite = [v for v in values if not math.isnan(v)]
    if len(finite) < 2:
        return 0.0
    m = sum(finite) / len(finite)
    return math.sqrt(sum((v - m) ** 2 for v in finite) / (len(finite) - 1))
