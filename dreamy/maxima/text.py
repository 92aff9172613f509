"""Text maxima: the 64-token corpus windows that drive each target hardest, with their cross-entropy.

A window is scored exactly like a prompt on the language side: BOS + the window's tokens, the target
read at the last token (`pos=-1`) and the fluency as the mean next-token cross-entropy of the window's
tokens. So a window and an EPO/GCG prompt of the same length compare directly in (cross-entropy,
activation).

Scoring every one of the corpus's stride-1 windows would cost one forward per token. Instead:
1. scan: the corpus is cut into non-overlapping windows, run once in batches through one `Probe` for
   all targets (stopping after the deepest hooked site); every token's activation is read off the
   per-position score map. The last token of each window is an exact window score; earlier tokens
   saw a shorter context and serve as candidates.
2. refine: for each target the windows ending at its `k * candidates` best tokens are re-scored as
   standalone windows with a full forward (activation, per-token activations, cross-entropy); the
   best `k` are kept, and the windows that no other re-scored window beats in both activation and
   cross-entropy form the data set's frontier.
3. fluency baseline: the cross-entropy of `xent_windows` random windows gives the corpus median.

Example:
    >>> import tempfile
    >>> from dreamy.models import load
    >>> from dreamy.datasets import TextCorpus
    >>> corpus = TextCorpus("toy", "The cat sat on the mat. The dog ran in the park. " * 8)
    >>> found = text_maxima(load("tiny:lm"), ["model.layers.1.mlp.down_proj@in:3"], corpus, k=2, window=8,
    ...                     xent_windows=4, cache_dir=None, progress=False)
    >>> best = found["model.layers.1.mlp.down_proj@in:3"].examples[0]
    >>> len(best.token_ids), best.xentropy > 0
    (8, True)
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import torch
from torch import Tensor

from dreamy.core.files import fingerprint, safe_name
from dreamy.datasets import TextCorpus, open_text
from dreamy.language.fluency import span_xentropy
from dreamy.language.layout import start_token
from dreamy.core.stepping import make_generator
from dreamy.maxima.images import cached_or_todo
from dreamy.maxima.records import Example, Maxima, MaximaResults, canonical_target, default_cache_dir, entry_dir, save_maxima
from dreamy.maxima.topk import scan, summarize
from dreamy.models import LoadedModel
from dreamy.targets import Probe

log = logging.getLogger(__name__)


def tokenize_corpus(tokenizer: Any, corpus: TextCorpus) -> Tensor:
    """All token ids of the corpus `[N]` (no special tokens).

    Example:
        >>> from dreamy.models.tiny import tiny_tokenizer
        >>> tokenize_corpus(tiny_tokenizer(), TextCorpus("t", "The cat")).ndim
        1
    """
    ids = tokenizer(corpus.text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def _full_scores(probe: Probe, rows: Tensor, batch_size: int) -> tuple[Tensor, list[Tensor], Tensor]:
    """Scores `[N, n_targets]`, per-target per-token maps (BOS dropped) and cross-entropies `[N]`."""
    scores, maps, xents = [], [], []
    for first in range(0, len(rows), batch_size):
        chunk = rows[first:first + batch_size]
        result = probe(input_ids=chunk, need_output=True, keep_activations=True)
        scores.append(result.scores.float().cpu())
        maps.append([m[:, 1:].float().cpu() for m in probe.maps(result.activations)])
        xents.append(span_xentropy(result.output.logits, chunk, (1, chunk.shape[1])).cpu())  # every token after the start
    per_target = [torch.cat([m[j] for m in maps]) for j in range(len(probe.targets))]
    return torch.cat(scores), per_target, torch.cat(xents)


def corpus_xentropy(loaded: LoadedModel, corpus: str | TextCorpus, *, window: int = 64, n_windows: int = 128,
                    max_words: int | None = None, batch_size: int = 8, seed: int = 0) -> dict[str, float]:
    """Cross-entropy summary (`median`, `mean`, quantiles) of `n_windows` random corpus windows of `window` tokens.

    This is the fluency yardstick for prompts: "fluent" means a cross-entropy at or below the corpus median.

    Example:
        >>> from dreamy.models import load
        >>> corpus = TextCorpus("toy", "The cat sat on the mat. " * 20)
        >>> corpus_xentropy(load("tiny:lm"), corpus, window=8, n_windows=4)["count"]
        4
    """
    corpus = open_text(corpus, max_words)
    ids = tokenize_corpus(loaded.tokenizer, corpus)
    return summarize(_random_window_xentropy(loaded, ids, window, n_windows, batch_size, seed))


def _random_window_xentropy(loaded: LoadedModel, ids: Tensor, window: int, n_windows: int, batch_size: int, seed: int) -> Tensor:
    n_chunks = len(ids) // window
    if n_chunks < 1 or n_windows < 1:
        return torch.empty(0)
    picks = torch.randperm(n_chunks, generator=make_generator(seed))[:n_windows]
    bos = start_token(loaded.tokenizer)
    rows = torch.stack([torch.cat([torch.tensor([bos]), ids[c * window:(c + 1) * window]]) for c in picks.tolist()])
    xents = []
    with torch.no_grad():
        for first in range(0, len(rows), batch_size):
            chunk = rows[first:first + batch_size].to(loaded.device)
            xents.append(span_xentropy(loaded.model(input_ids=chunk).logits, chunk, (1, chunk.shape[1])).cpu())
    return torch.cat(xents)


def text_maxima(
    loaded: LoadedModel,
    targets: Sequence[str],
    corpus: str | TextCorpus = "fortunes",
    *,
    k: int = 16,
    window: int = 64,
    max_words: int | None = None,
    batch_size: int = 16,
    candidates: int = 4,
    xent_windows: int = 128,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = "default",
    refresh: bool = False,
    progress: bool = True,
) -> MaximaResults:
    """The top-`k` `window`-token windows of `corpus` per target; see the module docstring.

    `corpus` is a name or path for `dreamy.datasets.open_text` (cut to `max_words`) or a `TextCorpus`.
    `candidates` windows per kept example are re-scored. Returns `{canonical target spec: Maxima}`;
    caching works as in `image_maxima` (the window length is part of the cache key).
    """
    if loaded.tokenizer is None:
        raise ValueError(f"model '{loaded.name}' has no tokenizer; text maxima need a language model (got kind {loaded.kind})")
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    corpus = open_text(corpus, max_words)
    key = f"{corpus.name}@{window}tok"
    cache = default_cache_dir() if cache_dir == "default" else cache_dir
    found, todo = cached_or_todo(loaded, targets, key, k, cache, refresh)
    if not todo:
        return MaximaResults(found)
    ids = tokenize_corpus(loaded.tokenizer, corpus)
    n_chunks = len(ids) // window
    if n_chunks < 1:
        raise ValueError(f"corpus '{corpus.name}' has {len(ids)} tokens, fewer than one window of {window}")
    bos = torch.tensor([start_token(loaded.tokenizer)])
    probe = Probe(loaded.model, todo, sequence_reduce="pos=-1")
    last_only = [probe.reads_last_position_only(j) for j in range(len(todo))]
    device = loaded.device

    def rows_ending(ends: Sequence[int]) -> Tensor:
        return torch.stack([torch.cat([bos, ids[e - window + 1:e + 1]]) for e in ends]).to(device)

    def score_batch(items: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        result = probe(input_ids=rows_ending([(c + 1) * window - 1 for c in items]), keep_activations=True)
        maps = probe.maps(result.activations)
        per_token = torch.full((len(items), window, len(todo)), float("nan"))
        for j in range(len(todo)):
            if last_only[j]:
                per_token[:, :, j] = maps[j][:, 1:].float().cpu()
            else:  # other reductions: only whole windows are candidates
                per_token[:, -1, j] = result.scores[:, j].float().cpu()
        if items[0] == 0:
            per_token[0, :-1] = float("nan")  # no full window ends before the first chunk's last token
        positions = (torch.tensor(items)[:, None] * window + torch.arange(window)[None]).flatten()
        return per_token.flatten(0, 1), positions, result.scores

    settings = {"k": k, "window": window, "candidates": candidates, "batch_size": batch_size, "n_tokens": len(ids),
                "n_words": corpus.n_words, "xent_windows": xent_windows, "seed": seed}
    checkpoint = None
    if cache is not None:
        checkpoint = entry_dir(cache, loaded.name, key, todo[0]).parent / f".scan-{safe_name('|'.join(todo))}.pt"
    top, window_scores, seconds = scan(score_batch, n_chunks, n_targets=len(todo), k=k * candidates, batch_size=batch_size,
                                       checkpoint=checkpoint, desc=f"maxima {corpus.name}", progress=progress,
                                       fingerprint=fingerprint({"model": loaded.name, "targets": todo, **settings}))
    xents = _random_window_xentropy(loaded, ids, window, xent_windows, batch_size, seed)
    for j, target in enumerate(todo):
        ends = list(dict.fromkeys(int(i) for i, v in zip(top.indices[j], top.values[j]) if torch.isfinite(v)))
        maxima = _refine(loaded, probe, j, target, key, ids, ends, rows_ending, k, batch_size)
        maxima.stats = {"activation": summarize(window_scores[:, j]), "xentropy": summarize(xents), "seconds": seconds,
                        "n_targets_in_scan": len(todo)}
        maxima.settings = settings
        if cache is not None:
            save_maxima(maxima, cache)
        found[target] = maxima
    return MaximaResults({canonical_target(t): found[canonical_target(t)] for t in targets})


def _refine(loaded: LoadedModel, probe: Probe, j: int, target: str, dataset: str, ids: Tensor, ends: list[int],
            rows_ending: Any, k: int, batch_size: int) -> Maxima:
    """Re-score the candidate windows of target `j` standalone; keep the top `k` and the frontier."""
    if not ends:
        return Maxima(loaded.name, target, dataset, "text", [], {}, {})
    rows = rows_ending(ends)
    unique = list(dict.fromkeys(tuple(r.tolist()) for r in rows))
    keep = [next(i for i, r in enumerate(rows) if tuple(r.tolist()) == u) for u in unique]
    rows, ends = rows[keep], [ends[i] for i in keep]
    scores, maps, xents = _full_scores(probe, rows, batch_size)
    tokenizer = loaded.tokenizer
    window = rows.shape[1] - 1

    def example(rank: int, i: int) -> Example:
        token_ids = rows[i, 1:].tolist()
        return Example(rank, ends[i], float(scores[i, j]), f"{dataset} tokens {ends[i] - window + 1}..{ends[i]}",
                       tokenizer.decode(token_ids), [tokenizer.decode([t]) for t in token_ids], token_ids,
                       [round(float(v), 5) for v in maps[j][i]], float(xents[i]))

    order = scores[:, j].argsort(descending=True).tolist()
    examples = [example(rank, i) for rank, i in enumerate(order[:k])]
    frontier, best_xent = [], float("inf")
    for i in order:  # walk down in activation; a window joins when it is more fluent than all above it
        if float(xents[i]) < best_xent:
            best_xent = float(xents[i])
            frontier.append(example(len(frontier), i))
    return Maxima(loaded.name, target, dataset, "text", examples, {}, {}, frontier=frontier)
