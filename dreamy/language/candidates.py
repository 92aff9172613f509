"""Candidate prompts: one-hot token gradients, top-k swaps, token filters and retokenization checks.

A prompt is `prefix + span + suffix` token ids; only the span is optimized. The gradient of the
objective (activation - lambda * cross-entropy) with respect to the span's one-hot token matrix ranks
replacement tokens per position (GCG); children swap one (or n) positions to top-k tokens.

Example:
    >>> from dreamy.models import load
    >>> lm = load("tiny:lm")
    >>> mask = allowed_tokens(lm.tokenizer)
    >>> bool(mask[lm.tokenizer.eos_token_id])
    False
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dreamy.language.fluency import span_xentropy
from dreamy.language.scoring import run_chunked
from dreamy.targets import Probe

log = logging.getLogger(__name__)

GRADIENT_CHUNK = 32  # rows per gradient pass: each holds a [L, vocab] one-hot and its gradient


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
    bos = tokenizer.bos_token_id
    if bos is None:
        bos = tokenizer.eos_token_id
    if bos is not None and (not prefix_ids or prefix_ids[0] != bos):
        prefix_ids = [bos] + prefix_ids
    if not prefix_ids:
        raise ValueError("the tokenizer has no BOS/EOS token; give a non-empty prefix text so the span can be scored")
    suffix_ids = tokenizer(suffix, add_special_tokens=False)["input_ids"] if suffix else []
    as_tensor = lambda ids: torch.tensor(ids, dtype=torch.long, device=device)
    return PromptLayout(as_tensor(prefix_ids), n_tokens, as_tensor(suffix_ids))


def allowed_tokens(tokenizer: Any, *, ascii_only: bool = True, vocab_size: int | None = None) -> Tensor:
    """Boolean mask `[V]` of tokens a candidate may use: no special tokens, and with `ascii_only`
    only tokens that decode to printable ASCII. Falls back (with a warning) to all non-special tokens
    if the filter would leave nothing."""
    size = vocab_size or len(tokenizer)
    mask = torch.ones(size, dtype=torch.bool)
    special = [i for i in tokenizer.all_special_ids if i is not None and i < size]
    mask[special] = False
    decoded = tokenizer.convert_ids_to_tokens(list(range(min(size, len(tokenizer)))))
    for i, token in enumerate(decoded):
        if token is None:
            mask[i] = False
    if size > len(tokenizer):
        mask[len(tokenizer):] = False
    if ascii_only:
        strict = mask.clone()
        for i in range(min(size, len(tokenizer))):
            if strict[i]:
                text = tokenizer.decode([i])
                if not text or not text.isascii() or not text.isprintable():
                    strict[i] = False
        if strict.any():
            return strict
        log.warning("no printable-ASCII token in the vocabulary; allowing all non-special tokens")
    return mask


def token_gradients(model: nn.Module, probe: Probe, layout: PromptLayout, spans: Tensor, lambdas: Tensor,
                    row_targets: Tensor | None = None, chunk_size: int = GRADIENT_CHUNK) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient of `activation - lambda * xentropy` for each row w.r.t. its span's one-hot tokens.

    `spans [M, L]`, `lambdas [M]`; returns `(grad [M, L, V], activation [M], xentropy [M])`. Rows are
    independent, so one backward gives every row's own gradient under its own lambda. With
    `row_targets [M]` row i is scored by the probe's target `row_targets[i]` (many targets packed into
    one batch), else by its first target. Rows run `chunk_size` at a time (the one-hot is `[rows, L, V]`;
    the chunk halves on out-of-memory errors).
    """
    embedding = model.get_input_embeddings()
    weight = embedding.weight
    start, end = layout.span
    owners = torch.zeros(spans.shape[0], dtype=torch.long) if row_targets is None else torch.as_tensor(row_targets)

    def one(rows: slice) -> tuple[Tensor, Tensor, Tensor]:
        part = spans[rows]
        full = layout.full(part)
        one_hot = torch.zeros(part.shape[0], part.shape[1], weight.shape[0], dtype=weight.dtype, device=weight.device)
        one_hot.scatter_(2, part[..., None], 1.0)
        one_hot.requires_grad_(True)
        embeds = embedding(full).detach()
        embeds = torch.cat([embeds[:, :start], one_hot @ weight, embeds[:, end:]], dim=1)
        with torch.enable_grad():
            result = probe(inputs_embeds=embeds, need_output=True, row_targets=owners[rows].to(weight.device))
            activation = result.row_scores
            xent = span_xentropy(result.output.logits, full, layout.span)
            objective = activation - lambdas[rows].to(activation) * xent
            (grad,) = torch.autograd.grad(objective.sum(), one_hot)
        return grad, activation.detach(), xent.detach()

    parts = run_chunked(one, spans.shape[0], chunk_size)
    return tuple(torch.cat([part[j] for part in parts]) for j in range(3))  # type: ignore[return-value]


