"""Token-space labels for a finished prompt run's targets: the labels step of `runs.enrich` (`dream prompt
--labels`, with `--maxima CORPUS`).

`label_records` cuts the corpus into windows (`sae.activations.corpus_windows`), reads every finished target at
every token of them in one pass per batch (`labels.window_activations`), runs `labels.token_labels` per target on
those values and puts the result on the record as `"labels"`: the top label tokens with the judge's held-out
accuracy, the best one, and the baseline rule (the most frequent top-activating token). A target the search
cannot label (too few activating windows, a site without token positions) gets `"labels_error"` instead; the
other targets are labelled all the same.

Example (no finished prompt records: nothing to label):
    >>> from dreamy.models import load
    >>> label_records(load("tiny:lm"), [{"kind": "prompt", "target": "x:1", "error": "boom"}], LabelStep("fortunes"))
    []
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from dreamy.core.records import record_kind
from dreamy.models import LoadedModel

log = logging.getLogger(__name__)

#: windows the labels are searched on (and their length): ~32k tokens, one forward pass shared by every target
LABEL_WINDOWS = 1024
WINDOW_TOKENS = 32


@dataclass(frozen=True)
class LabelStep:
    """What the labels step searches on: `windows` windows of `window_tokens` tokens drawn (seeded) from `corpus`
    (a name, a file or a `TextCorpus`; at most `max_words` words read), with `config` (a `labels.LabelConfig`;
    None: its defaults).

    Example:
        >>> LabelStep("fortunes").windows
        1024
    """

    corpus: Any
    config: Any = None
    windows: int = LABEL_WINDOWS
    window_tokens: int = WINDOW_TOKENS
    max_words: int | None = None


def label_records(loaded: LoadedModel, records: Sequence[dict[str, Any]], step: LabelStep, *,
                  progress: bool = True) -> list[dict[str, Any]]:
    """Copies of the finished prompt `records` with their `"labels"` (or `"labels_error"`), searched as `step`
    says (see the module docstring); error and image records are left out.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.datasets import TextCorpus
        >>> from dreamy.labels import LabelConfig
        >>> corpus = TextCorpus("toy", "The cat sat on the mat. The dog ran in the park and the sun is hot. " * 30)
        >>> config = LabelConfig(steps=1, context=6, answers=(" the", " a"))
        >>> step = LabelStep(corpus, config, windows=64, window_tokens=8)
        >>> [record] = label_records(load("tiny:lm"), [{"kind": "prompt", "target": "model.layers.1:3"}], step,
        ...                          progress=False)
        >>> record["labels"]["counts"]["windows"], record["labels"]["corpus"]
        (64, 'toy')
    """
    from dreamy.labels import LabelConfig, token_labels, window_activations
    from dreamy.sae.activations import corpus_windows

    config = LabelConfig.build(step.config)
    records = [r for r in records if "error" not in r and record_kind(r) == "prompt"]
    if not records:
        return []
    split = corpus_windows(loaded.tokenizer, [step.corpus], window=step.window_tokens, heldout_windows=0,
                           seed=config.seed, max_words=step.max_words)
    ids = split.train[:step.windows]
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
        entry["corpus"] = getattr(step.corpus, "name", str(step.corpus))
        record = {key: value for key, value in record.items() if key != "labels_error"}
        updated.append({**record, "labels": entry})
    return updated


__all__ = ["LABEL_WINDOWS", "LabelStep", "WINDOW_TOKENS", "label_records"]
