"""Where candidate spans come from: starting spans (text, ids or random allowed tokens) and children made by
swapping positions to tokens ranked by the gradient (see `dreamy.language.gradients.top_tokens`).

Example:
    >>> import torch
    >>> top = torch.tensor([[[7, 8], [7, 8]]])     # [M=1, L=2, k=2] ranked replacement tokens
    >>> swap_children(torch.tensor([[1, 2]]), top, n_children=3, generator=torch.Generator().manual_seed(0)).shape
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
