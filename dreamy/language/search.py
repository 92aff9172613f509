"""What GCG and EPO share: setting up a search over one or many targets, scoring candidates, building results.

Example:
    >>> from dreamy.models import load
    >>> setup = SearchSetup.build(load("tiny:lm"), "model.layers.1.mlp.down_proj:3", n_tokens=4)
    >>> setup.layout.span
    (1, 5)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from dreamy.language.attribution import token_attributions
from dreamy.language.config import PromptConfig
from dreamy.language.gradients import GRADIENT_CHUNK, check_linear_embedding, token_gradients, top_tokens
from dreamy.language.graphs import GradientGraph, bucket_rows
from dreamy.language.layout import PromptLayout, make_layout
from dreamy.language.frontier import FrontierTracker, pareto_indices
from dreamy.language.proposals import SEEDED_INITS
from dreamy.language.result import FrontierPoint, PromptResult
from dreamy.language.states import ParentStates, SequenceScores
from dreamy.language.scoring import parent_states, score_sequences
from dreamy.core.memory import run_chunked
from dreamy.language.tokens import allowed_tokens, decode_each
from dreamy.models import LoadedModel
from dreamy.targets import Probe, Target, parse

log = logging.getLogger(__name__)


@dataclass
class SearchSetup:
    """A model, its tokenizer, the targets searched together (one probe for all), and the prompt layout.

    Many targets share the layout and every batch: row i of a batch is scored by its own target
    `owners[i]` (an index into `targets`).

    How children are scored (`scoring`): `"packed"` scores children on top of their parents' KV caches, their
    changed tokens side by side in one forward (`dreamy.language.packed`); `"grouped"` does the same with
    one forward per change position; `"full"` runs one plain batched forward over whole prompts. `build`'s
    `"auto"` picks packed on every device (measured faster than both on a CPU and an H100; the figures are in
    the README and `benchmarks/results/`). Batches under `MIN_GROUP_FOR_CACHE` rows use plain forwards
    everywhere. On CUDA (`cuda_graphs`, on by default) the gradient pass is replayed as a CUDA graph
    (`dreamy.language.graphs`).
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

    @classmethod
    def build(cls, loaded: LoadedModel, targets: "str | Target | Sequence[str | Target]",
              config: PromptConfig | None = None, *, fluency_model: nn.Module | None = None,
              **overrides: Any) -> "SearchSetup":
        """Parse the targets and tokenize the layout for `loaded` (a language `LoadedModel`) as `config` says
        (an `EPOConfig`, `GCGConfig`, or the shared `PromptConfig`; keywords override its fields): its layout
        (`n_tokens`, `prefix`, `suffix`), vocabulary (`ascii_only`, `retokenize`), `chunk_size` and `scoring`
        (see the class docstring)."""
        config = (type(config) if config is not None else PromptConfig).build(config, **overrides)
        if loaded.tokenizer is None:
            raise ValueError(f"model '{loaded.name}' has no tokenizer; prompt search needs a language model")
        parsed = [parse(t) for t in target_list(targets)]
        if not parsed:
            raise ValueError("no targets given; name at least one, e.g. 'logits:42'")
        probe = Probe(loaded.model, parsed, sequence_reduce="pos=-1")
        layout = make_layout(loaded.tokenizer, config.n_tokens, config.prefix, config.suffix, device=loaded.device)
        probe.refuse_fixed_positions(layout.span[0], layout.length)  # the start token and prefix never change
        vocab = loaded.model.get_input_embeddings().weight.shape[0]
        allowed = allowed_tokens(loaded.tokenizer, ascii_only=config.ascii_only, vocab_size=vocab)
        sample = allowed.nonzero().flatten()[:8].to(loaded.device)
        check_linear_embedding(loaded.model.get_input_embeddings(), sample)
        if fluency_model is not None:
            fluency_vocab = fluency_model.get_input_embeddings().weight.shape[0]
            if fluency_vocab != vocab:
                raise ValueError(f"fluency_model has a vocabulary of {fluency_vocab} tokens and '{loaded.name}' {vocab}; "
                                 "the fluency model must share the tokenizer (and vocabulary) of the searched model")
            check_linear_embedding(fluency_model.get_input_embeddings(), sample)
        return cls(loaded.model, loaded.tokenizer, parsed, probe, layout, allowed, fluency_model, config.chunk_size,
                   config.retokenize, scoring="packed" if config.scoring == "auto" else config.scoring,
                   n_allowed=int(allowed.sum()))

    def _owners(self, owners: Tensor | None, n: int) -> Tensor:
        return torch.zeros(n, dtype=torch.long) if owners is None else torch.as_tensor(owners, dtype=torch.long)

    def score(self, spans: Tensor, owners: Tensor | None = None, parents: Tensor | None = None,
              parent_index: Tensor | None = None, parent_states: ParentStates | None = None) -> SequenceScores:
        """Activation `[N]` of each span under its own target `owners[i]` (default: the first target) and span
        cross-entropy `[N]`. `parents [P, L]` (a span or several, with `parent_index [N]`) enable KV reuse where
        it pays (scoring other than "full", see the class docstring); `parent_states` (from `top_tokens_and_states` or
        `states_of`) spare the parents' forward."""
        if self.scoring == "full":
            parents = parent_index = parent_states = None
        parent_ids = None if parents is None else self.layout.full(parents if parents.ndim == 2 else parents[None])
        scores = score_sequences(self.model, self.probe, self.layout.full(spans), xent_span=self.layout.span,
                                 parent_ids=parent_ids, parent_index=parent_index, fluency_model=self.fluency_model,
                                 chunk_size=self.chunk_size, parent_states=parent_states,
                                 scoring="grouped" if self.scoring == "grouped" else "packed")
        own = self._owners(owners, spans.shape[0]).to(scores.activation.device)
        return SequenceScores(scores.activation.gather(1, own[:, None]).squeeze(1), scores.xentropy)

    @property
    def keeps_states(self) -> bool:
        """Whether scoring reuses parent states (KV reuse on, cross-entropy from the searched model)."""
        return self.scoring != "full" and self.fluency_model is None

    def top_tokens_and_states(self, spans: Tensor, fluency_weights: Tensor, topk: int,
                              owners: Tensor | None = None) -> tuple[Tensor, ParentStates | None]:
        """`top_tokens`, and the spans' `ParentStates` kept from the same forward when scoring reuses them
        (`keeps_states`; else None): a search scores the children of these spans without another forward."""
        owners = self._owners(owners, spans.shape[0])
        replayed = self._replay_gradient_graph(spans, fluency_weights, topk, owners)
        if replayed is not None:
            return replayed

        def one(rows: slice) -> tuple[Tensor, list[ParentStates]]:
            kept: list[ParentStates] = []  # per call: a chunk retried after out-of-memory keeps nothing twice
            grad, _, _ = token_gradients(self.model, self.probe, self.layout, spans[rows], fluency_weights[rows],
                                         row_targets=owners[rows], chunk_size=GRADIENT_CHUNK,
                                         fluency_model=self.fluency_model, states=kept if self.keeps_states else None)
            return top_tokens(grad, self.allowed, topk, self.n_allowed), kept

        parts = run_chunked(one, spans.shape[0], GRADIENT_CHUNK)
        tables = torch.cat([table for table, _ in parts])
        return tables, ParentStates.cat([s for _, kept in parts for s in kept]) if self.keeps_states else None

    def _replay_gradient_graph(self, spans: Tensor, fluency_weights: Tensor, topk: int,
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
        return self._graphs[key](spans, fluency_weights, owners)

    @staticmethod
    def _graph_device(device: torch.device) -> bool:
        return device.type == "cuda"

    def states_of(self, spans: Tensor) -> ParentStates:
        """`ParentStates` of `spans [P, L]` from a plain forward (for parents whose gradient pass kept none)."""
        return parent_states(self.model, self.layout.full(spans), self.layout.span, self.chunk_size)

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
                                  decode_each(self.tokenizer, row["token_ids"]), attribution[start:end],
                                  row.get("origin", ""))
                    for row, attribution in zip(points, attributions)]
        settings = {**settings, "prefix": self.tokenizer.decode(self.layout.prefix.tolist()),
                    "suffix": self.tokenizer.decode(self.layout.suffix.tolist())}
        return PromptResult(str(self.targets[target_index]), history, frontier, settings, seed, method)


