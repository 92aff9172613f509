"""Token-space labels for a finished prompt run's targets (`dream prompt --labels`, with `--maxima CORPUS`).

`attach_labels` cuts the corpus into windows (`sae.activations.corpus_windows`), reads every finished target at
every token of them in one pass per batch (`labels.window_activations`), runs `labels.token_labels` per target on
those values and puts the result on the record as `"labels"`: the top label tokens with the judge's held-out
accuracy, the best one, and the baseline rule (the most frequent top-activating token). A target the search
cannot label (too few activating windows, a site without token positions) gets `"labels_error"` instead; the
other targets are labelled all the same.

Example (a run without finished prompt records labels nothing):
    >>> import tempfile
    >>> from dreamy.models import load
    >>> attach_labels(tempfile.mkdtemp(), load("tiny:lm"), "fortunes", progress=False)
    []
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dreamy.models import LoadedModel
from dreamy.report.page import gallery_title, write_index
from dreamy.runs.store import ResultsStore, run_lock

log = logging.getLogger(__name__)

#: windows the labels are searched on (and their length): ~32k tokens, one forward pass shared by every target
LABEL_WINDOWS = 1024
WINDOW_TOKENS = 32


def attach_labels(out_dir: str | Path, loaded: LoadedModel, corpus: Any, config: Any = None, *,
                  windows: int = LABEL_WINDOWS, window_tokens: int = WINDOW_TOKENS, max_words: int | None = None,
                  progress: bool = True, **overrides: Any) -> list[dict[str, Any]]:
    """Search token labels (`dreamy.labels.token_labels` with `config`/`overrides`) for the finished prompt
    records in `out_dir` on `windows` windows of `window_tokens` tokens drawn (seeded) from `corpus`, and rewrite
    the gallery. Returns the updated records.

    Example:
        >>> import tempfile
        >>> from dreamy.models import load
        >>> from dreamy.datasets import TextCorpus
        >>> from dreamy.language import EPOConfig
        >>> from dreamy.runs import dream_targets
        >>> lm, out = load("tiny:lm"), tempfile.mkdtemp()
        >>> _ = dream_targets(lm, ["model.layers.1:3"], EPOConfig(iters=1, n_tokens=3, population=2, children=4),
        ...                   out_dir=out, progress=False)
        >>> corpus = TextCorpus("toy", "The cat sat on the mat. The dog ran in the park and the sun is hot. " * 30)
        >>> [record] = attach_labels(out, lm, corpus, windows=64, window_tokens=8, steps=1, context=6,
        ...                          answers=(" the", " a"), progress=False)
        >>> record["labels"]["counts"]["windows"], record["labels"]["corpus"]
        (64, 'toy')
    """
    with run_lock(out_dir):
        return _attach_labels(Path(out_dir), loaded, corpus, config, windows, window_tokens, max_words, progress,
                              overrides)


def _attach_labels(out: Path, loaded: LoadedModel, corpus: Any, config: Any, count: int, window_tokens: int,
                   max_words: int | None, progress: bool, overrides: dict[str, Any]) -> list[dict[str, Any]]:
    from dreamy.labels import LabelConfig, token_labels, window_activations
    from dreamy.sae.activations import corpus_windows

    config = LabelConfig.build(config, **overrides)
    store = ResultsStore(out)
    records = [r for r in store.records if "error" not in r and r.get("kind") == "prompt"]
    if not records:
        return []
    split = corpus_windows(loaded.tokenizer, [corpus], window=window_tokens, heldout_windows=0, seed=config.seed,
                           max_words=max_words)
    ids = split.train[:count]
    specs = [r["target"] for r in records]
    try:
        values = window_activations(loaded, specs, ids, config.batch_size)
    except ValueError:  # one target without token positions: read them one by one so the others are labelled
        values = None
    updated = []
    for j, record in enumerate(records):
        try:
            found = token_labels(loaded, record["target"], ids, config, progress=progress,
                                 activations=None if values is None else values[j])
        except ValueError as error:
            log.warning("no token labels for %s: %s", record["target"], error)
            updated.append({**record, "labels_error": str(error).splitlines()[0]})
            continue
        entry = found.to_records()[0]
        entry.pop("kind", None)
        entry.pop("target", None)
        entry["history"] = entry["history"][-1:]  # the last step only: the card shows no curve
        entry["corpus"] = getattr(corpus, "name", str(corpus))
        record = {key: value for key, value in record.items() if key != "labels_error"}
        updated.append({**record, "labels": entry})
    store.add_many(updated)
    kind = (store.run or {}).get("kind") or "prompt"
    write_index(out, store.records, gallery_title(kind, loaded.name))
    return updated


__all__ = ["LABEL_WINDOWS", "WINDOW_TOKENS", "attach_labels"]
