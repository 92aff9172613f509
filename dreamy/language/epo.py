"""EPO (Thompson et al., 2024, "Fluent dreaming for language models"): evolutionary prompt optimization.

A population of M slots, slot m with its own fluency weight lambda_m (log-uniform in a range). Each
iteration every member makes children by gradient-guided token swaps (its gradient computed under
ITS OWN lambda); each slot then keeps the best of all members and children under its own objective
`activation - lambda_m * cross-entropy`. Every `restart_every` iterations the population collapses
onto the best prompt seen so far under a lambda drawn at random (really at random: a fresh draw from
the seeded generator each restart), and each slot's new gradient is again computed with its own
lambda. Gradients of members that survive unchanged are reused. The result's Pareto frontier traces
activation against fluency.

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
from dreamy.language.candidates import filter_candidates, initial_spans, sample_swaps, token_gradients
from dreamy.language.frontier import pareto_indices
from dreamy.language.result import PromptResult
from dreamy.language.search import SearchSetup, history_rows
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
    setup = SearchSetup.build(loaded, target, n_tokens=n_tokens, prefix=prefix, suffix=suffix, ascii_only=ascii_only,
                              fluency_model=fluency_model, chunk_size=chunk_size, retokenize=retokenize)
    if population < 1:
        raise ValueError(f"population must be >= 1, got {population}")
    gen = loop.make_generator(seed)
    lambdas = log_uniform_lambdas(population, lambda_range)
    members = initial_spans(setup.tokenizer, setup.allowed, population, n_tokens, init=init, generator=gen).to(loaded.device)
    scores = setup.score(members)
    history = history_rows(setup, members, scores, 0)
    member_act, member_xent = scores.activation.clone(), scores.xentropy.clone()
    grad_cache: dict[tuple[tuple[int, ...], float], Tensor] = {}
    restarts: list[dict] = []
    with loop.progress(iters, "EPO", enabled=progress) as bar:
        for iteration in range(1, iters + 1):
            if restart_every and iteration % restart_every == 0:
                lam_star = draw_restart_lambda(lambda_range, gen)
                best = max(history, key=lambda r: r["activation"] - lam_star * r["xentropy"])
                members = torch.tensor(best["token_ids"], device=members.device)[None].repeat(population, 1)
                member_act.fill_(best["activation"])
                member_xent.fill_(best["xentropy"])
                restarts.append({"iteration": iteration, "lambda": lam_star, "text": best["text"]})
                log.info("restart at %d onto %r (lambda %.3g)", iteration, best["text"], lam_star)
            keys = [(tuple(m.tolist()), float(lam)) for m, lam in zip(members, lambdas)]
            missing = [i for i, key in enumerate(keys) if key not in grad_cache]
            if missing:
                index = torch.tensor(missing)
                grads, _, _ = token_gradients(setup.model, setup.probe, setup.layout, members[index], lambdas[index])
                for j, i in enumerate(missing):
                    grad_cache[keys[i]] = grads[j]
            grad_cache = {key: grad_cache[key] for key in keys}  # keep only the survivors' gradients
            grads = torch.stack([grad_cache[key] for key in keys])
            children = sample_swaps(members, grads, setup.allowed, n_children=children_per_member, topk=topk,
                                    n_swaps=n_swaps, generator=gen)
            pool_spans, pool_act, pool_xent = [members], [member_act], [member_xent]
            for m in range(population):
                own = filter_candidates(setup.tokenizer, children[m * children_per_member:(m + 1) * children_per_member],
                                        retokenize=setup.retokenize)
                if len(own) == 0:
                    continue
                scored = setup.score(own, parent=members[m])
                history += history_rows(setup, own, scored, iteration, m, float(lambdas[m]))
                pool_spans.append(own)
                pool_act.append(scored.activation)
                pool_xent.append(scored.xentropy)
            spans, act, xent = torch.cat(pool_spans), torch.cat(pool_act), torch.cat(pool_xent)
            choice = (act[None, :] - lambdas[:, None].to(act) * xent[None, :]).argmax(dim=1)
            members, member_act, member_xent = spans[choice].clone(), act[choice].clone(), xent[choice].clone()
            bar.update(1)
            bar.set_postfix(frontier=_frontier_summary(history))
    settings = {"n_tokens": n_tokens, "iters": iters, "population": population, "lambdas": lambdas.tolist(),
                "lambda_range": list(lambda_range), "children_per_member": children_per_member, "topk": topk,
                "n_swaps": n_swaps, "restart_every": restart_every, "restarts": restarts, "ascii_only": ascii_only}
    return setup.result(history, settings, seed, "epo")
