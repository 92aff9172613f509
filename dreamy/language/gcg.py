"""GCG (Zou et al., 2023): greedy coordinate gradient search over the tokens of a prompt span.

Each iteration ranks replacement tokens per position by the one-hot gradient of the objective
(`activation - fluency_weight * cross-entropy`), scores a batch of single- (or n-) token swaps, and
moves to the best of the batch. Optional fixed prefix/suffix text surrounds the optimized span.

Example:
    >>> from dreamy.models import load
    >>> r = gcg(load("tiny:lm"), "model.layers.1.mlp.down_proj:3", n_tokens=4, iters=2, batch_size=8, progress=False)
    >>> len(r.frontier) >= 1
    True
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from dreamy import loop
from dreamy.language.candidates import filter_candidates, initial_spans, sample_swaps, token_gradients
from dreamy.language.result import PromptResult
from dreamy.language.search import SearchSetup, history_rows
from dreamy.models import LoadedModel
from dreamy.targets import Target

log = logging.getLogger(__name__)


def gcg(loaded: LoadedModel, target: str | Target, *, n_tokens: int = 16, iters: int = 100, batch_size: int = 128,
        topk: int = 64, n_swaps: int = 1, fluency_weight: float = 0.0, prefix: str = "", suffix: str = "",
        init: str | Sequence[int] | None = None, ascii_only: bool = True, retokenize: bool = True,
        fluency_model: nn.Module | None = None, chunk_size: int | None = None, seed: int = 0,
        progress: bool = True) -> PromptResult:
    """Maximize `target` over an `n_tokens` prompt span with GCG; see the module docstring."""
    setup = SearchSetup.build(loaded, target, n_tokens=n_tokens, prefix=prefix, suffix=suffix, ascii_only=ascii_only,
                              fluency_model=fluency_model, chunk_size=chunk_size, retokenize=retokenize)
    gen = loop.make_generator(seed)
    current = initial_spans(setup.tokenizer, setup.allowed, 1, n_tokens, init=init, generator=gen).to(loaded.device)
    scores = setup.score(current)
    history = history_rows(setup, current, scores, 0)
    lam = torch.tensor([fluency_weight])
    with loop.progress(iters, "GCG", enabled=progress) as bar:
        for iteration in range(1, iters + 1):
            grad, _, _ = token_gradients(setup.model, setup.probe, setup.layout, current, lam)
            children = sample_swaps(current, grad, setup.allowed, n_children=batch_size, topk=topk, n_swaps=n_swaps,
                                    generator=gen)
            children = filter_candidates(setup.tokenizer, children, retokenize=setup.retokenize)
            if len(children):
                scored = setup.score(children, parent=current[0])
                history += history_rows(setup, children, scored, iteration)
                objective = scored.activation - fluency_weight * scored.xentropy
                current = children[objective.argmax()][None]
            best = max(history, key=lambda r: r["activation"] - fluency_weight * r["xentropy"])
            bar.update(1)
            bar.set_postfix(best=f"{best['activation']:.3g}", xent=f"{best['xentropy']:.2f}")
    settings = {"n_tokens": n_tokens, "iters": iters, "batch_size": batch_size, "topk": topk, "n_swaps": n_swaps,
                "fluency_weight": fluency_weight, "ascii_only": ascii_only}
    return setup.result(history, settings, seed, "gcg")
