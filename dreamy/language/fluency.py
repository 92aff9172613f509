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
from torch import Tensor


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


def relaxed_span_xentropy(logits: Tensor, labels: Tensor, span: tuple[int, int], logits_offset: int = 0) -> Tensor:
    """Mean cross-entropy `[N]` of the span with relaxed labels: `-mean_i sum_v labels[:, i, v] * log p(v | < i)`.

    `labels [N, L, V]` are the span's (one-hot or relaxed) token rows, `L = end - start`; at one-hot rows
    this equals `span_xentropy` of those tokens. Gradients reach both the logits and the labels (EPO's token
    gradient, see `dreamy.language.gradients`). `logits` and `logits_offset` as in `span_xentropy`.

    Example:
        >>> logits = torch.zeros(1, 4, 10)
        >>> labels = torch.nn.functional.one_hot(torch.tensor([[2, 3, 4]]), 10).float()
        >>> round(relaxed_span_xentropy(logits, labels, (1, 4)).item(), 4)
        2.3026
    """
    start, end = span
    if start < 1:
        raise ValueError(f"the cross-entropy span must start at >= 1 (got {start}); prepend a BOS or prefix token")
    pred = logits[:, start - 1 - logits_offset : end - 1 - logits_offset]
    if pred.shape[1] != end - start or labels.shape[1] != end - start:
        raise ValueError(f"logits ({pred.shape[1]} positions, offset {logits_offset}) or labels ({labels.shape[1]} rows) "
                         f"do not cover span {span}")
    logprobs = pred.to(torch.promote_types(pred.dtype, torch.float32)).log_softmax(dim=-1)
    return -(labels.to(logprobs.dtype) * logprobs).sum(dim=-1).mean(dim=1)
