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
from dreamy.core.frozen import frozen
from dreamy.datasets import TextCorpus, open_text
from dreamy.language.fluency import span_xentropy
from dreamy.language.layout import PromptLayout, make_layout
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
def _full_scores(probe: Probe, rows: Tensor, span: tuple[int, int], batch_size: int) -> tuple[Tensor, list[Tensor], Tensor]:
    """Scores `[N, n_targets]`, per-target per-token maps over the `span` positions and the span's mean
    cross-entropy `[N]` of full sequences `rows` (scored like prompts: every target read at the last token)."""
    scores, maps, xents = [], [], []
    start, end = span
    for first in range(0, len(rows), batch_size):
        chunk = rows[first:first + batch_size]
        result = probe(input_ids=chunk, need_output=True, keep_activations=True)
        scores.append(result.scores.float().cpu())
        maps.append([m[:, start:end].float().cpu() for m in probe.maps(result.activations)])
        xents.append(span_xentropy(result.output.logits, chunk, span).cpu())
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


def _random_window_xentropy(loaded: LoadedModel, ids: Tensor, window: int, n_windows: int, batch_size: int, seed: int,
                            layout: PromptLayout | None = None) -> Tensor:
    n_chunks = len(ids) // window
    if n_chunks < 1 or n_windows < 1:
        return torch.empty(0)
    layout = layout or make_layout(loaded.tokenizer, window)
    picks = torch.randperm(n_chunks, generator=make_generator(seed))[:n_windows]
    rows = layout.full(torch.stack([ids[c * window:(c + 1) * window] for c in picks.tolist()]).to(layout.prefix.device))
    xents = []
    with torch.no_grad():
        for first in range(0, len(rows), batch_size):
            chunk = rows[first:first + batch_size].to(loaded.device)
            xents.append(span_xentropy(loaded.model(input_ids=chunk).logits, chunk, layout.span).cpu())
    return torch.cat(xents)


def maxima_key(corpus_name: str, n_tokens: int, prefix: str = "", suffix: str = "") -> str:
    """The data-set name (and cache key) of a corpus's windows of `n_tokens` tokens, scored between `prefix` and
    `suffix` when they are given.

    Example:
        >>> maxima_key("fortunes", 12), maxima_key("fortunes", 12, prefix="Q: ").startswith("fortunes@12tok[")
        ('fortunes@12tok', True)
    """
    key = f"{corpus_name}@{n_tokens}tok"
    return key + (f"[{safe_name(prefix + chr(0) + suffix)}]" if prefix or suffix else "")


MATCHED_CANDIDATES = 256  # windows re-scored per target for a length other than the scan's


