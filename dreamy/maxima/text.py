"""Text maxima: the 64-token corpus windows that drive each target hardest, with their cross-entropy.

A window is scored exactly like a prompt on the language side: BOS + the window's tokens, the target
read at the last token (`pos=-1`) and the fluency as the mean next-token cross-entropy of the window's
tokens. So a window and an EPO/GCG prompt of the same length compare directly in (cross-entropy,
activation).

Scoring every one of the corpus's stride-1 windows would cost one forward per token. Instead:
1. scan: the corpus is cut into non-overlapping windows, run once in batches through one `Probe` for
   all targets (stopping after the deepest hooked site); every token's activation is read off the
   per-position score maps, stacked into one `[B, window, n_targets]` tensor on the model's device. The
   last token of each window is an exact window score; earlier tokens saw a shorter context and serve as
   candidates. Every target's running top-k (with each kept token's values in its scanned chunk) is one
   device tensor merged by `torch.topk`, and `dreamy.maxima.stats` gathers each target's dashboard
   statistics (density, histogram, quantile and random samples) in the same pass: `stats["tokens"]`,
   `Maxima.samples`, `MaximaResults.dead`.
2. refine: the windows ending at each target's `k * candidates` best tokens are re-scored as standalone
   windows with a full forward (activation, per-token activations, cross-entropy): the union of all
   targets' windows, each run once, in batches scored for every target. Per target the best `k` are
   kept, and the windows that no other re-scored window beats in both activation and cross-entropy form
   the data set's frontier. `rescore=False` skips this for the scan's windows (a dashboard of thousands of
   features): the examples are then the top tokens' scanned chunks with the scan's values, as
   SAEDashboard shows them; the matched-length windows (`lengths`, a verdict's yardstick) are always
   re-scored.
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
import math
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
from dreamy.maxima.stats import ActivationStats
from dreamy.maxima.topk import ScanBatch, scan, summarize
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
    rescore: bool = True,
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

    `rescore=False`: the `window`-token examples are the scan's own (see the module docstring; no
    cross-entropy, no frontier), cached apart from re-scored ones.

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
        wanted = rescore or request != requests[0]  # a scan-only entry and a re-scored one never stand in for each other
        found[request], todo[request] = cached_or_todo(loaded, targets, maxima_key(corpus.name, *request), k, cache, refresh,
                                                       lambda entry: entry.settings.get("rescore", True) == wanted)
    scanned = list(dict.fromkeys(t for request in requests for t in todo[request]))
    if scanned:
        with frozen(loaded.model):  # no dropout; the model's mode restored after
            _scan_and_refine(loaded, corpus, scanned, requests, found, todo, k, window, batch_size, candidates,
                             xent_windows, seed, cache, progress, rescore)
    results = [MaximaResults({canonical_target(t): found[request][canonical_target(t)] for t in targets})
               for request in requests]
    main = results[0]
    main.lengths = {request[0]: result for request, result in zip(requests, results)}
    return main


def _scan_and_refine(loaded: LoadedModel, corpus: TextCorpus, scanned: list[str], requests: list[tuple[int, str, str]],
                     found: dict, todo: dict, k: int, window: int, batch_size: int, candidates: int, xent_windows: int,
                     seed: int, cache: Any, progress: bool, rescore: bool) -> None:
    """One pass over the corpus for the `scanned` targets, then each request's missing targets re-scored."""
    ids = tokenize_corpus(loaded.tokenizer, corpus)
    n_chunks = len(ids) // window
    if n_chunks < 1:
        raise ValueError(f"corpus '{corpus.name}' has {len(ids)} tokens, fewer than one window of {window}")
    probe = Probe(loaded.model, scanned, sequence_reduce="pos=-1")
    last_only = [probe.reads_last_position_only(j) for j in range(len(scanned))]
    device = loaded.device
    scan_layout = make_layout(loaded.tokenizer, window, device=device)
    per_token_columns = torch.tensor([j for j, last in enumerate(last_only) if last], dtype=torch.long, device=device)
    window_columns = torch.tensor([j for j, last in enumerate(last_only) if not last], dtype=torch.long, device=device)
    offsets = torch.arange(window, device=device)

    def score_batch(items: Sequence[int]) -> ScanBatch:
        """Every target's value at every token of the batch's chunks `[B, window, n_targets]`, on the device: one
        stack for the targets read per token, the window scores of the others at each chunk's last token."""
        chunks = torch.stack([ids[c * window:(c + 1) * window] for c in items]).to(device)
        result = probe(input_ids=scan_layout.full(chunks), keep_activations=True)
        scores = result.scores.float()
        if all(last_only):
            per_token = _stacked_maps(probe, result.activations)[:, 1:].float()
        else:
            per_token = torch.full((len(items), window, len(scanned)), float("nan"), device=device)
            if len(per_token_columns):
                maps = probe.maps(result.activations)
                per_token[:, :, per_token_columns] = torch.stack([m[:, 1:].float() for m, last in zip(maps, last_only) if last], dim=-1)
            per_token[:, -1, window_columns] = scores[:, window_columns]  # other reductions: only whole windows are candidates
        candidates_ = per_token
        if rescore and items[0] == 0:
            candidates_ = per_token.clone()
            candidates_[0, :-1] = float("nan")  # no full window ends before the first chunk's last token
        item_tensor = torch.tensor(items, device=device)
        positions = (item_tensor[:, None] * window + offsets[None]).flatten()
        rows = torch.arange(len(items), device=device).repeat_interleave(window)
        return ScanBatch(candidates_.flatten(0, 1), positions, scores, per_token, rows, item_tensor)

    keep = k * candidates if len(requests) == 1 else max(k * candidates, MATCHED_CANDIDATES)
    settings = {"k": k, "window": window, "candidates": candidates, "batch_size": batch_size, "n_tokens": len(ids),
                "n_words": corpus.n_words, "xent_windows": xent_windows, "seed": seed}
    checkpoint = None
    if cache is not None:
        checkpoint = entry_dir(cache, loaded.name, maxima_key(corpus.name, window), scanned[0]).parent / \
            f".scan-{safe_name('|'.join(scanned))}.pt"
    statistics = ActivationStats(len(scanned), window, n_items=n_chunks, seed=seed, device=device)
    top, window_scores, seconds = scan(score_batch, n_chunks, n_targets=len(scanned), k=keep, batch_size=batch_size,
                                       context=window, observers=[statistics], checkpoint=checkpoint,
                                       desc=f"maxima {corpus.name}", progress=progress,
                                       fingerprint=fingerprint({"model": loaded.name, "targets": scanned, "keep": keep,
                                                                "rescore": rescore, **settings}))
    top_values, top_indices, top_contexts = top.values.cpu(), top.indices.cpu(), top.contexts.cpu()
    value_lists, index_lists = top_values.tolist(), top_indices.tolist()  # plain numbers for the per-target loops
    dashboards = statistics.results()
    context = _Context(loaded.tokenizer, ids, window, corpus.name)
    for request in requests:
        n_tokens, prefix, suffix = request
        if not todo[request]:
            continue
        dataset = maxima_key(corpus.name, *request)
        layout = make_layout(loaded.tokenizer, n_tokens, prefix, suffix, device=device)
        xents = _random_window_xentropy(loaded, ids, n_tokens, xent_windows, batch_size, seed, layout)
        main = request == requests[0]
        shown = k * candidates if main else MATCHED_CANDIDATES
        columns = [scanned.index(target) for target in todo[request]]
        rescored = [0] * len(columns)
        if main and not rescore:
            refined = [_scan_examples(loaded.name, target, dataset, context, value_lists[j][:k], index_lists[j][:k],
                                      top_contexts[j, :k]) for target, j in zip(todo[request], columns)]
        else:
            refine_probe = probe if main else Probe(loaded.model, todo[request], sequence_reduce="pos=-1")
            ends = [list(dict.fromkeys(i for i, v in zip(index_lists[j][:shown], value_lists[j][:shown])
                                       if math.isfinite(v) and i >= n_tokens - 1)) for j in columns]
            rows = columns if main else list(range(len(columns)))
            rescored = [len(e) for e in ends]
            refined = _refine(loaded, refine_probe, rows, todo[request], dataset, ids, ends, layout, k,
                              max(batch_size, 64 if n_tokens < window else 0), context)
        for target, j, maxima, n_rescored in zip(todo[request], columns, refined, rescored):
            in_scan = {i: slot for slot, (i, v) in enumerate(zip(index_lists[j], value_lists[j])) if math.isfinite(v)}
            for example in maxima.examples + maxima.frontier:
                if example.index in in_scan and example.context_activations is None:
                    context.attach(example, top_contexts[j, in_scan[example.index]])
            dashboard = dashboards[j]
            maxima.samples = [context.example(rank, index, value, row, group)
                              for group, picked in dashboard.samples.items() for rank, (index, value, row) in enumerate(picked)]
            maxima.stats = {"activation": summarize(window_scores[:, j]), "xentropy": summarize(xents),
                            "seconds": seconds, "n_targets_in_scan": len(scanned), "tokens": dashboard.summary}
            maxima.settings = {**settings, "window": n_tokens, "prefix": prefix, "suffix": suffix,
                               "scan_window": window, "candidates_rescored": n_rescored,
                               **({"rescore": False} if main and not rescore else {})}
            if cache is not None:
                save_maxima(maxima, cache)
            found[request][target] = maxima


