"""What the language scorers share: scores of N sequences, the states children reuse from their parents (KV
caches, span cross-entropy, log-probabilities), and the one KV-cache builder. `scoring` and `packed` both
build on this module and not on each other.

Example:
    >>> from dreamy.models import load
    >>> states = parent_states(load("tiny:lm").model, torch.tensor([[0, 5, 6, 7], [0, 5, 9, 7]]), (1, 4))
    >>> states.n_parents, tuple(states.rows(1).token_xent.shape)
    (2, (1, 3))
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dreamy.core.memory import run_chunked

PARENT_CHUNK = 16  # parents per forward when building the caches children reuse


@dataclass
class SequenceScores:
    """Target scores `[N, n_targets]` and mean span cross-entropy `[N]` of N sequences."""

    activation: Tensor
    xentropy: Tensor


def cache_kwarg(model: nn.Module) -> str:
    """The keyword a Hugging Face model takes for its KV cache (`cache` in transformers 5, else `past_key_values`)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache of a Hugging Face model output, whichever name it has."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether the model's forward can skip the output layer on some positions (`logits_to_keep`).

    Example:
        >>> from dreamy.models import load
        >>> takes_logits_to_keep(load("tiny:lm").model)
        True
    """
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def span_logits(model: nn.Module, length: int, span: tuple[int, int]) -> tuple[dict[str, int], int]:
    """`logits_to_keep` for a forward of `length` tokens whose logits serve only the span's cross-entropy and
    the last position: the output layer then skips the prefix (for a 135M model with a 50k vocabulary, a fifth
    of its FLOPs per token). Returns (extra forward kwargs, logits offset); nothing when the model lacks it."""
    if not takes_logits_to_keep(model):
        return {}, 0
    offset = span[0] - 1
    return {"logits_to_keep": length - offset}, offset


def cache_rows(layers: list[tuple[Tensor, Tensor]], parents: Tensor, length: int | None = None) -> Any:
    """A KV cache whose row r holds parent `parents[r]`'s keys and values (their first `length` positions), or,
    for `parents [R, K]`, the K parents `parents[r]` end to end (the one cache builder of every scorer).

    Example:
        >>> layers = [(torch.arange(12.0).view(3, 1, 4, 1), torch.zeros(3, 1, 4, 1))]
        >>> cache_rows(layers, torch.tensor([2, 0]), length=2).layers[0].keys.flatten().tolist()
        [8.0, 9.0, 0.0, 1.0]
        >>> cache_rows(layers, torch.tensor([[1, 2]])).layers[0].keys.shape
        torch.Size([1, 1, 8, 1])
    """
    from transformers import DynamicCache

    picks = parents if parents.ndim == 2 else parents[:, None]
    rows, k = picks.shape
    cache = DynamicCache()
    for index, (keys, values) in enumerate(layers):
        def joined(x: Tensor) -> Tensor:  # [P, H, T, d] -> [R, H, K * t, d]
            x = x[:, :, :length] if length is not None else x
            picked = x[picks.flatten()].view(rows, k, *x.shape[1:])
            return picked.transpose(1, 2).reshape(rows, x.shape[1], k * x.shape[2], x.shape[3])
        cache.update(joined(keys), joined(values), index)
    return cache


@dataclass
class ParentStates:
    """What the children of P parents reuse: each parent's keys and values per layer (`[P, heads, T, d]`),
    the cross-entropy `[P, L]` of each span token, and the log-probabilities `[P, L, V]` predicting each span
    token (a child's first changed token is scored by its parent's prediction at the position before it).
    Built by a plain parent forward (`parent_states`) or kept from the token-gradient forward of the same
    prompts (`dreamy.language.gradients.token_gradients(..., states=...)`), so searches need not recompute it."""

    layers: list[tuple[Tensor, Tensor]]
    token_xent: Tensor
    logprobs: Tensor

    @classmethod
    def from_output(cls, output: Any, ids: Tensor, span: tuple[int, int], logits_offset: int = 0) -> "ParentStates":
        """The states of a forward of `ids [P, T]` run with `use_cache=True` (detached from any graph)."""
        start, end = span
        logits = output.logits.detach()[:, start - 1 - logits_offset : end - 1 - logits_offset]
        logprobs = logits.float().log_softmax(dim=-1)
        token_xent = -logprobs.gather(2, ids[:, start:end, None]).squeeze(2)
        cache = output_cache(output)
        layers = [(layer.keys.detach(), layer.values.detach()) for layer in cache.layers]
        return cls(layers, token_xent, logprobs)

    @classmethod
    def cat(cls, parts: "Sequence[ParentStates]") -> "ParentStates":
        """The states of several sets of parents, in order."""
        layers = [(torch.cat([p.layers[i][0] for p in parts]), torch.cat([p.layers[i][1] for p in parts]))
                  for i in range(len(parts[0].layers))]
        return cls(layers, torch.cat([p.token_xent for p in parts]), torch.cat([p.logprobs for p in parts]))

    def rows(self, index: "int | slice | Tensor") -> "ParentStates":
        """The states of some parents (an int keeps its row as a batch of one)."""
        index = slice(index, index + 1) if isinstance(index, int) else index
        return ParentStates([(k[index], v[index]) for k, v in self.layers], self.token_xent[index], self.logprobs[index])

    @property
    def n_parents(self) -> int:
        return self.token_xent.shape[0]


@torch.no_grad()
def parent_states(model: nn.Module, parents: Tensor, span: tuple[int, int], chunk_size: int | None = None) -> ParentStates:
    """`ParentStates` of `parents [P, T]` from plain forwards (chunks of at most `PARENT_CHUNK` rows: the
    `[chunk, L, vocab]` log-probabilities bound it, not the children's chunk size).

    Example:
        >>> from dreamy.models import load
        >>> states = parent_states(load("tiny:lm").model, torch.tensor([[0, 5, 6, 7]]), (1, 4))
        >>> tuple(states.token_xent.shape), states.n_parents
        ((1, 3), 1)
    """
    keep, offset = span_logits(model, parents.shape[1], span)

    def one(chunk: slice) -> ParentStates:
        out = model(input_ids=parents[chunk], use_cache=True, **keep)
        return ParentStates.from_output(out, parents[chunk], span, offset)

    return ParentStates.cat(run_chunked(one, parents.shape[0], max(1, min(chunk_size or PARENT_CHUNK, PARENT_CHUNK))))
