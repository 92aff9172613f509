"""EPO (Thompson et al., 2024, "Fluent dreaming for language models"): evolutionary prompt optimization.

A population of M slots, slot m with its own fluency weight lambda_m (log-uniform in a range). Each
iteration every member makes children by gradient-guided token swaps (its gradient computed under
ITS OWN lambda); each slot then keeps the best of all members and children under its own objective
`activation - lambda_m * cross-entropy`. Every `restart_every` iterations the population collapses
onto the best prompt seen so far under a lambda drawn at random (really at random: a fresh draw from
the seeded generator each restart), and each slot's new gradient is again computed with its own
lambda. Token rankings (from the gradients) of members that survive unchanged are reused. The result's
Pareto frontier traces activation against fluency. `epo_many` runs many targets in lockstep, packed
into shared batches.

Example:
    >>> from dreamy.models import load
    >>> r = epo(load("tiny:lm"), "model.layers.1.mlp.down_proj:3", n_tokens=4, iters=2, population=3,
    ...         children_per_member=4, progress=False)
    >>> r.method, len(r.settings["lambdas"])
    ('epo', 3)
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from dreamy import loop
from dreamy.language.candidates import filter_candidates, initial_spans, swap_children
from dreamy.language.frontier import pareto_indices
from dreamy.language.result import PromptResult
from dreamy.language.search import SearchSetup, history_rows, owner_spans
from dreamy.models import LoadedModel
from dreamy.targets import Target

log = logging.getLogger(__name__)


def log_uniform_lambdas(population: int, lambda_range: tuple[float, float]) -> Tensor:
    """`population` lambdas spaced log-uniformly over `lambda_range` (inclusive).

    Example:
        >>> log_uniform_lambdas(3, (0.1, 10.0)).tolist()
        [0.10000000149011612, 1.0, 10.0]
    """
    low, high = lambda_range
    if not 0 < low <= high:
        raise ValueError(f"lambda_range must satisfy 0 < low <= high, got {lambda_range}")
    if population == 1:
        return torch.tensor([math.sqrt(low * high)])
    return torch.logspace(math.log10(low), math.log10(high), population)


def draw_restart_lambda(lambda_range: tuple[float, float], generator: torch.Generator) -> float:
    """A lambda drawn log-uniformly at random from `lambda_range` (the restart lambda).

    Example:
        >>> 0.1 <= draw_restart_lambda((0.1, 10.0), torch.Generator().manual_seed(0)) <= 10.0
        True
    """
    low, high = math.log(lambda_range[0]), math.log(lambda_range[1])
    return math.exp(low + (high - low) * torch.rand(1, generator=generator).item())


def _frontier_summary(history: list[dict]) -> str:
    keep = pareto_indices([r["activation"] for r in history], [r["xentropy"] for r in history])
    points = [history[i] for i in keep]
    picks = points if len(points) <= 3 else [points[0], points[len(points) // 2], points[-1]]
    return " ".join(f"{p['activation']:.3g}@{p['xentropy']:.2f}" for p in picks)


def epo(loaded: LoadedModel, target: str | Target, *, n_tokens: int = 12, iters: int = 100, population: int = 8,
        lambda_range: tuple[float, float] = (0.1, 10.0), children_per_member: int = 32, topk: int = 64,
        n_swaps: int = 1, restart_every: int | None = 30, prefix: str = "", suffix: str = "",
        init: str | Sequence[int] | None = None, ascii_only: bool = True, retokenize: bool = True,
        fluency_model: nn.Module | None = None, chunk_size: int | None = None, seed: int = 0,
        progress: bool = True) -> PromptResult:
    """Run EPO on `target`; see the module docstring. Returns history and the Pareto frontier."""
    return epo_many(loaded, [target], n_tokens=n_tokens, iters=iters, population=population, lambda_range=lambda_range,
                    children_per_member=children_per_member, topk=topk, n_swaps=n_swaps, restart_every=restart_every,
                    prefix=prefix, suffix=suffix, init=init, ascii_only=ascii_only, retokenize=retokenize,
                    fluency_model=fluency_model, chunk_size=chunk_size, seed=seed, progress=progress)[0]


class _Population:
    """One target's EPO state: its members, their scores, its generator, history, token rankings and restarts."""

    def __init__(self, members: Tensor, act: Tensor, xent: Tensor, generator: torch.Generator, history: list[dict]) -> None:
        self.members, self.act, self.xent = members, act, xent
        self.generator = generator
        self.history = history
        self.top_cache: dict[tuple[tuple[int, ...], float], Tensor] = {}  # (prompt, lambda) -> top tokens [L, k]
        self.restarts: list[dict] = []

    def restart(self, iteration: int, lambda_range: tuple[float, float]) -> None:
        """Collapse onto the best prompt so far under a lambda drawn at random."""
        lam_star = draw_restart_lambda(lambda_range, self.generator)
        best = max(self.history, key=lambda r: r["activation"] - lam_star * r["xentropy"])
        self.members = torch.tensor(best["token_ids"], device=self.members.device)[None].repeat(len(self.members), 1)
        self.act.fill_(best["activation"])
        self.xent.fill_(best["xentropy"])
        self.restarts.append({"iteration": iteration, "lambda": lam_star, "text": best["text"]})
        log.info("restart at %d onto %r (lambda %.3g)", iteration, best["text"], lam_star)

    def keys(self, lambdas: Tensor) -> list[tuple[tuple[int, ...], float]]:
        return [(tuple(m.tolist()), float(lam)) for m, lam in zip(self.members, lambdas)]


