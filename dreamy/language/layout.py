"""Prompt layout: a fixed `prefix`, the optimized span of `n_tokens`, a fixed `suffix`, as token ids.

Example:
    >>> from dreamy.models import load
    >>> layout = make_layout(load("tiny:lm").tokenizer, 4, suffix=" cat")
    >>> layout.span
    (1, 5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class PromptLayout:
    """Where the optimized span sits: `prefix` ids, span length, `suffix` ids.

    Example:
        >>> layout = PromptLayout(torch.tensor([0]), 4, torch.tensor([9]))
        >>> layout.span, layout.length
        ((1, 5), 6)
    """

    prefix: Tensor
    n_tokens: int
    suffix: Tensor

    @property
    def span(self) -> tuple[int, int]:
        """Start and end of the optimized span in the full sequence."""
        start = len(self.prefix)
        return start, start + self.n_tokens

    @property
    def length(self) -> int:
        """Length of the full sequence."""
        return len(self.prefix) + self.n_tokens + len(self.suffix)

    def full(self, spans: Tensor) -> Tensor:
        """Full sequences `[N, length]` from spans `[N, n_tokens]`."""
        n = spans.shape[0]
        return torch.cat([self.prefix.expand(n, -1), spans, self.suffix.expand(n, -1)], dim=1)


def start_token(tokenizer: Any, required: bool = True) -> int | None:
    """The token that starts every prompt and every corpus window: BOS, else EOS (`ValueError` for a tokenizer
    with neither, unless not `required`).

    Example:
        >>> from dreamy.models.tiny import tiny_tokenizer
        >>> start_token(tiny_tokenizer())
        0
    """
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None and required:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start windows with")
    return None if token is None else int(token)


def make_layout(tokenizer: Any, n_tokens: int, prefix: str = "", suffix: str = "", device: str | torch.device = "cpu") -> PromptLayout:
    """Tokenize fixed prefix/suffix texts; a BOS token (if the tokenizer has one) starts the prefix so that
    the first span token has a prediction to be scored against.

    Example:
        >>> from dreamy.models import load
        >>> make_layout(load("tiny:lm").tokenizer, 4).span
        (1, 5)
    """
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1, got {n_tokens}")
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    bos = start_token(tokenizer, required=False)
    if bos is not None and (not prefix_ids or prefix_ids[0] != bos):
        prefix_ids = [bos] + prefix_ids
    if not prefix_ids:
        raise ValueError("the tokenizer has no BOS/EOS token; give a non-empty prefix text so the span can be scored")
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    as_tensor = lambda ids: torch.tensor(ids, dtype=torch.long, device=device)
    return PromptLayout(as_tensor(prefix_ids), n_tokens, as_tensor(suffix_ids))
