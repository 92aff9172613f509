"""Token-space labels: a one-token label for a target, searched by gradient descent over a relaxed label token with
the language model as the judge that must predict the target's activation from the label (Schulz & Fallows 2025).

- `token_labels(loaded, target, windows, config)` (search.py) with `LabelConfig` (config.py) -> `TokenLabels`: the top
  label tokens with the judge's held-out accuracy, and the baseline rule (the most frequent top-activating token).

Example:
    >>> import torch
    >>> from dreamy.models import load
    >>> windows = torch.randint(3, 300, (24, 6), generator=torch.Generator().manual_seed(0))
    >>> found = token_labels(load("tiny:lm"), "model.layers.1:3", windows, active=6, inactive=6, steps=1, top=2,
    ...                      answers=(" the", " a"))
    >>> [label.id for label in found.labels] == [r["id"] for r in found.to_records()[0]["labels"]]
    True
"""

from dreamy.labels.config import LabelConfig
from dreamy.labels.search import BaselineRule, LabelScore, TokenLabels, token_labels, window_activations

__all__ = ["BaselineRule", "LabelConfig", "LabelScore", "TokenLabels", "token_labels", "window_activations"]
