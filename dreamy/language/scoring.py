"""Score candidate prompts fast: target activation and cross-entropy from one forward per token.

Children of one parent differ from it from some position p on. The parent's KV cache already covers
every position before p, so only positions >= p need a forward. The default (`scoring="packed"`,
`dreamy.language.packed`) lays the changed tokens of many children side by side in a few rows with a
4-D attention mask: one forward for all of them. The older `"grouped"` scoring groups children by p and
runs one forward per group on top of the parents' caches (each row gathers its own parent's keys and
values, so children of many parents, e.g. of many packed targets, share one forward per position).
Cross-entropy terms before p come from the parent's logits. This needs every target to read the last
position (`pos=-1`, the language default) or the logits; other targets fall back to full forwards.
Batches are chunked; on out-of-memory the chunk size halves and the chunk is retried.

Example:
    >>> import torch
    >>> from dreamy.models import load
    >>> from dreamy.targets import Probe
    >>> lm = load("tiny:lm")
    >>> probe = Probe(lm.model, ["model.layers.1.mlp.down_proj:3"], sequence_reduce="pos=-1")
    >>> ids = torch.tensor([[0, 5, 6, 7], [0, 5, 9, 7]])
    >>> out = score_sequences(lm.model, probe, ids, xent_span=(1, 4), parent_ids=ids[0])
    >>> out.activation.shape, out.xentropy.shape
    (torch.Size([2, 1]), torch.Size([2]))
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamy.core.memory import run_chunked
from dreamy.language.fluency import span_xentropy
from dreamy.language.packed import ROW_TOKENS, first_changes, score_packed
from dreamy.language.states import (ParentStates, SequenceScores, cache_kwarg, cache_rows, parent_states, span_logits,
                                    takes_logits_to_keep)
from dreamy.targets import Probe

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 256
MIN_GROUP_FOR_CACHE = 8


def _keep_kwargs(model: nn.Module, probe: Probe, ids: Tensor, span: tuple[int, int]) -> tuple[dict[str, int], int]:
    """`_span_logits` for a probed forward, unless a target reads the logits at other positions."""
    if probe.reads_logits and not probe.reads_last_position_only():
        return {}, 0
    return span_logits(model, ids.shape[1], span)


def _full(model: nn.Module, probe: Probe, ids: Tensor, span: tuple[int, int], fluency_model: nn.Module | None,
          chunk_size: int) -> SequenceScores:
    keep, offset = _keep_kwargs(model, probe, ids, span) if fluency_model is None else ({}, 0)

    def one(rows: slice) -> tuple[Tensor, Tensor]:
        result = probe(input_ids=ids[rows], need_output=True, **keep)
        logits = result.output.logits if fluency_model is None else fluency_model(input_ids=ids[rows]).logits
        return result.scores, span_xentropy(logits, ids[rows], span, logits_offset=offset)

    parts = run_chunked(one, ids.shape[0], chunk_size)
    return SequenceScores(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))


def _merged_groups(first: Tensor, length: int) -> list[tuple[int, Tensor]]:
    """Rows grouped by the position their change starts at, as (p, rows) pairs that reuse the cache up to p.

    A group smaller than `MIN_GROUP_FOR_CACHE` is merged into the next group down (a row whose change
    starts at q >= p is still correct on the cache up to p), so many candidates spread thinly over the
    span still share a few batched forwards. Position 0 and unchanged rows (p == length) stay apart.

    Example:
        >>> [(p, rows.tolist()) for p, rows in _merged_groups(torch.tensor([5, 3, 3, 3, 3, 4, 0]), 8)]
        [(3, [0, 5, 1, 2, 3, 4]), (0, [6])]
    """
    groups: list[tuple[int, Tensor]] = []
    pending: list[Tensor] = []
    for p in sorted(first.unique().tolist(), reverse=True):
        rows = (first == p).nonzero().flatten()
        if p in (0, length):
            groups.append((p, rows))
            continue
        pending.append(rows)
        if sum(len(r) for r in pending) >= MIN_GROUP_FOR_CACHE:
            groups.append((p, torch.cat(pending)))
            pending = []
    if pending:
        lowest = int(first[pending[-1][0]])
        groups.append((lowest, torch.cat(pending)))
    return sorted(groups, key=lambda group: -group[0])


def _group_logits(model: nn.Module, probe: Probe, p: int, own: int, end: int, length: int,
                  device: torch.device) -> tuple[dict[str, Any], int]:
    """`logits_to_keep` for a group forward over positions p.. : only the positions that predict span tokens
    own..end-1 (the last position too when a target reads the logits). Returns (kwargs, logits offset)."""
    if not takes_logits_to_keep(model):
        return {}, 0
    first = max(own - 1 - p, 0)
    stop = length - p if probe.reads_logits else max(end - 1 - p, first + 1)
    return {"logits_to_keep": torch.arange(first, stop, device=device)}, first


def _grouped(model: nn.Module, probe: Probe, ids: Tensor, span: tuple[int, int], parents: Tensor, owner: Tensor,
             chunk_size: int, states: ParentStates | None) -> SequenceScores:
    n, length = ids.shape
    start, end = span
    first = first_changes(ids, parents, owner)
    reuse = states if states is not None else parent_states(model, parents, span, chunk_size)
    swap_xent = torch.zeros(n, device=ids.device)  # each child's first changed token under its parent's prediction
    in_span = ((first >= start) & (first < end)).nonzero().flatten()
    at = first[in_span]
    swap_xent[in_span] = -reuse.logprobs[owner[in_span], at - start, ids[in_span, at]]
    cache_name = cache_kwarg(model)
    activation = torch.empty(n, len(probe.targets), device=ids.device)
    xent = torch.empty(n, device=ids.device)
    leftovers: list[Tensor] = []  # unchanged rows and changes at position 0
    for p, rows in _merged_groups(first, length):
        if p in (0, length):
            leftovers.append(rows)
            continue

        own = max(p + 1, start)  # the first span token this forward predicts itself
        keep, offset = _group_logits(model, probe, p, own, end, length, ids.device)

        def one(chunk: slice, rows: Tensor = rows, p: int = p, own: int = own, keep: dict = keep,
                offset: int = offset) -> tuple[Tensor, Tensor]:
            sel = rows[chunk]
            cache = cache_rows(reuse.layers, owner[sel], p)
            result = probe(input_ids=ids[sel, p:], need_output=True, **{cache_name: cache}, **keep)
            # tokens before p are the parent's (its cross-entropy); the token at p is predicted by the
            # parent's position p-1; tokens after p by this forward's own logits
            token_xent = reuse.token_xent[owner[sel]].clone()
            if start <= p < end:
                changed_here = first[sel] == p
                token_xent[changed_here, p - start] = swap_xent[sel][changed_here]
            if own < end:
                logits = result.output.logits[:, own - 1 - p - offset : end - 1 - p - offset]
                labels = ids[sel, own:end]
                # 2-D rows: cross_entropy over a transposed [N, V, L] view is several times slower on CPU
                token_xent[:, own - start:] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                              labels.reshape(-1), reduction="none").view(labels.shape)
            return result.scores, token_xent.mean(dim=1)

        parts = run_chunked(one, len(rows), chunk_size)
        activation[rows] = torch.cat([q[0] for q in parts])
        xent[rows] = torch.cat([q[1] for q in parts])
    if leftovers:
        rows = torch.cat(leftovers)
        scored = _full(model, probe, ids[rows], span, None, chunk_size)
        activation[rows] = scored.activation
        xent[rows] = scored.xentropy
    return SequenceScores(activation, xent)


@torch.no_grad()
def score_sequences(model: nn.Module, probe: Probe, ids: Tensor, *, xent_span: tuple[int, int],
                    parent_ids: Tensor | None = None, parent_index: Tensor | None = None,
                    fluency_model: nn.Module | None = None, chunk_size: int | None = None,
                    parent_states: ParentStates | None = None, scoring: str = "packed") -> SequenceScores:
    """Score N token sequences `ids [N, T]`: the probe's targets and the mean cross-entropy of `xent_span`.

    With `parent_ids` (`[T]`, or `[P, T]` with `parent_index [N]` naming each row's parent) each parent's
    KV cache is reused for its rows, and rows of different parents that change at the same position share
    one forward (see the module docstring); the results equal plain full forwards. `fluency_model`
    (sharing the tokenizer) computes the cross-entropy instead of `model` (then no cache reuse).
    `chunk_size` bounds rows per forward. `parent_states` (the parents' `ParentStates`, e.g. kept from their
    gradient pass) saves the parents' forward. `scoring` says how children reuse their parents' caches:
    `"packed"` (one forward, children's changed tokens side by side, `dreamy.language.packed`) or
    `"grouped"` (one forward per change position).
    """
    if scoring not in ("packed", "grouped"):
        raise ValueError(f"scoring must be 'packed' or 'grouped', got {scoring!r}")
    if ids.ndim != 2:
        raise ValueError(f"ids must be [N, T], got shape {tuple(ids.shape)}")
    chunk = chunk_size or DEFAULT_CHUNK
    if parent_ids is None or fluency_model is not None or not probe.reads_last_position_only() or ids.shape[0] < MIN_GROUP_FOR_CACHE:
        return _full(model, probe, ids, xent_span, fluency_model, chunk)
    parents = parent_ids.to(ids.device)
    parents = parents[None] if parents.ndim == 1 else parents
    if parents.ndim != 2 or parents.shape[1] != ids.shape[1]:
        raise ValueError(f"parent_ids must be [T] or [P, T] with T = {ids.shape[1]}, got shape {tuple(parent_ids.shape)}")
    if parent_index is None:
        if parents.shape[0] != 1:
            raise ValueError(f"{parents.shape[0]} parents given; say which row belongs to which with parent_index [N]")
        parent_index = torch.zeros(ids.shape[0], dtype=torch.long)
    owner = torch.as_tensor(parent_index, dtype=torch.long, device=ids.device)
    if owner.shape != (ids.shape[0],) or owner.min() < 0 or owner.max() >= parents.shape[0]:
        raise ValueError(f"parent_index must hold one index in 0..{parents.shape[0] - 1} per row ({ids.shape[0]},)")
    if parent_states is not None and parent_states.n_parents != parents.shape[0]:
        raise ValueError(f"parent_states hold {parent_states.n_parents} parents, parent_ids {parents.shape[0]}")
    if scoring == "grouped":
        return _grouped(model, probe, ids, xent_span, parents, owner, chunk, parent_states)
    return _packed(model, probe, ids, xent_span, parents, owner, chunk, parent_states)


def _packed(model: nn.Module, probe: Probe, ids: Tensor, span: tuple[int, int], parents: Tensor, owner: Tensor,
            chunk_size: int, states: ParentStates | None) -> SequenceScores:
    """`score_packed` for the children that change their parent, plain forwards for the (rare) unchanged rows;
    chunks hold at most `chunk_size` full sequences' worth of tokens, halved on out-of-memory."""
    reuse = states if states is not None else parent_states(model, parents, span, chunk_size)
    first = first_changes(ids, parents, owner)
    changed = first < ids.shape[1]
    if bool(changed.all()):
        rows = None
    else:  # one sync, only when some row equals its parent
        rows = changed.nonzero().flatten()
    activation = torch.empty(ids.shape[0], len(probe.targets), device=ids.device)
    xent = torch.empty(ids.shape[0], device=ids.device)
    pick = slice(None) if rows is None else rows
    n_changed = ids.shape[0] if rows is None else len(rows)
    if n_changed:
        row_tokens = max(ROW_TOKENS, ids.shape[1])
        max_rows = max(1, chunk_size * ids.shape[1] // row_tokens)
        scored = run_chunked(lambda part: score_packed(model, probe, ids[pick][part], span, owner[pick][part], reuse,
                                                        first[pick][part], row_tokens=row_tokens, max_rows=max_rows),
                             n_changed, chunk_size)
        activation[pick] = torch.cat([q.activation for q in scored])
        xent[pick] = torch.cat([q.xentropy for q in scored])
    if rows is not None:
        same = (~changed).nonzero().flatten()
        plain = _full(model, probe, ids[same], span, None, chunk_size)
        activation[same], xent[same] = plain.activation, plain.xentropy
    return SequenceScores(activation, xent)
