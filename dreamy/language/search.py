"""What GCG and EPO share: setting up a search, scoring candidates, and building the result.

Example:
    >>> from dreamy.models import load
    >>> setup = SearchSetup.build(load("tiny:lm"), "model.layers.1.mlp.down_proj:3", n_tokens=4)
    >>> setup.layout.span
    (1, 5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dreamy.language.attribution import token_attribution
from dreamy.language.candidates import PromptLayout, allowed_tokens, make_layout
from dreamy.language.frontier import pareto_indices
from dreamy.language.result import FrontierPoint, PromptResult
from dreamy.language.scoring import SequenceScores, score_sequences
from dreamy.models import LoadedModel
from dreamy.targets import Probe, Target, parse


@dataclass
class SearchSetup:
    """A model, its tokenizer, the probe for one target, and the prompt layout."""

    model: nn.Module
    tokenizer: Any
    target: Target
    probe: Probe
    layout: PromptLayout
    allowed: Tensor
    fluency_model: nn.Module | None = None
    chunk_size: int | None = None
    retokenize: bool = True

    @classmethod
    def build(cls, loaded: LoadedModel, target: str | Target, *, n_tokens: int, prefix: str = "", suffix: str = "",
              ascii_only: bool = True, fluency_model: nn.Module | None = None, chunk_size: int | None = None,
              retokenize: bool = True) -> "SearchSetup":
        """Parse the target and tokenize the layout for `loaded` (a language `LoadedModel`)."""
        if loaded.tokenizer is None:
            raise ValueError(f"model '{loaded.name}' has no tokenizer; prompt search needs a language model")
        target = parse(target)
        probe = Probe(loaded.model, [target], sequence_reduce="pos=-1")
        device = loaded.device
        layout = make_layout(loaded.tokenizer, n_tokens, prefix, suffix, device=device)
        vocab = loaded.model.get_input_embeddings().weight.shape[0]
        allowed = allowed_tokens(loaded.tokenizer, ascii_only=ascii_only, vocab_size=vocab)
        return cls(loaded.model, loaded.tokenizer, target, probe, layout, allowed, fluency_model, chunk_size, retokenize)

    def score(self, spans: Tensor, parent: Tensor | None = None) -> SequenceScores:
        """Activation `[N]` and span cross-entropy `[N]` of spans `[N, L]` (parent span enables KV reuse)."""
        parent_ids = None if parent is None else self.layout.full(parent[None])[0]
        scores = score_sequences(self.model, self.probe, self.layout.full(spans), xent_span=self.layout.span,
                                 parent_ids=parent_ids, fluency_model=self.fluency_model, chunk_size=self.chunk_size)
        return SequenceScores(scores.activation[:, 0], scores.xentropy)

    def text(self, span: Tensor) -> str:
        """Decoded span text."""
        return self.tokenizer.decode(span.tolist())

    def result(self, history: list[dict[str, Any]], settings: dict[str, Any], seed: int, method: str) -> PromptResult:
        """Build the result: Pareto frontier of the history (unique prompts) with token attributions."""
        unique: dict[tuple[int, ...], dict[str, Any]] = {}
        for row in history:
            unique.setdefault(tuple(row["token_ids"]), row)
        rows = list(unique.values())
        keep = pareto_indices([r["activation"] for r in rows], [r["xentropy"] for r in rows])
        frontier = []
        for i in keep:
            row = rows[i]
            full = self.layout.full(torch.tensor(row["token_ids"], device=self.layout.prefix.device)[None])[0]
            attribution = token_attribution(self.model, self.probe, full)
            start, end = self.layout.span
            frontier.append(FrontierPoint(row["text"], row["token_ids"], row["activation"], row["xentropy"],
                                          [self.tokenizer.decode([t]) for t in row["token_ids"]], attribution[start:end]))
        settings = {**settings, "prefix": self.tokenizer.decode(self.layout.prefix.tolist()),
                    "suffix": self.tokenizer.decode(self.layout.suffix.tolist())}
        return PromptResult(str(self.target), history, frontier, settings, seed, method)


def history_rows(setup: SearchSetup, spans: Tensor, scores: SequenceScores, iteration: int, slot: int | None = None,
                 lam: float | None = None) -> list[dict[str, Any]]:
    """History dicts for evaluated spans."""
    return [{"iteration": iteration, "slot": slot, "lambda": lam, "text": setup.text(span), "token_ids": span.tolist(),
             "activation": float(a), "xentropy": float(x)}
            for span, a, x in zip(spans, scores.activation.tolist(), scores.xentropy.tolist())]