def _stacked_maps(probe: Probe, activations: dict[str, Tensor]) -> Tensor:
    """Every target's per-position map as one `[B, *positions, n_targets]` tensor (`Probe.stacked_maps`: the units
    of one site read together)."""
    return probe.stacked_maps(activations)


class _Context:
    """Examples read off the scan: the scanned chunk holding a token, with the target's values at its tokens."""

    def __init__(self, tokenizer: Any, ids: Tensor, window: int, corpus_name: str) -> None:
        self.tokenizer, self.ids, self.window, self.corpus_name = tokenizer, ids, window, corpus_name
        self._pieces: dict[int, str] = {}
        self._texts: dict[tuple[int, ...], str] = {}

    def decoded(self, token_ids: list[int]) -> tuple[str, list[str]]:
        """The text of `token_ids` and each token's own text, each decoded once per run (thousands of targets
        share their windows)."""
        key = tuple(token_ids)
        if key not in self._texts:
            self._texts[key] = self.tokenizer.decode(token_ids)
        for t in token_ids:
            if t not in self._pieces:
                self._pieces[t] = self.tokenizer.decode([t])
        return self._texts[key], [self._pieces[t] for t in token_ids]

    def attach(self, example: Example, row: Tensor) -> None:
        """Set `example`'s scanned context (the chunk holding its last token) and its values there."""
        example.context_start = example.index // self.window * self.window
        example.context_activations = [round(v, 5) if math.isfinite(v) else None for v in row.tolist()]

    def example(self, rank: int, index: int, value: float, row: Tensor, group: str | None = None) -> Example:
        """The scanned chunk holding token `index` as an example whose activation is `value` (the scan's)."""
        start = index // self.window * self.window
        token_ids = self.ids[start:start + self.window].tolist()
        example = Example(rank, index, value, f"{self.corpus_name} tokens {start}..{start + self.window - 1}",
                          *self.decoded(token_ids), token_ids, group=group)
        self.attach(example, row)
        example.token_activations = example.context_activations
        return example


