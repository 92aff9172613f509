"""What seeds a prompt search from the corpus: each target's matched-length windows, found before the run.

An `init` of "maxima" or "mixed" (`language.proposals.SEEDED_INITS`) starts a search from the corpus windows of
the prompt's own length, in its layout (prefix and suffix), scored as the prompt is: `text_maxima(...,
lengths=[n_tokens])` in one pass for every target, cached like any maxima search.

Example:
    >>> from dreamy.models import load
    >>> from dreamy.datasets import TextCorpus
    >>> from dreamy.language import EPOConfig
    >>> corpus = TextCorpus("toy", "The cat sat on the mat. The dog ran in the park. " * 8)
    >>> found = matched_windows(load("tiny:lm"), ["logits:3"], EPOConfig(n_tokens=3), corpus, k=2, window=8,
    ...                         xent_windows=2, cache_dir=None, progress=False)
    >>> [len(ids) for ids in found["logits:3"]]
    [3, 3]
"""

from __future__ import annotations

from typing import Any, Sequence

from dreamy.maxima.records import canonical_target
from dreamy.maxima.text import text_maxima
from dreamy.models import LoadedModel


def matched_windows(loaded: LoadedModel, specs: Sequence[str], config: Any, corpus: Any,
                    **scan: Any) -> dict[str, list[list[int]]]:
    """Each target's matched-length dataset windows (`text_maxima(..., lengths=[config.n_tokens])` in the
    prompt's layout of `config`, an `EPOConfig` or `GCGConfig`), best first, as the token ids a search starts
    from; `scan` goes to `text_maxima` (e.g. `k`, `cache_dir`, `progress`).

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.datasets import TextCorpus
        >>> from dreamy.language import GCGConfig
        >>> corpus = TextCorpus("toy", "The cat sat on the mat. The dog ran in the park. " * 8)
        >>> found = matched_windows(load("tiny:lm"), ["logits:3", "logits:4"], GCGConfig(n_tokens=2), corpus, k=1,
        ...                         window=8, xent_windows=2, cache_dir=None, progress=False)
        >>> sorted(found), [len(ids) for ids in found["logits:4"]]
        (['logits:3', 'logits:4'], [2])
    """
    found = text_maxima(loaded, list(specs), corpus, lengths=[config.n_tokens], prefix=config.prefix,
                        suffix=config.suffix, **scan).at(config.n_tokens)
    return {spec: [e.token_ids for e in found[canonical_target(spec)].examples] for spec in specs}


__all__ = ["matched_windows"]
