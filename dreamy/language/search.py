"""What GCG and EPO share: setting up a search over one or many targets, scoring candidates, building results.

Example:
    >>> from dreamy.models import load
    >>> setup = SearchSetup.build(load("tiny:lm"), "model.layers.1.mlp.down_proj:3", n_tokens=4)
    >>> setup.layout.span
    (1, 5)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dreamy.language.attribution import token_attributions
from dreamy.language.gradients import GRADIENT_CHUNK, check_linear_embedding, token_gradients, top_tokens
from dreamy.language.graphs import GradientGraph, bucket_rows
from dreamy.language.layout import PromptLayout, make_layout
from dreamy.language.frontier import pareto_indices
from dreamy.language.result import FrontierPoint, PromptResult
from dreamy.language.scoring import ParentStates, SequenceScores, parent_states, run_chunked, score_sequences
from dreamy.language.tokens import allowed_tokens, decode_each
from dreamy.models import LoadedModel
from dreamy.targets import Probe, Target, parse


SCORING = ("auto", "packed", "grouped", "full")


@dataclass
class SearchSetup:
    """A model, its tokenizer, the targets searched together (one probe for all), and the prompt layout.

    Many targets share the layout and every batch: row i of a batch is scored by its own target
    `owners[i]` (an index into `targets`).

    Scoring strategy (`scoring`): `"packed"` scores children on top of their parents' KV caches, their
    changed tokens side by side in one forward (`dreamy.language.packed`); `"grouped"` does the same with
    one forward per change position; `"full"` runs one plain batched forward over whole prompts. `build`'s
    `"auto"` picks packed on every device. Measured (256 children of 8 parents, 13-token prompts): on this
    2-core CPU with SmolLM2-135M (one thread beside another job) full 15.9 s, grouped 10.3 s, packed
    8.5 s; on an H100 with a random-init Llama of the 135M shape full 51 ms, grouped 322 ms (one forward
    per position: launch-bound), packed 48 ms, and whole EPO iterations 0.25 / 0.63 / 0.16 s. Batches
    under `MIN_GROUP_FOR_CACHE` rows use plain forwards everywhere. On CUDA (`cuda_graphs`, on by default)
    the gradient pass is replayed as a CUDA graph (`dreamy.language.graphs`): the 135M-shape EPO iteration
    then took 0.08 s.
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
    scoring: str = "packed"
    n_allowed: int = 0
    cuda_graphs: bool = True
    _graphs: dict = field(default_factory=dict, repr=False)

    @property
    def reuse_kv(self) -> bool:
        """Whether children are scored on their parents' KV caches (`scoring` is packed or grouped)."""
        return self.scoring != "full"

    @classmethod
    def build(cls, loaded: LoadedModel, targets: "str | Target | Sequence[str | Target]", *, n_tokens: int,
              prefix: str = "", suffix: str = "", ascii_only: bool = True, fluency_model: nn.Module | None = None,
              chunk_size: int | None = None, retokenize: bool = True, scoring: str = "auto") -> "SearchSetup":
        """Parse the targets and tokenize the layout for `loaded` (a language `LoadedModel`); `scoring` is
        `"auto"`, `"packed"`, `"grouped"` or `"full"` (see the class docstring)."""
        if scoring not in SCORING:
            raise ValueError(f"scoring must be one of {', '.join(SCORING)}; got {scoring!r}")
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
        sample = allowed.nonzero().flatten()[:8].to(loaded.device)
        check_linear_embedding(loaded.model.get_input_embeddings(), sample)
        if fluency_model is not None:
            fluency_vocab = fluency_model.get_input_embeddings().weight.shape[0]
            if fluency_vocab != vocab:
                raise ValueError(f"fluency_model has a vocabulary of {fluency_vocab} tokens and '{loaded.name}' {vocab}; "
                                 "the fluency model must share the tokenizer (and vocabulary) of the searched model")
            check_linear_embedding(fluency_model.get_input_embeddings(), sample)
        return cls(loaded.model, loaded.tokenizer, parsed, probe, layout, allowed, fluency_model, chunk_size, retokenize,
                   scoring="packed" if scoring == "auto" else scoring, n_allowed=int(allowed.sum()))

    def _owners(self, owners: Tensor | None, n: int) -> Tensor:
        return torch.zeros(n, dtype=torch.long) if owners is None else torch.as_tensor(owners, dtype=torch.long)

    def score(self, spans: Tensor, owners: Tensor | None = None, parents: Tensor | None = None,
              parent_index: Tensor | None = None, parent_states: ParentStates | None = None) -> SequenceScores:
        """Activation `[N]` of each span under its own target `owners[i]` (default: the first target) and span
        cross-entropy `[N]`. `parents [P, L]` (a span or several, with `parent_index [N]`) enable KV reuse where
        it pays (`reuse_kv`, see the class docstring); `parent_states` (from `top_tokens_and_states` or
        `states_of`) spare the parents' forward."""
        if not self.reuse_kv:
            parents = parent_index = parent_states = None
        parent_ids = None if parents is None else self.layout.full(parents if parents.ndim == 2 else parents[None])
        scores = score_sequences(self.model, self.probe, self.layout.full(spans), xent_span=self.layout.span,
                                 parent_ids=parent_ids, parent_index=parent_index, fluency_model=self.fluency_model,
                                 chunk_size=self.chunk_size, parent_states=parent_states,
                                 strategy="grouped" if self.scoring == "grouped" else "packed")
        own = self._owners(owners, spans.shape[0]).to(scores.activation.device)
        return SequenceScores(scores.activation.gather(1, own[:, None]).squeeze(1), scores.xentropy)

    def top_tokens(self, spans: Tensor, lambdas: Tensor, topk: int, owners: Tensor | None = None) -> Tensor:
        """For each row, the `topk` allowed replacement tokens per position `[N, L, k]`, ranked by the one-hot
        gradient of `activation - lambda * xentropy` under target `owners[i]` (the cross-entropy under
        `fluency_model` when one is set). Gradients (`[rows, L, V]`) are reduced chunk by chunk, so many packed
        prompts never hold all their gradients at once."""
        return self.top_tokens_and_states(spans, lambdas, topk, owners)[0]

    @property
    def keeps_states(self) -> bool:
        """Whether scoring reuses parent states (KV reuse on, cross-entropy from the searched model)."""
        return self.reuse_kv and self.fluency_model is None

    def top_tokens_and_states(self, spans: Tensor, lambdas: Tensor, topk: int,
                              owners: Tensor | None = None) -> tuple[Tensor, ParentStates | None]:
        """`top_tokens`, and the spans' `ParentStates` kept from the same forward when scoring reuses them
        (`keeps_states`; else None): a search scores the children of these spans without another forward."""
        owners = self._owners(owners, spans.shape[0])
        replayed = self._replay_gradient_graph(spans, lambdas, topk, owners)
        if replayed is not None:
            return replayed

        def one(rows: slice) -> tuple[Tensor, list[ParentStates]]:
            kept: list[ParentStates] = []  # per call: a chunk retried after out-of-memory keeps nothing twice
            grad, _, _ = token_gradients(self.model, self.probe, self.layout, spans[rows], lambdas[rows],
                                         row_targets=owners[rows], chunk_size=GRADIENT_CHUNK,
                                         fluency_model=self.fluency_model, states=kept if self.keeps_states else None)
            return top_tokens(grad, self.allowed, topk, self.n_allowed), kept

        parts = run_chunked(one, spans.shape[0], GRADIENT_CHUNK)
        tables = torch.cat([table for table, _ in parts])
        return tables, ParentStates.cat([s for _, kept in parts for s in kept]) if self.keeps_states else None

    def _replay_gradient_graph(self, spans: Tensor, lambdas: Tensor, topk: int,
                               owners: Tensor) -> tuple[Tensor, ParentStates] | None:
        """On a CUDA device, the gradient pass as a replayed CUDA graph (`dreamy.language.graphs`; one per
        padded row count and topk), when `cuda_graphs` is on and scoring keeps parent states; else None."""
        if not (self.cuda_graphs and self.keeps_states and self._graph_device(spans.device)):
            return None
        rows = bucket_rows(spans.shape[0], GRADIENT_CHUNK)
        if rows is None:
            return None
        key = (rows, topk)
        if key not in self._graphs:
            allowed = self.allowed.to(spans.device)

            def run(batch: Tensor, weights: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
                kept: list[ParentStates] = []
                grad, _, _ = token_gradients(self.model, self.probe, self.layout, batch, weights, row_targets=targets,
                                             chunk_size=batch.shape[0], states=kept)
                state = kept[0]
                kv = torch.stack([torch.stack(pair) for pair in state.layers])
                return top_tokens(grad, allowed, topk, self.n_allowed), kv, state.token_xent, state.logprobs

            self._graphs[key] = GradientGraph(run, rows, spans.shape[1], spans.device)
        return self._graphs[key](spans, lambdas, owners)

    @staticmethod
    def _graph_device(device: torch.device) -> bool:
        return device.type == "cuda"

    def states_of(self, spans: Tensor) -> ParentStates:
        """`ParentStates` of `spans [P, L]` from a plain forward (for parents whose gradient pass kept none)."""
        return parent_states(self.model, self.layout.full(spans), self.layout.span, self.chunk_size)

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
        points = [rows[i] for i in keep]
        start, end = self.layout.span
        attributions = []
        for at in range(0, len(points), GRADIENT_CHUNK):  # one batched forward and backward per chunk
            spans = torch.tensor([row["token_ids"] for row in points[at:at + GRADIENT_CHUNK]], device=self.layout.prefix.device)
            attributions += token_attributions(self.model, self.probe, self.layout.full(spans), target_index)
        frontier = [FrontierPoint(row["text"], row["token_ids"], row["activation"], row["xentropy"],
                                  decode_each(self.tokenizer, row["token_ids"]), attribution[start:end])
                    for row, attribution in zip(points, attributions)]
        settings = {**settings, "prefix": self.tokenizer.decode(self.layout.prefix.tolist()),
                    "suffix": self.tokenizer.decode(self.layout.suffix.tolist())}
        return PromptResult(str(self.targets[target_index]), history, frontier, settings, seed, method)


def history_rows(setup: SearchSetup, spans: Sequence[Sequence[int]], activation: Sequence[float],
                 xentropy: Sequence[float], iteration: int, slot: int | None = None,
                 lam: float | None = None) -> list[dict[str, Any]]:
    """History dicts for evaluated spans, from host lists (token ids and scores already transferred; one
    batched decode).

    Example:
        >>> from dreamy.models import load
        >>> setup = SearchSetup.build(load("tiny:lm"), "logits:3", n_tokens=2)
        >>> history_rows(setup, [(5, 6)], [1.5], [3.0], 0)[0]["activation"]
        1.5
    """
    texts = setup.tokenizer.batch_decode([list(span) for span in spans]) if len(spans) else []
    return [{"iteration": iteration, "slot": slot, "lambda": lam, "text": text, "token_ids": list(span),
             "activation": a, "xentropy": x} for text, span, a, x in zip(texts, spans, activation, xentropy)]


def check_iters(iters: int) -> None:
    """Refuse a search of no iterations (`iters` < 1), as the CLI does.

    Example:
        >>> check_iters(0)
        Traceback (most recent call last):
        ...
        ValueError: iters must be >= 1 (one gradient step at least), got 0
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1 (one gradient step at least), got {iters}")