def text_maxima(
    loaded: LoadedModel,
    targets: Sequence[str],
    corpus: str | TextCorpus = "fortunes",
    *,
    k: int = 16,
    window: int = 64,
    lengths: Sequence[int] = (),
    prefix: str = "",
    suffix: str = "",
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
    caching works as in `image_maxima` (the window length is part of the cache key, `maxima_key`).

    `lengths` asks, from the same corpus pass, also for the windows of each of these token lengths (a prompt's
    `n_tokens`: the yardstick a dream is compared with), each ending at its peak token and scored exactly as a
    prompt of that length is (BOS, `prefix`, the window, `suffix`; the target read at the last token, the
    cross-entropy over the window's tokens): `results.at(n_tokens)`. Their candidates are the
    `MATCHED_CANDIDATES` best tokens of the pass, re-scored at that length.

    Example:
        >>> from dreamy.models import load
        >>> corpus = TextCorpus("toy", "The cat sat on the mat. The dog ran in the park. " * 8)
        >>> found = text_maxima(load("tiny:lm"), ["logits:3"], corpus, k=2, window=8, lengths=[3], xent_windows=4,
        ...                     cache_dir=None, progress=False)
        >>> len(found["logits:3"].examples[0].token_ids), len(found.at(3)["logits:3"].examples[0].token_ids)
        (8, 3)
    """
    if loaded.tokenizer is None:
        raise ValueError(f"model '{loaded.name}' has no tokenizer; text maxima need a language model (got kind {loaded.kind})")
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    bad = [n for n in lengths if not isinstance(n, int) or n < 1]
    if bad:
        raise ValueError(f"lengths must be positive token counts, got {bad[0]!r}")
    corpus = open_text(corpus, max_words)
    cache = default_cache_dir() if cache_dir == "default" else cache_dir
    requests = [(window, "", "")] + [(n, prefix, suffix) for n in dict.fromkeys(lengths) if (n, prefix, suffix) != (window, "", "")]
    found: dict[tuple[int, str, str], dict[str, Maxima]] = {}
    todo: dict[tuple[int, str, str], list[str]] = {}
    for request in requests:
        found[request], todo[request] = cached_or_todo(loaded, targets, maxima_key(corpus.name, *request), k, cache, refresh)
    scanned = list(dict.fromkeys(t for request in requests for t in todo[request]))
    if scanned:
        with frozen(loaded.model):  # no dropout; the model's mode restored after
            _scan_and_refine(loaded, corpus, scanned, requests, found, todo, k, window, batch_size, candidates,
                             xent_windows, seed, cache, progress)
    results = [MaximaResults({canonical_target(t): found[request][canonical_target(t)] for t in targets})
               for request in requests]
    main = results[0]
    main.lengths = {request[0]: result for request, result in zip(requests, results)}
    return main


def _scan_and_refine(loaded: LoadedModel, corpus: TextCorpus, scanned: list[str], requests: list[tuple[int, str, str]],
                     found: dict, todo: dict, k: int, window: int, batch_size: int, candidates: int, xent_windows: int,
                     seed: int, cache: Any, progress: bool) -> None:
    """One pass over the corpus for the `scanned` targets, then each request's missing targets re-scored."""
    ids = tokenize_corpus(loaded.tokenizer, corpus)
    n_chunks = len(ids) // window
    if n_chunks < 1:
        raise ValueError(f"corpus '{corpus.name}' has {len(ids)} tokens, fewer than one window of {window}")
    probe = Probe(loaded.model, scanned, sequence_reduce="pos=-1")
    last_only = [probe.reads_last_position_only(j) for j in range(len(scanned))]
    device = loaded.device
    scan_layout = make_layout(loaded.tokenizer, window, device=device)

    def score_batch(items: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        chunks = torch.stack([ids[c * window:(c + 1) * window] for c in items]).to(device)
        result = probe(input_ids=scan_layout.full(chunks), keep_activations=True)
        maps = probe.maps(result.activations)
        per_token = torch.full((len(items), window, len(scanned)), float("nan"))
        for j in range(len(scanned)):
            if last_only[j]:
                per_token[:, :, j] = maps[j][:, 1:].float().cpu()
            else:  # other reductions: only whole windows are candidates
                per_token[:, -1, j] = result.scores[:, j].float().cpu()
        if items[0] == 0:
            per_token[0, :-1] = float("nan")  # no full window ends before the first chunk's last token
        positions = (torch.tensor(items)[:, None] * window + torch.arange(window)[None]).flatten()
        return per_token.flatten(0, 1), positions, result.scores

    keep = k * candidates if len(requests) == 1 else max(k * candidates, MATCHED_CANDIDATES)
    settings = {"k": k, "window": window, "candidates": candidates, "batch_size": batch_size, "n_tokens": len(ids),
                "n_words": corpus.n_words, "xent_windows": xent_windows, "seed": seed}
    checkpoint = None
    if cache is not None:
        checkpoint = entry_dir(cache, loaded.name, maxima_key(corpus.name, window), scanned[0]).parent / \
            f".scan-{safe_name('|'.join(scanned))}.pt"
    top, window_scores, seconds = scan(score_batch, n_chunks, n_targets=len(scanned), k=keep, batch_size=batch_size,
                                       checkpoint=checkpoint, desc=f"maxima {corpus.name}", progress=progress,
                                       fingerprint=fingerprint({"model": loaded.name, "targets": scanned, "keep": keep,
                                                                **settings}))
    for request in requests:
        n_tokens, prefix, suffix = request
        if not todo[request]:
            continue
        layout = make_layout(loaded.tokenizer, n_tokens, prefix, suffix, device=device)
        xents = _random_window_xentropy(loaded, ids, n_tokens, xent_windows, batch_size, seed, layout)
        refine_probe = probe if request == requests[0] else Probe(loaded.model, todo[request], sequence_reduce="pos=-1")
        shown = k * candidates if request == requests[0] else MATCHED_CANDIDATES
        for target in todo[request]:
            j = scanned.index(target)
            ends = list(dict.fromkeys(int(i) for i, v in zip(top.indices[j][:shown], top.values[j][:shown])
                                      if torch.isfinite(v) and int(i) >= n_tokens - 1))
            row = (scanned if refine_probe is probe else todo[request]).index(target)
            maxima = _refine(loaded, refine_probe, row, target, maxima_key(corpus.name, *request), ids, ends, layout, k,
                             max(batch_size, 64 if n_tokens < window else 0))
            maxima.stats = {"activation": summarize(window_scores[:, j]), "xentropy": summarize(xents),
                            "seconds": seconds, "n_targets_in_scan": len(scanned)}
            maxima.settings = {**settings, "window": n_tokens, "prefix": prefix, "suffix": suffix,
                               "scan_window": window, "candidates_rescored": len(ends)}
            if cache is not None:
                save_maxima(maxima, cache)
            found[request][target] = maxima


def _refine(loaded: LoadedModel, probe: Probe, j: int, target: str, dataset: str, ids: Tensor, ends: list[int],
            layout: PromptLayout, k: int, batch_size: int) -> Maxima:
    """Re-score the candidate windows (of `layout.n_tokens` tokens ending at `ends`) of target `j` standalone, in
    `layout`; keep the top `k` and the frontier."""
    if not ends:
        return Maxima(loaded.name, target, dataset, "text", [], {}, {})
    window = layout.n_tokens
    spans = torch.stack([ids[e - window + 1:e + 1] for e in ends])
    unique = list(dict.fromkeys(tuple(r.tolist()) for r in spans))
    first = {}
    for i, r in enumerate(spans.tolist()):
        first.setdefault(tuple(r), i)
    keep = [first[u] for u in unique]
    spans, ends = spans[keep], [ends[i] for i in keep]
    scores, maps, xents = _full_scores(probe, layout.full(spans.to(layout.prefix.device)), layout.span, batch_size)
    tokenizer = loaded.tokenizer

    def example(rank: int, i: int) -> Example:
        token_ids = spans[i].tolist()
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
