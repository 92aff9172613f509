"""Score children packed side by side on their parents' KV caches: one forward for all of them.

A child differs from its parent from position f on, so only its tokens f..T-1 need computing; the
parent's keys and values cover every position before f. Here the suffixes of many children of one
parent are laid end to end in one row of at most `row_tokens` tokens (a parent with many children gets
several rows), each token keeping its true position id. A 4-D attention mask lets a token see its
parent's cached positions before its own child's f and the earlier tokens of its own child, nothing
else, so every child gets exactly the activations of its own full forward. One forward scores all
children (against one forward per change position for the grouped path in `scoring`), with the
FLOPs of only the recomputed tokens: about half a plain forward's when changes are spread evenly.

A child's cross-entropy: tokens before f are its parent's (`ParentStates.token_xent`), the token at f
is scored by the parent's prediction at f-1 (`ParentStates.logprobs`), later tokens by the packed
row's own logits. The activation is each target's per-position map read at the child's last token.

Example:
    >>> import torch
    >>> from dreamy.models import load
    >>> from dreamy.language.states import parent_states
    >>> from dreamy.targets import Probe
    >>> lm = load("tiny:lm")
    >>> probe = Probe(lm.model, ["model.layers.1.mlp.down_proj:3"], sequence_reduce="pos=-1")
    >>> parents = torch.tensor([[0, 5, 6, 7]])
    >>> children = torch.tensor([[0, 5, 9, 7], [0, 8, 6, 7]])
    >>> states = parent_states(lm.model, parents, (1, 4))
    >>> owner = torch.zeros(2, dtype=torch.long)
    >>> out = score_packed(lm.model, probe, children, (1, 4), owner, states, first_changes(children, parents, owner))
    >>> out.activation.shape, out.xentropy.shape
    (torch.Size([2, 1]), torch.Size([2]))
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dreamy.language.states import ParentStates, SequenceScores, cache_kwarg, cache_rows
from dreamy.targets import Probe


ROW_TOKENS = 128  # slots per packed row: attention costs ~ row length per token; children never split across rows


@dataclass
class PackedLayout:
    """Where every child's recomputed tokens sit, as host lists: `len(slot_child)` rows of `width` slots.

    Slot j of row r holds child `slot_child[r][j]` (-1: padding) at sequence position `slot_position[r][j]`;
    that child's parent is the row's cache segment `slot_segment[r][j]`, i.e. parent `row_parents[r][segment]`
    (a row holds the caches of the few parents its children come from, end to end). `last_slot[n]` is the flat
    slot (r * width + j) of child n's last token; `label_slots` the flat slots whose next token is a span token."""

    row_parents: list[list[int]]
    slot_child: list[list[int]]
    slot_position: list[list[int]]
    slot_segment: list[list[int]]
    width: int
    last_slot: list[int]
    label_slots: list[int]

    @classmethod
    def build(cls, first: Sequence[int], owner: Sequence[int], length: int, span: tuple[int, int],
              row_tokens: int = ROW_TOKENS) -> "PackedLayout":
        """Pack child n's tokens first[n]..length-1 end to end in children order into rows of at most
        max(row_tokens, longest suffix) slots (a child never splits across rows); `span` (start, end) says
        which next tokens are scored.

        Example:
            >>> layout = PackedLayout.build([2, 3, 1], [0, 0, 1], 4, (1, 4), row_tokens=3)
            >>> layout.slot_child, layout.slot_position, layout.row_parents, layout.last_slot
            ([[0, 0, 1], [2, 2, 2]], [[2, 3, 3], [1, 2, 3]], [[0], [1]], [1, 2, 5])
        """
        width = max(row_tokens, max((length - f for f in first), default=1))
        rows: list[list[int]] = []
        positions: list[list[int]] = []
        segments: list[list[int]] = []
        row_parents: list[list[int]] = []
        for n, f in enumerate(first):
            size = length - f
            if not rows or len(rows[-1]) + size > width:
                rows.append([])
                positions.append([])
                segments.append([])
                row_parents.append([])
            if not row_parents[-1] or row_parents[-1][-1] != owner[n]:
                row_parents[-1].append(owner[n])
            rows[-1].extend([n] * size)
            positions[-1].extend(range(f, length))
            segments[-1].extend([len(row_parents[-1]) - 1] * size)
        width = max(len(r) for r in rows)
        last_slot = [0] * len(first)
        label_slots = []
        for r, row in enumerate(rows):
            for j, n in enumerate(row):
                last_slot[n] = r * width + j  # the last slot of n wins
                if span[0] <= positions[r][j] + 1 < span[1]:
                    label_slots.append(r * width + j)
        pad = [[-1] * (width - len(row)) for row in rows]
        return cls(row_parents, [row + p for row, p in zip(rows, pad)],
                   [pos + [0] * len(p) for pos, p in zip(positions, pad)],
                   [seg + [0] * len(p) for seg, p in zip(segments, pad)], width, last_slot, label_slots)


