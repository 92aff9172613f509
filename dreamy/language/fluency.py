"""Fluency: the prompt's own mean next-token cross-entropy under a language model.

Example:
    >>> import torch
    >>> logits = torch.zeros(1, 4, 10)
    >>> round(span_xentropy(logits, torch.tensor([[1, 2, 3, 4]]), (1, 4)).item(), 4)  # uniform: log(10)
    2.3026
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def span_xentropy(logits: Tensor, ids: Tensor, span: tuple[int, int], logits_offset: int = 0) -> Tensor:
    """Mean cross-entropy `[N]` of tokens `ids[:, start:end]`, each predicted by the logits one position earlier.

    `logits[:, j]` are the predictions made at sequence position `j + logits_offset`. `start` must be >= 1
    (the first token of a sequence has no prediction).
    """
    start, end = span
    if start < 1:
        raise ValueError(f"the cross-entropy span must start at >= 1 (got {start}); prepend a BOS or prefix token")
    pred = logits[:, start - 1 - logits_offset : end - 1 - logits_offset]
    if pred.shape[1] != end - start:
        raise ValueError(f"logits cover too few positions for span {span} (offset {logits_offset})")
    tokens = ids[:, start:end]
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), tokens.reshape(-1), reduction="none")
    return ce.view(tokens.shape).mean(dim=1)


@torch.no_grad()
def xentropy(model: nn.Module, ids: Tensor, span: tuple[int, int]) -> Tensor:
    """Mean cross-entropy `[N]` of `ids[:, start:end]` under `model` (e.g. a second fluency model sharing the tokenizer).

    Example:
        >>> from dreamy.models import load
        >>> lm = load("tiny:lm")
        >>> xentropy(lm.model, torch.tensor([[0, 5, 6, 7]]), (1, 4)).shape
        torch.Size([1])
    """
    return span_xentropy(model(input_ids=ids).logits, ids, span)
