"""Where candidate spans come from: starting spans (text, ids or random allowed tokens) and children made by
swapping positions to tokens ranked by the gradient (see `dreamy.language.gradients.top_tokens`).

Example:
    >>> import torch
    >>> top = torch.tensor([[[7, 8], [7, 8]]])     # [M=1, L=2, k=2] ranked replacement tokens
    >>> swap_children(torch.tensor([[1, 2]]), top, children=3, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([3, 2])
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import Tensor

from dreamy.language.tokens import survives_retokenization

log = logging.getLogger(__name__)

START_DRAWS = 100  # how many times a random start is redrawn before the search gives up on the token filters


def random_spans(tokenizer: Any, allowed: Tensor, n: int, n_tokens: int, *, generator: torch.Generator,
                 retokenize: bool = False) -> Tensor:
    """`n` random spans `[n, n_tokens]` of allowed tokens; with `retokenize`, a span whose text does not re-encode
    to its own tokens is redrawn (at most `START_DRAWS` times), so it passes the filters its children must pass.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.language.tokens import allowed_tokens
        >>> tok = load("tiny:lm").tokenizer
        >>> spans = random_spans(tok, allowed_tokens(tok), 3, 6, generator=torch.Generator().manual_seed(0),
        ...                      retokenize=True)
        >>> survives_retokenization(tok, spans).tolist()
        [True, True, True]
    """
    pool = allowed.nonzero().flatten()
    spans = pool[torch.randint(len(pool), (n, n_tokens), generator=generator)]
    if not retokenize or n == 0:
        return spans
    for _ in range(START_DRAWS):
        bad = ~survives_retokenization(tokenizer, spans)
        if not bad.any():
            return spans
        spans[bad] = pool[torch.randint(len(pool), (int(bad.sum()), n_tokens), generator=generator)]
    raise ValueError(f"no random start of {n_tokens} allowed tokens re-encoded to itself in {START_DRAWS} draws; "
                     "use fewer n_tokens or set retokenize=False")


def initial_spans(tokenizer: Any, allowed: Tensor, n: int, n_tokens: int, *, init: str | Sequence[int] | None,
                  generator: torch.Generator, retokenize: bool = False) -> Tensor:
    """Starting spans `[n, n_tokens]`: from `init` text/ids (padded or cut), else random allowed tokens
    (`random_spans`, redrawn until they re-encode to themselves when `retokenize`)."""
    if init is not None:
        ids = tokenizer(init, add_special_tokens=False)["input_ids"] if isinstance(init, str) else list(init)
        if not ids:
            raise ValueError(f"the initial prompt {init!r} has no tokens")
        ids = (ids * n_tokens)[:n_tokens]
        return torch.tensor(ids, dtype=torch.long)[None].repeat(n, 1)
    return random_spans(tokenizer, allowed, n, n_tokens, generator=generator, retokenize=retokenize)

SEEDED_INITS = ("maxima", "mixed")  # starts from dataset windows (`starts`)


def start_problem(tokenizer: Any, allowed: Tensor, ids: Sequence[int], *, retokenize: bool) -> str | None:
    """Why the span `ids` cannot start a search (a token outside the vocabulary, one the search may not use, or
    text that re-encodes to other tokens), or None when it passes the filters every candidate must pass.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.language.tokens import allowed_tokens
        >>> tok = load("tiny:lm").tokenizer
        >>> start_problem(tok, allowed_tokens(tok), tok.convert_tokens_to_ids(list("the")), retokenize=True)
        "its text 'the' re-encodes to other tokens; give another start or set retokenize=False"
    """
    vocab = len(allowed)
    for i in ids:
        if not 0 <= i < vocab:
            return f"token id {i} is outside the model's vocabulary of {vocab} tokens (ids 0 to {vocab - 1})"
    for i in ids:
        if not allowed[i]:
            return (f"token {i} ({tokenizer.decode([i])!r}) is not one the search may use (a special token, or not "
                    "printable ASCII while ascii_only is on); give another start or set ascii_only=False")
    if retokenize and not survives_retokenization(tokenizer, [list(ids)]).item():
        return (f"its text {tokenizer.decode(list(ids))!r} re-encodes to other tokens; give another start or set "
                "retokenize=False")
    return None


def initial_members(tokenizer: Any, allowed: Tensor, n: int, n_tokens: int, *, init: Any,
                    windows: Sequence[Sequence[int]] | None, generator: torch.Generator,
                    retokenize: bool = False) -> tuple[Tensor, list[str]]:
    """A search's `n` starting spans `[n, n_tokens]` and where each came from. Every start passes the filters
    its children must pass (`start_problem`): random members are redrawn, a window that fails is skipped, and
    an `init` that fails is refused (`ValueError`, one line).

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
        return random_spans(tokenizer, allowed, n, n_tokens, generator=generator, retokenize=retokenize), ["random"] * n
    if init not in SEEDED_INITS:
        spans = initial_spans(tokenizer, allowed, n, n_tokens, init=init, generator=generator)
        problem = start_problem(tokenizer, allowed, spans[0].tolist(), retokenize=retokenize)
        if problem is not None:
            raise ValueError(f"init={init!r} cannot start a search of n_tokens={n_tokens}: {problem}")
        return spans, ["init"] * n
    if windows is None:
        raise ValueError(f"init={init!r} starts from dataset windows: pass starts={{target: [token ids, ...]}} (the "
                         "target's matched-length maxima, e.g. text_maxima(..., lengths=[n_tokens]))")
    distinct: dict[tuple[int, ...], int] = {}
    skipped = 0
    for rank, window in enumerate(windows):
        if len(window) != n_tokens:
            raise ValueError(f"starting window {rank} has {len(window)} tokens; the prompt has {n_tokens}")
        ids = tuple(int(t) for t in window)
        if ids in distinct:
            continue
        if start_problem(tokenizer, allowed, ids, retokenize=retokenize) is not None:
            skipped += 1
            continue
        distinct[ids] = rank
    if skipped:
        log.info("skipped %d starting window(s) that do not pass the token filters", skipped)
    seeded = n if init == "maxima" else (n + 1) // 2
    picked = list(distinct.items())[:seeded]
    random = random_spans(tokenizer, allowed, n - len(picked), n_tokens, generator=generator, retokenize=retokenize)
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
