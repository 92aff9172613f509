"""Token windows from text corpora, and the activations a language model's site gives on them.

Each corpus is tokenized and cut into non-overlapping windows of `window` tokens; the windows of all
corpora are pooled and split, by a seeded permutation, into held-out windows (never trained on) and
training windows. A window runs as `start token + window tokens`; the start position carries the
model's attention sink (huge norms in many LMs), so its activation is dropped and every window gives
`window` activation vectors. The probe stops the forward at the site (early exit).

Example:
    >>> from dreamy.models import load
    >>> from dreamy.datasets import TextCorpus
    >>> loaded = load("tiny:lm")
    >>> split = corpus_windows(loaded.tokenizer, [TextCorpus("t", "The cat sat on the mat. " * 30)], window=8,
    ...                        heldout_windows=2, seed=0)
    >>> split.heldout.shape[0], split.train.shape[1]
    (2, 8)
    >>> tuple(site_activations(loaded, "model.layers.0", split.train[:3]).shape)
    (24, 64)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from dreamy.language.layout import start_token
from dreamy.datasets import TextCorpus, open_text
from dreamy.core.stepping import make_generator
from dreamy.models import LoadedModel
from dreamy.targets import Probe, parse


@dataclass(frozen=True)
class WindowSplit:
    """Token windows `[N, window]` (no start token): `train` and `heldout` rows; `corpora` names the sources."""

    train: Tensor
    heldout: Tensor
    corpora: tuple[str, ...]


def tokenize(tokenizer: Any, corpus: TextCorpus) -> Tensor:
    """All token ids of `corpus` (`[N]`, no special tokens), tokenized paragraph by paragraph.

    Example:
        >>> from dreamy.models.tiny import tiny_tokenizer
        >>> tokenize(tiny_tokenizer(), TextCorpus("t", "The cat")).ndim
        1
    """
    parts = [part for part in corpus.text.split("\n\n") if part.strip()]
    if not parts:
        return torch.zeros(0, dtype=torch.long)
    encoded = tokenizer([part + "\n\n" for part in parts], add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor([token for ids in encoded for token in ids], dtype=torch.long)


def corpus_windows(tokenizer: Any, corpora: Sequence[str | TextCorpus], *, window: int, heldout_windows: int,
                   seed: int, max_words: int | None = None) -> WindowSplit:
    """Non-overlapping `window`-token windows of every corpus, pooled, split into train and held-out rows.

    The split depends only on the corpora, `window` and `seed`. Raises `ValueError` when the corpora
    give fewer than `heldout_windows + 1` windows.

    Example:
        >>> from dreamy.models.tiny import tiny_tokenizer
        >>> split = corpus_windows(tiny_tokenizer(), [TextCorpus("t", "a b c d " * 40)], window=4,
        ...                        heldout_windows=3, seed=0)
        >>> split.heldout.shape[0], split.corpora
        (3, ('t',))
    """
    if window < 1:
        raise ValueError(f"window must be >= 1 token, got {window}")
    pieces, names = [], []
    for spec in corpora:
        corpus = open_text(spec, max_words)
        ids = tokenize(tokenizer, corpus)
        n = len(ids) // window
        pieces.append(ids[: n * window].reshape(n, window))
        names.append(corpus.name)
    windows = torch.cat(pieces) if pieces else torch.zeros(0, window, dtype=torch.long)
    if len(windows) < heldout_windows + 1:
        raise ValueError(f"the corpora {names} give {len(windows)} windows of {window} tokens; "
                         f"need more than the {heldout_windows} held out")
    order = torch.randperm(len(windows), generator=make_generator(seed))
    return WindowSplit(train=windows[order[heldout_windows:]], heldout=windows[order[:heldout_windows]],
                       corpora=tuple(names))


def with_start(rows: Tensor, start: int) -> Tensor:
    """`rows` `[B, T]` with the start token prepended: `[B, T + 1]`.

    Example:
        >>> with_start(torch.tensor([[5, 6]]), 0).tolist()
        [[0, 5, 6]]
    """
    return torch.cat([torch.full((rows.shape[0], 1), start, dtype=rows.dtype), rows], dim=1)


@torch.no_grad()
def site_activations(loaded: LoadedModel, site: str, rows: Tensor, *, probe: Probe | None = None) -> Tensor:
    """Activations of `site` on `rows` (`[B, T]` windows; the start token is added), start position dropped: `[B*T, D]`.

    Pass a `Probe` built on `site` to reuse it across calls. The forward stops at the site.

    Example:
        >>> from dreamy.models import load
        >>> tuple(site_activations(load("tiny:lm"), "model.layers.1.mlp.down_proj@in", torch.ones(2, 5, dtype=torch.long)).shape)
        (10, 128)
    """
    probe = probe or Probe(loaded.model, [site])
    inputs = with_start(rows, start_token(loaded.tokenizer)).to(loaded.device)
    result = probe(input_ids=inputs, keep_activations=True)
    key = str(probe.targets[0].terms[0].site)
    activation = result.activations[key]
    if activation.ndim != 3:
        raise ValueError(f"site '{site}' gives activations of shape {tuple(activation.shape)}; an SAE needs [batch, tokens, features]")
    if activation.shape[:2] != inputs.shape:
        raise ValueError(f"site '{site}' gives shape {tuple(activation.shape)} for {inputs.shape[0]} windows of "
                         f"{inputs.shape[1]} tokens, not one row per window: it is shared across the batch (e.g. a "
                         "positional table); pick a site inside the layers, e.g. model.layers.0")
    return activation[:, 1:].reshape(-1, activation.shape[-1]).float()


def check_site(loaded: LoadedModel, site: str, probe: Probe | None = None) -> int:
    """Refuse (`ValueError`, one line) a site an SAE cannot read, on one small forward of two windows: not a bare
    hidden site, integer values (token ids, e.g. `model.embed_tokens@in`), a tensor shared across the batch (e.g.
    `model.rotary_emb`) or not `[batch, tokens, features]`. Returns the site's width `d_in`.

    Example:
        >>> from dreamy.models import load
        >>> check_site(load("tiny:lm"), "model.layers.0")
        64
        >>> check_site(load("tiny:lm"), "model.embed_tokens@in")
        Traceback (most recent call last):
        ...
        dreamy.targets.errors.TargetError: site 'model.embed_tokens@in' gives int64 values (token ids?), not activations a target can score; pick a float site, e.g. a module's output instead of its @in
    """
    probe = probe or site_probe(loaded, site)
    start = start_token(loaded.tokenizer)
    return int(site_activations(loaded, site, torch.full((2, 2), start, dtype=torch.long), probe=probe).shape[-1])


def site_probe(loaded: LoadedModel, site: str) -> Probe:
    """A probe that captures `site` (a bare site spec: `model.layers.9`, `...down_proj@in`, `x[0]`).

    Example:
        >>> from dreamy.models import load
        >>> site_probe(load("tiny:lm"), "model.layers.1").sites[0].path
        'model.layers.1'
    """
    target = parse(site)
    if len(target.terms) != 1 or target.terms[0].unit is not None or target.terms[0].reduce is not None or target.terms[0].coef != 1:
        raise ValueError(f"site {site!r} must be a bare site like 'model.layers.9' (no unit, reduction or sum)")
    if target.terms[0].site.is_logits:
        raise ValueError(f"site {site!r}: an SAE reads a hidden site, not the model's logits")
    return Probe(loaded.model, [target])