def top_tokens(grad: Tensor, allowed: Tensor, topk: int) -> Tensor:
    """The `topk` allowed tokens with the largest gradient at each position: `[M, L, k]` from `grad [M, L, V]`.

    Example:
        >>> grad = torch.tensor([[[0.0, 3.0, 1.0, 2.0]]])
        >>> top_tokens(grad, torch.tensor([True, False, True, True]), 2).tolist()
        [[[3, 2]]]
    """
    vocab = grad.shape[2]
    masked = grad.masked_fill(~allowed.to(grad.device)[None, None, :vocab], float("-inf"))
    return masked.topk(min(topk, int(allowed[:vocab].sum())), dim=2).indices


def swap_children(spans: Tensor, top: Tensor, *, n_children: int, n_swaps: int = 1, generator: torch.Generator) -> Tensor:
    """Children `[M * n_children, L]`: each child of row m swaps `n_swaps` random positions of `spans[m]`
    to random tokens of `top[m]` (`[M, L, k]`, see `top_tokens`) at that position."""
    length, k = top.shape[1], top.shape[2]
    parents = spans.repeat_interleave(n_children, dim=0)
    children = parents.clone()
    rows = torch.arange(children.shape[0])
    owner = rows // n_children
    for _ in range(min(n_swaps, length)):
        pos = torch.randint(length, (children.shape[0],), generator=generator)
        pick = torch.randint(k, (children.shape[0],), generator=generator)
        children[rows, pos] = top[owner, pos, pick].to(children.dtype)
    return children


def sample_swaps(spans: Tensor, grad: Tensor, allowed: Tensor, *, n_children: int, topk: int, n_swaps: int = 1,
                 generator: torch.Generator) -> Tensor:
    """Children `[M * n_children, L]`: each child of row m swaps `n_swaps` random positions of `spans[m]`
    to random tokens among the top-k of `grad[m]` at that position (disallowed tokens excluded)."""
    return swap_children(spans, top_tokens(grad, allowed, topk), n_children=n_children, n_swaps=n_swaps,
                         generator=generator)


def survives_retokenization(tokenizer: Any, spans: Tensor) -> Tensor:
    """Mask `[N]` of spans whose text decodes and re-encodes to the very same tokens.

    Example:
        >>> from dreamy.models import load
        >>> tok = load("tiny:lm").tokenizer
        >>> ids = torch.tensor([tok("the cat")["input_ids"]])
        >>> survives_retokenization(tok, ids).tolist()
        [True]
    """
    keep = torch.zeros(spans.shape[0], dtype=torch.bool)
    for i, row in enumerate(spans.tolist()):
        text = tokenizer.decode(row)
        keep[i] = tokenizer(text, add_special_tokens=False)["input_ids"] == row
    return keep


def filter_candidates(tokenizer: Any, children: Tensor, *, retokenize: bool = True) -> Tensor:
    """Drop duplicate children and those that do not survive retokenization.

    Never returns an empty set silently: if nothing survives, it logs a warning and returns an empty
    tensor, and the optimizers keep the current prompts for that step.
    """
    unique = torch.unique(children, dim=0)
    if retokenize:
        unique = unique[survives_retokenization(tokenizer, unique)]
    if unique.shape[0] == 0:
        log.warning("no candidate survived the token filters this step; keeping the current prompts")
    return unique


def initial_spans(tokenizer: Any, allowed: Tensor, n: int, n_tokens: int, *, init: str | Sequence[int] | None,
                  generator: torch.Generator) -> Tensor:
    """Starting spans `[n, n_tokens]`: from `init` text/ids (padded or cut), else random allowed tokens."""
    if init is not None:
        ids = tokenizer(init, add_special_tokens=False)["input_ids"] if isinstance(init, str) else list(init)
        if not ids:
            raise ValueError(f"the initial prompt {init!r} has no tokens")
        ids = (ids * n_tokens)[:n_tokens]
        return torch.tensor(ids, dtype=torch.long)[None].repeat(n, 1)
    pool = allowed.nonzero().flatten()
    return pool[torch.randint(len(pool), (n, n_tokens), generator=generator)]