def target_list(targets: "str | Target | Sequence[str | Target]") -> list[str | Target]:
    """One target spec, or several, as a list.

    Example:
        >>> target_list("logits:3"), target_list(["logits:3", "logits:4"])
        (['logits:3'], ['logits:3', 'logits:4'])
        >>> target_list(None)
        Traceback (most recent call last):
        ...
        TypeError: the target must be a spec such as 'model.layers.1.mlp.down_proj:3' (or a Target, or a list of them), got None
    """
    if isinstance(targets, (str, Target)):
        return [targets]
    listed = list(targets) if isinstance(targets, Iterable) and not isinstance(targets, Mapping) else None
    bad = targets if listed is None else next((t for t in listed if not isinstance(t, (str, Target))), None)
    if listed is None or bad is not None:
        raise TypeError("the target must be a spec such as 'model.layers.1.mlp.down_proj:3' (or a Target, or a list "
                        f"of them), got {bad!r}")
    return listed


def starts_of(setup: SearchSetup, starts: Mapping[str, Sequence[Sequence[int]]] | None,
              init: Any) -> list[Sequence[Sequence[int]] | None]:
    """Each searched target's starting windows from `starts` (keyed by any spelling of its spec), when `init`
    starts from windows; None per target otherwise.

    Example:
        >>> from dreamy.models import load
        >>> setup = SearchSetup.build(load("tiny:lm"), ["logits:3"], n_tokens=2)
        >>> starts_of(setup, {"1 * logits:3": [[5, 6]]}, "maxima"), starts_of(setup, None, None)
        ([[[5, 6]]], [None])
    """
    if init not in SEEDED_INITS:
        return [None] * len(setup.targets)
    if starts is None:
        raise ValueError(f"init={init!r} starts from dataset windows: pass starts={{target: [token ids, ...]}} (each "
                         "target's matched-length maxima, e.g. text_maxima(..., lengths=[n_tokens]))")
    by_spec = {str(parse(spec)): windows for spec, windows in starts.items()}
    missing = [str(t) for t in setup.targets if str(t) not in by_spec]
    if missing:
        raise ValueError(f"init={init!r}: no starting windows for target {missing[0]!r} (starts has "
                         f"{len(by_spec)} target(s))")
    return [by_spec[str(t)] for t in setup.targets]


