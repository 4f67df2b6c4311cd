"""`compute_metrics` functions for `Trainer`.

Accuracy is two lines of numpy; the `evaluate` library would fetch its metric script from the Hub, which fails
offline, so it is not a dependency.
"""

from __future__ import annotations

import numpy as np


def accuracy(eval_pred) -> dict[str, float]:
    """`compute_metrics` for classification: the share of argmax predictions equal to the label."""
    logits, labels = eval_pred
    return {"accuracy": float((np.asarray(logits).argmax(-1) == np.asarray(labels)).mean())}
