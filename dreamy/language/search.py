"""What GCG and EPO share: setting up a search over one or many targets, scoring candidates, building results.

Example:
    >>> from dreamy.models import load
    >>> setup = SearchSetup.build(load("tiny:lm"), "model.layers.1.mlp.down_proj:3", n_tokens=4)
    >>> setup.layout.span
    (1, 5)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dreamy.language.attribution import token_attribution
from dreamy.language.candidates import (GRADIENT_CHUNK, PromptLayout, allowed_tokens, make_layout, token_gradients,
                                        top_tokens)
from dreamy.language.frontier import pareto_indices
from dreamy.language.result import FrontierPoint, PromptResult
from dreamy.language.scoring import SequenceScores, run_chunked, score_sequences
from dreamy.models import LoadedModel
from dreamy.targets import Probe, Target, parse


@dataclass
class SearchSetup:
    """A model, its tokenizer, the targets searched together (one probe for all), and the prompt layout.

    Many targets share the layout and every batch: row i of a batch is scored by its own target
    `owners[i]` (an index into `targets`).
    """

    model: nn.Module
    tokenizer: Any
    targets: list[Target]
    probe: Probe
    layout: PromptLayout
    allowed: Tensor
    fluency_model: nn.Module | None = None
    chunk_size: int | None = None
    retokenize: bool = True

    @classmethod
    def build(cls, loaded: LoadedModel, targets: "str | Target | Sequence[str | Target]", *, n_tokens: int,
              prefix: str = "", suffix: str = "", ascii_only: bool = True, fluency_model: nn.Module | None = None,
              chunk_size: int | None = None, retokenize: bool = True) -> "SearchSetup":
        """Parse the targets and tokenize the layout for `loaded` (a language `LoadedModel`)."""
        if loaded.tokenizer is None:
            raise ValueError(f"model '{loaded.name}' has no tokenizer; prompt search needs a language model")
        if isinstance(targets, (str, Target)):
            targets = [targets]
        parsed = [parse(t) for t in targets]
        if not parsed:
            raise ValueError("no targets given; name at least one, e.g. 'logits:42'")
        probe = Probe(loaded.model, parsed, sequence_reduce="pos=-1")
        layout = make_layout(loaded.tokenizer, n_tokens, prefix, suffix, device=loaded.device)
        vocab = loaded.model.get_input_embeddings().weight.shape[0]
        allowed = allowed_tokens(loaded.tokenizer, ascii_only=ascii_only, vocab_size=vocab)
        return cls(loaded.model, loaded.tokenizer, parsed, probe, layout, allowed, fluency_model, chunk_size, retokenize)

    def _owners(self, owners: Tensor | None, n: int) -> Tensor:
        return torch.zeros(n, dtype=torch.long) if owners is None else torch.as_tensor(owners, dtype=torch.long)

    def score(self, spans: Tensor, owners: Tensor | None = None, parents: Tensor | None = None,
              parent_index: Tensor | None = None) -> SequenceScores:
        """Activation `[N]` of each span under its own target `owners[i]` (default: the first target) and span
        cross-entropy `[N]`. `parents [P, L]` (a span or several, with `parent_index [N]`) enable KV reuse."""
        parent_ids = None if parents is None else self.layout.full(parents if parents.ndim == 2 else parents[None])
        scores = score_sequences(self.model, self.probe, self.layout.full(spans), xent_span=self.layout.span,
                                 parent_ids=parent_ids, parent_index=parent_index, fluency_model=self.fluency_model,
                                 chunk_size=self.chunk_size)
        own = self._owners(owners, spans.shape[0]).to(scores.activation.device)
        return SequenceScores(scores.activation.gather(1, own[:, None]).squeeze(1), scores.xentropy)

    def top_tokens(self, spans: Tensor, lambdas: Tensor, topk: int, owners: Tensor | None = None) -> Tensor:
        """For each row, the `topk` allowed replacement tokens per position `[N, L, k]`, ranked by the one-hot
        gradient of `activation - lambda * xentropy` under target `owners[i]`. Gradients (`[rows, L, V]`)
        are reduced chunk by chunk, so many packed prompts never hold all their gradients at once."""
        owners = self._owners(owners, spans.shape[0])

        def one(rows: slice) -> Tensor:
            grad, _, _ = token_gradients(self.model, self.probe, self.layout, spans[rows], lambdas[rows],
                                         row_targets=owners[rows])
            return top_tokens(grad, self.allowed, topk)

        return torch.cat(run_chunked(one, spans.shape[0], GRADIENT_CHUNK))

    def text(self, span: Tensor) -> str:
        """Decoded span text."""
        return self.tokenizer.decode(span.tolist())

    def result(self, history: list[dict[str, Any]], settings: dict[str, Any], seed: int, method: str,
               target_index: int = 0) -> PromptResult:
        """Build the result of target `target_index`: Pareto frontier of its history (unique prompts) with
        token attributions."""
        unique: dict[tuple[int, ...], dict[str, Any]] = {}
        for row in history:
            unique.setdefault(tuple(row["token_ids"]), row)
        rows = list(unique.values())
        keep = pareto_indices([r["activation"] for r in rows], [r["xentropy"] for r in rows])
        frontier = []
        for i in keep:
            row = rows[i]
            full = self.layout.full(torch.tensor(row["token_ids"], device=self.layout.prefix.device)[None])[0]
            attribution = token_attribution(self.model, self.probe, full, target_index)
            start, end = self.layout.span
            frontier.append(FrontierPoint(row["text"], row["token_ids"], row["activation"], row["xentropy"],
                                          [self.tokenizer.decode([t]) for t in row["token_ids"]], attribution[start:end]))
        settings = {**settings, "prefix": self.tokenizer.decode(self.layout.prefix.tolist()),
                    "suffix": self.tokenizer.decode(self.layout.suffix.tolist())}
        return PromptResult(str(self.targets[target_index]), history, frontier, settings, seed, method)


def history_rows(setup: SearchSetup, spans: Tensor, scores: SequenceScores, iteration: int, slot: int | None = None,
                 lam: float | None = None) -> list[dict[str, Any]]:
    """History dicts for evaluated spans."""
    return [{"iteration": iteration, "slot": slot, "lambda": lam, "text": setup.text(span), "token_ids": span.tolist(),
             "activation": float(a), "xentropy": float(x)}
            for span, a, x in zip(spans, scores.activation.tolist(), scores.xentropy.tolist())]


def owner_spans(groups: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Concatenate per-owner span sets `[n_i, L]` into one batch `[sum n_i, L]` and the owner index of each row.

    Example:
        >>> spans, owners = owner_spans([torch.zeros(2, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long)])
        >>> owners.tolist()
        [0, 0, 1]
    """
    owners = torch.cat([torch.full((len(g),), i, dtype=torch.long) for i, g in enumerate(groups)])
    return torch.cat(list(groups)), owners