def _scan_examples(model_name: str, target: str, dataset: str, context: _Context, values: list[float], indices: list[int],
                   rows: Tensor) -> Maxima:
    """The top tokens of the scan as examples, each its scanned chunk with the values there (no re-scoring)."""
    examples = [context.example(rank, i, v, rows[rank]) for rank, (v, i) in enumerate(zip(values, indices)) if math.isfinite(v)]
    return Maxima(model_name, target, dataset, "text", examples, {}, {})


def _refine(loaded: LoadedModel, probe: Probe, columns: list[int], targets: list[str], dataset: str, ids: Tensor,
            ends: list[list[int]], layout: PromptLayout, k: int, batch_size: int, context: _Context) -> list[Maxima]:
    """Re-score the candidate windows of every target standalone in `layout` (`layout.n_tokens` tokens ending at
    `ends[i]` for `targets[i]`, read as `probe`'s target `columns[i]`): the union of all targets' windows, each
    run once, in batches scored for every target of `probe`; per target the top `k` and the frontier."""
    window = layout.n_tokens
    windows: dict[tuple[int, ...], int] = {}  # window tokens -> row in the union
    spans: list[Tensor] = []
    picked: list[list[tuple[int, int]]] = []  # per target: (union row, end) of its distinct windows
    for target_ends in ends:
        mine: dict[int, int] = {}
        for end in target_ends:
            span = ids[end - window + 1:end + 1]
            key = tuple(span.tolist())
            if key not in windows:
                windows[key] = len(spans)
                spans.append(span)
            mine.setdefault(windows[key], end)
        picked.append(list(mine.items()))
    results = [Maxima(loaded.name, target, dataset, "text", [], {}, {}) for target in targets]
    if not spans:
        return results
    device = layout.prefix.device
    member = torch.zeros(len(spans), len(columns), dtype=torch.bool)
    for i, rows in enumerate(picked):
        member[[u for u, _ in rows], i] = True
    rows_all = layout.full(torch.stack(spans).to(device))
    column_index = torch.tensor(columns, dtype=torch.long, device=device)
    start, end = layout.span
    scores, xents, values = [], [], {}
    with torch.no_grad():
        for first in range(0, len(rows_all), batch_size):
            chunk = rows_all[first:first + batch_size]
            result = probe(input_ids=chunk, need_output=True, keep_activations=True)
            maps = _stacked_maps(probe, result.activations)[:, start:end].float()[..., column_index]
            pairs = member[first:first + len(chunk)].nonzero()  # (window in batch, target) pairs asked for
            wanted = maps[pairs[:, 0].to(device), :, pairs[:, 1].to(device)].cpu()  # one host copy per batch
            for (u, i), row in zip(pairs.tolist(), wanted):
                values[(first + u, i)] = row
            scores.append(result.scores.float()[:, column_index].cpu())
            xents.append(span_xentropy(result.output.logits, chunk, layout.span).cpu())
    scores_all, xents_all = torch.cat(scores), torch.cat(xents)
    for i, rows in enumerate(picked):
        if not rows:
            continue

        def example(rank: int, u: int, end_: int) -> Example:
            token_ids = spans[u].tolist()
            return Example(rank, end_, float(scores_all[u, i]), f"{dataset} tokens {end_ - window + 1}..{end_}",
                           *context.decoded(token_ids), token_ids, [round(float(v), 5) for v in values[(u, i)]],
                           float(xents_all[u]))

        mine = torch.tensor([u for u, _ in rows])
        order = scores_all[mine, i].argsort(descending=True).tolist()
        examples = [example(rank, *rows[o]) for rank, o in enumerate(order[:k])]
        frontier, best_xent = [], float("inf")
        for o in order:  # walk down in activation; a window joins when it is more fluent than all above it
            if float(xents_all[rows[o][0]]) < best_xent:
                best_xent = float(xents_all[rows[o][0]])
                frontier.append(example(len(frontier), *rows[o]))
        results[i] = Maxima(loaded.name, targets[i], dataset, "text", examples, {}, {}, frontier=frontier)
    return results
