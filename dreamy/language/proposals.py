"""Where candidate spans come from: starting spans (text, ids or random allowed tokens) and children made by
swapping positions to tokens ranked by the gradient (see `dreamy.language.gradients.top_tokens`).

Example:
    >>> import torch
    >>> top = torch.tensor([[[7, 8], [7, 8]]])     # [M=1, L=2, k=2] ranked replacement tokens
    >>> swap_children(torch.tensor([[1, 2]]), top, children=3, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor


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

SEEDED_INITS = ("maxima", "mixed")  # starts from dataset windows (`starts`)


def initial_members(tokenizer: Any, allowed: Tensor, n: int, n_tokens: int, *, init: Any,
                    windows: Sequence[Sequence[int]] | None, generator: torch.Generator) -> tuple[Tensor, list[str]]:
    """A search's `n` starting spans `[n, n_tokens]` and where each came from.

    `init` None or "random": random allowed tokens ("random"); a text or token ids: that prompt in every member
    ("init"); "maxima": the distinct `windows` (each `n_tokens` ids, best first), one per member ("window i"),
    random members once they run out; "mixed": windows for the first half (rounded up), random members for the
    rest, so the search can also leave the corpus' neighbourhood.

    Example:
        >>> import torch
        >>> from dreamy.models.tiny import tiny_tokenizer
        >>> spans, origins = initial_members(tiny_tokenizer(), torch.ones(300, dtype=torch.bool), 3, 2, init="mixed",
        ...                                  windows=[[5, 6], [5, 6], [7, 8]], generator=torch.Generator().manual_seed(0))
        >>> spans[:2].tolist(), origins
        ([[5, 6], [7, 8]], ['window 0', 'window 2', 'random'])
    """
    if init is None or init == "random":
        return initial_spans(tokenizer, allowed, n, n_tokens, init=None, generator=generator), ["random"] * n
    if init not in SEEDED_INITS:
        return initial_spans(tokenizer, allowed, n, n_tokens, init=init, generator=generator), ["init"] * n
    if windows is None:
        raise ValueError(f"init={init!r} starts from dataset windows: pass starts={{target: [token ids, ...]}} (the "
                         "target's matched-length maxima, e.g. text_maxima(..., lengths=[n_tokens]))")
    distinct: dict[tuple[int, ...], int] = {}
    for rank, window in enumerate(windows):
        if len(window) != n_tokens:
            raise ValueError(f"starting window {rank} has {len(window)} tokens; the prompt has {n_tokens}")
        distinct.setdefault(tuple(int(t) for t in window), rank)
    seeded = n if init == "maxima" else (n + 1) // 2
    picked = list(distinct.items())[:seeded]
    random = initial_spans(tokenizer, allowed, n - len(picked), n_tokens, init=None, generator=generator)
    spans = torch.cat([torch.tensor([ids for ids, _ in picked], dtype=torch.long).view(-1, n_tokens), random])
    return spans, [f"window {rank}" for _, rank in picked] + ["random"] * (n - len(picked))


def swap_children(spans: Tensor, top: Tensor, *, children: int, n_swaps: int = 1, generator: torch.Generator) -> Tensor:
    """`children` children per row, `[M * children, L]`: each child of row m swaps `n_swaps` random positions of
    `spans[m]` to random tokens of `top[m]` (`[M, L, k]`, see `top_tokens`) at that position."""
    length, k = top.shape[1], top.shape[2]
    made = spans.repeat_interleave(children, dim=0)
    rows = torch.arange(made.shape[0])
    owner = rows // children
    for _ in range(min(n_swaps, length)):
        pos = torch.randint(length, (made.shape[0],), generator=generator)
        pick = torch.randint(k, (made.shape[0],), generator=generator)
        made[rows, pos] = top[owner, pos, pick].to(made.dtype)
    return made