def _packed_inputs(ids: Tensor, first: Tensor, layout: PackedLayout, dtype: torch.dtype
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Token ids, position ids and slot children (-1 padding), each `[R, W]`, the rows' cache parents `[R, K]`
    and the additive 4-D mask `[R, 1, W, K * T + W]`: a slot sees its own parent's cached positions before
    its child's first change and the earlier slots of its child (padding sees only itself)."""
    device, length = ids.device, ids.shape[1]
    child, position, segment = torch.tensor([layout.slot_child, layout.slot_position, layout.slot_segment],
                                            dtype=torch.long, device=device)  # one transfer
    n_parents = max(len(p) for p in layout.row_parents)
    parents = torch.tensor([p + [p[0]] * (n_parents - len(p)) for p in layout.row_parents], dtype=torch.long, device=device)
    real = child >= 0
    safe = child.clamp(min=0)
    tokens = torch.where(real, ids[safe, position], torch.zeros_like(child))
    cache_segment = torch.arange(n_parents * length, device=device) // length
    cache_position = torch.arange(n_parents * length, device=device) % length
    sees_cache = (cache_segment[None, None, :] == segment[:, :, None]) \
        & (cache_position[None, None, :] < torch.where(real, first[safe], 0)[:, :, None])
    width = child.shape[1]
    earlier = torch.arange(width, device=device)[:, None] >= torch.arange(width, device=device)[None, :]
    same = (child[:, :, None] == child[:, None, :]) & earlier[None] & real[:, :, None]
    same = same | (torch.eye(width, dtype=torch.bool, device=device)[None] & ~real[:, :, None])  # padding sees itself
    allowed = torch.cat([sees_cache, same], dim=2)[:, None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
    return tokens, position, child, parents, mask


class _GatherHead:
    """A forward pre-hook on the output layer that keeps only some flat positions of its input: the logits
    become `[1, K, V]` for those K slots (the rest predict no span token). It acts only on the forward of the
    thread that made it (another thread's forward of the same model passes through untouched)."""

    def __init__(self, module: nn.Module, slots: Tensor) -> None:
        self.slots = slots
        self.thread = threading.get_ident()
        self.handle = module.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, args: tuple) -> tuple | None:
        if threading.get_ident() != self.thread:
            return None
        hidden = args[0]
        return (hidden.flatten(0, 1)[self.slots][None], *args[1:])


def first_changes(ids: Tensor, parents: Tensor, owner: Tensor) -> Tensor:
    """The first position `[N]` at which each row of `ids` differs from its parent `parents[owner]` (T if none).

    Example:
        >>> first_changes(torch.tensor([[0, 5, 9], [0, 5, 6]]), torch.tensor([[0, 5, 6]]), torch.tensor([0, 0])).tolist()
        [2, 3]
    """
    differs = ids != parents[owner]
    length = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long, device=ids.device)
    return torch.where(differs.any(dim=1), differs.float().argmax(dim=1), length)


def score_packed(model: nn.Module, probe: Probe, ids: Tensor, span: tuple[int, int], owner: Tensor,
                 states: ParentStates, first: Tensor, *, row_tokens: int = ROW_TOKENS,
                 max_rows: int | None = None) -> SequenceScores:
    """Targets `[N, n_targets]` and span cross-entropy `[N]` of children `ids [N, T]` of parents with `states`
    (`owner [N]` names each child's parent, `first [N]` its first changed position, see `first_changes`);
    see the module docstring. Every child must differ from its parent, and every target must read the last
    position (`pos=-1`). `max_rows` bounds the rows per forward (default: all at once). The
    layout is built on the host from one transfer of `first` and `owner`."""
    start, end = span
    device = ids.device
    first = first.to(device=device, dtype=torch.long)
    host_first, host_owner = torch.stack([first, owner.to(first)]).tolist()  # one transfer
    if any(not 0 <= f < ids.shape[1] for f in host_first):
        raise ValueError(f"every child must differ from its parent; first changes {host_first}")
    layout = PackedLayout.build(host_first, host_owner, ids.shape[1], span, row_tokens)
    tokens, position, child, parents, mask = _packed_inputs(ids, first, layout, model.get_input_embeddings().weight.dtype)

    token_xent = states.token_xent[owner].clone()  # span tokens before a child's first change: its parent's
    # the token at the first change (when in the span): the parent's prediction one position earlier; later ones
    # are set below
    n = torch.tensor([i for i, f in enumerate(host_first) if start <= f < end], dtype=torch.long, device=device)
    at = first[n] - start
    token_xent[n, at] = -states.logprobs[owner[n], at, ids[n, first[n]]]
    cache_name = cache_kwarg(model)
    head = model.get_output_embeddings()
    width, total = layout.width, len(layout.row_parents)
    step = max_rows or total
    maps: list[Tensor] = []
    for lo in range(0, total, step):
        hi = min(total, lo + step)
        slots = [s - lo * width for s in layout.label_slots if lo * width <= s < hi * width]
        slot_index = torch.tensor(slots, dtype=torch.long, device=device)
        gather = None
        try:
            if not (probe.reads_logits or head is None):
                gather = _GatherHead(head, slot_index)
            result = probe(input_ids=tokens[lo:hi], position_ids=position[lo:hi], attention_mask=mask[lo:hi],
                           **{cache_name: cache_rows(states.layers, parents[lo:hi])}, need_output=True,
                           keep_activations=True)
        finally:
            if gather is not None:
                gather.handle.remove()
        maps.append(torch.stack(probe.maps(result.activations), dim=-1).flatten(0, 1))  # [rows * W, n_targets]
        logits = result.output.logits.flatten(0, 1)
        logits = logits if gather is not None else logits[slot_index]
        which = child[lo:hi].flatten()[slot_index]
        column = position[lo:hi].flatten()[slot_index] + 1
        ce = F.cross_entropy(logits.float(), ids[which, column], reduction="none")
        token_xent[which, column - start] = ce  # each (child, later span token) once
        del result, logits
    activation = torch.cat(maps)[torch.tensor(layout.last_slot, dtype=torch.long, device=device)]
    return SequenceScores(activation, token_xent.mean(dim=1))