def epo_many(loaded: LoadedModel, targets: Sequence[str | Target], *, n_tokens: int = 12, iters: int = 100,
             population: int = 8, lambda_range: tuple[float, float] = (0.1, 10.0), children_per_member: int = 32,
             topk: int = 64, n_swaps: int = 1, restart_every: int | None = 30, prefix: str = "", suffix: str = "",
             init: str | Sequence[int] | None = None, ascii_only: bool = True, retokenize: bool = True,
             fluency_model: nn.Module | None = None, chunk_size: int | None = None, seed: int = 0,
             progress: bool = True) -> list[PromptResult]:
    """EPO on every target of `targets` in lockstep, packed into shared batches; one result per target.

    One gradient pass serves every member of every target that needs a new gradient, and one scoring
    call every child (children of different targets that swap the same position share a forward).
    Each target draws from its own generator seeded with `seed`, so its result is the one `epo` gives
    it alone (up to floating-point differences between batch sizes).

    Example:
        >>> from dreamy.models import load
        >>> results = epo_many(load("tiny:lm"), ["logits:3", "logits:4"], n_tokens=3, iters=1, population=2,
        ...                    children_per_member=4, progress=False)
        >>> [r.target for r in results]
        ['logits:3', 'logits:4']
    """
    setup = SearchSetup.build(loaded, targets, n_tokens=n_tokens, prefix=prefix, suffix=suffix, ascii_only=ascii_only,
                              fluency_model=fluency_model, chunk_size=chunk_size, retokenize=retokenize)
    if population < 1:
        raise ValueError(f"population must be >= 1, got {population}")
    n_targets = len(setup.targets)
    lambdas = log_uniform_lambdas(population, lambda_range)
    gens = [loop.make_generator(seed) for _ in range(n_targets)]
    starts = [initial_spans(setup.tokenizer, setup.allowed, population, n_tokens, init=init, generator=gen).to(loaded.device)
              for gen in gens]
    spans, owners = owner_spans(starts)
    scores = setup.score(spans, owners)
    pops = []
    for k, gen in enumerate(gens):
        own = scores.take(slice(k * population, (k + 1) * population))
        pops.append(_Population(starts[k], own.activation.clone(), own.xentropy.clone(), gen,
                                history_rows(setup, starts[k], own, 0)))
    with loop.progress(iters, "EPO" if n_targets == 1 else f"EPO x{n_targets} targets", enabled=progress) as bar:
        for iteration in range(1, iters + 1):
            if restart_every and iteration % restart_every == 0:
                for pop in pops:
                    pop.restart(iteration, lambda_range)
            tables = _refresh_top_tokens(setup, pops, lambdas, topk)
            children: list[Tensor] = []  # per (target, member), in that order
            for pop, top in zip(pops, tables):
                made = swap_children(pop.members, top, n_children=children_per_member, n_swaps=n_swaps,
                                     generator=pop.generator)
                children += [filter_candidates(setup.tokenizer, made[m * children_per_member:(m + 1) * children_per_member],
                                               retokenize=setup.retokenize) for m in range(population)]
            spans, parent_index = owner_spans(children)
            scored = setup.score(spans, parent_index // population, parents=torch.cat([p.members for p in pops]),
                                 parent_index=parent_index) if len(spans) else None
            for k, pop in enumerate(pops):
                pool_spans, pool_act, pool_xent = [pop.members], [pop.act], [pop.xent]
                for m in range(population):
                    rows = (parent_index == k * population + m).nonzero().flatten()
                    if len(rows) == 0:
                        continue
                    own = scored.take(rows)
                    pop.history += history_rows(setup, spans[rows], own, iteration, m, float(lambdas[m]))
                    pool_spans.append(spans[rows])
                    pool_act.append(own.activation)
                    pool_xent.append(own.xentropy)
                all_spans, act, xent = torch.cat(pool_spans), torch.cat(pool_act), torch.cat(pool_xent)
                choice = (act[None, :] - lambdas[:, None].to(act) * xent[None, :]).argmax(dim=1)
                pop.members, pop.act, pop.xent = all_spans[choice].clone(), act[choice].clone(), xent[choice].clone()
            bar.update(1)
            bar.set_postfix(frontier=_frontier_summary(pops[0].history) if n_targets == 1 else
                            f"{n_targets} targets, mean best {sum(max(r['activation'] for r in p.history) for p in pops) / n_targets:.3g}")
    results = []
    for k, pop in enumerate(pops):
        settings = {"n_tokens": n_tokens, "iters": iters, "population": population, "lambdas": lambdas.tolist(),
                    "lambda_range": list(lambda_range), "children_per_member": children_per_member, "topk": topk,
                    "n_swaps": n_swaps, "restart_every": restart_every, "restarts": pop.restarts, "ascii_only": ascii_only}
        results.append(setup.result(pop.history, settings, seed, "epo", k))
    return results


def _refresh_top_tokens(setup: SearchSetup, pops: list[_Population], lambdas: Tensor, topk: int) -> list[Tensor]:
    """Rank replacement tokens, in one packed gradient pass, for every member (of every target) whose
    (prompt, lambda) has no ranking yet; keep only the current members' rankings and return them, one
    `[population, L, k]` table per target."""
    keys = [pop.keys(lambdas) for pop in pops]
    missing = [(k, i) for k, pop in enumerate(pops) for i, key in enumerate(keys[k]) if key not in pop.top_cache]
    if missing:
        spans = torch.stack([pops[k].members[i] for k, i in missing])
        top = setup.top_tokens(spans, lambdas[[i for _, i in missing]], topk, torch.tensor([k for k, _ in missing]))
        for row, (k, i) in enumerate(missing):
            pops[k].top_cache[keys[k][i]] = top[row]
    for pop, own in zip(pops, keys):
        pop.top_cache = {key: pop.top_cache[key] for key in own}
    return [torch.stack([pop.top_cache[key] for key in own]) for pop, own in zip(pops, keys)]