class StopRule:
    """When a search stops before its last iteration: its wall-clock budget (`config.minutes`, for the whole
    packed batch) ran out, or no target's Pareto frontier moved for `config.plateau` iterations. `reason` is
    "minutes" or "plateau" once it stops.

    Example:
        >>> from dreamy.language.config import PromptConfig
        >>> rule = StopRule(PromptConfig(plateau=2), [([1.0], [3.0])])
        >>> [rule.update([([0.5], [4.0])]) for _ in range(2)], rule.reason
        ([False, True], 'plateau')
    """

    def __init__(self, config: PromptConfig, first: Sequence[tuple[Sequence[float], Sequence[float]]]) -> None:
        self.deadline = time.perf_counter() + 60 * config.minutes if config.minutes else None
        self.plateau = config.plateau
        self.fronts = [FrontierTracker() for _ in first]
        for front, (activation, xentropy) in zip(self.fronts, first):
            front.add(activation, xentropy)
        self.still = 0
        self.reason: str | None = None

    def update(self, points: Sequence[tuple[Sequence[float], Sequence[float]]], more: bool = True) -> bool:
        """Add each target's points of one iteration; True when the search should stop (only while `more`
        iterations remain, so a stop is never reported on the last one)."""
        moved = [front.add(activation, xentropy) for front, (activation, xentropy) in zip(self.fronts, points)]
        self.still = 0 if any(moved) else self.still + 1
        if not more:
            return False
        if self.plateau and self.still >= self.plateau:
            self.reason = "plateau"
        elif self.deadline is not None and time.perf_counter() >= self.deadline:
            self.reason = "minutes"
        return self.reason is not None


STALL_ITERS = 3  # iterations in a row without a child that passes the token filters before a target starts afresh


def blocked_groups(made: Sequence[Sequence[Sequence[int]]], kept: Sequence[Sequence[Sequence[int]]],
                   parents: Sequence[Sequence[int]]) -> list[bool]:
    """Per group (the children `made` of one parent, `kept` of them after the token filters): True when some child
    differs from its parent yet none survived the filters (a search blocked by them, not one converged).

    Example:
        >>> blocked_groups([[(1, 2), (3, 2)], [(5, 6)]], [[], []], [(1, 2), (5, 6)])
        [True, False]
    """
    parent_of = [tuple(parent) for parent in parents]
    return [not group and any(tuple(child) != parent_of[g] for child in made[g]) for g, group in enumerate(kept)]


class StallWatch:
    """Per target: how many iterations changed its population (`moved`), and whether its search is stuck, i.e.
    for `STALL_ITERS` iterations in a row it made children that differ from their parents but none survived the
    token filters. `update` then asks for a fresh (filtered) random start; a target stuck again with no move since
    its last fresh start raises `RuntimeError` (one line, naming the target and the filters), never a silent run.

    Example:
        >>> watch = StallWatch("epo", ["logits:3"])
        >>> [watch.update(0, i, moved=False, blocked=True) for i in (1, 2, 3)], watch.fresh_starts
        ([False, False, True], [[3]])
    """

    def __init__(self, method: str, targets: Sequence[Any]) -> None:
        self.method = method
        self.targets = [str(t) for t in targets]
        self.moved = [0] * len(self.targets)
        self.blocked = [0] * len(self.targets)
        self.fresh_starts: list[list[int]] = [[] for _ in self.targets]
        self._moved_at_fresh = [0] * len(self.targets)

    def update(self, k: int, iteration: int, *, moved: bool, blocked: bool) -> bool:
        """Record target `k`'s iteration; True when it must start afresh from new random members."""
        self.moved[k] += bool(moved)
        self.blocked[k] = self.blocked[k] + 1 if blocked else 0
        if self.blocked[k] < STALL_ITERS:
            return False
        self.blocked[k] = 0
        if self.fresh_starts[k] and self._moved_at_fresh[k] == self.moved[k]:
            raise RuntimeError(f"{self.method} on {self.targets[k]!r} is stuck: no child passed the token filters for "
                               f"{STALL_ITERS} iterations, even after a fresh random start at iteration "
                               f"{self.fresh_starts[k][-1]}; set retokenize=False or ascii_only=False, or change n_tokens")
        self.fresh_starts[k].append(iteration)
        self._moved_at_fresh[k] = self.moved[k]
        log.warning("%s on %r: no child passed the token filters for %d iterations; starting afresh from random "
                    "prompts at iteration %d", self.method, self.targets[k], STALL_ITERS, iteration)
        return True


def history_rows(setup: SearchSetup, spans: Sequence[Sequence[int]], activation: Sequence[float],
                 xentropy: Sequence[float], iteration: int, slot: int | None = None,
                 fluency_weight: float | None = None, origins: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """History dicts for evaluated spans, from host lists (token ids and scores already transferred; one
    batched decode); `origins` says where each span's line started (see `proposals.initial_members`).

    Example:
        >>> from dreamy.models import load
        >>> setup = SearchSetup.build(load("tiny:lm"), "logits:3", n_tokens=2)
        >>> history_rows(setup, [(5, 6)], [1.5], [3.0], 0)[0]["activation"]
        1.5
    """
    texts = setup.tokenizer.batch_decode([list(span) for span in spans]) if len(spans) else []
    origins = origins if origins is not None else [""] * len(spans)
    return [{"iteration": iteration, "slot": slot, "fluency_weight": fluency_weight, "text": text, "token_ids": list(span),
             "activation": a, "xentropy": x, "origin": origin}
            for text, span, a, x, origin in zip(texts, spans, activation, xentropy, origins)]
