"""EPO (Thompson et al., 2024, "Fluent dreaming for language models"): evolutionary prompt optimization.

A population of M slots, slot m with its own fluency weight w_m (log-uniform over `fluency_weight_range`).
Each iteration every member makes children by gradient-guided token swaps (its gradient computed under
ITS OWN fluency weight); each slot then keeps the best of all members and children under its own objective
`activation - w_m * cross-entropy` (see `EPOConfig`); slots that share a weight (several activation slots)
keep its best, second best, ... distinct prompts, not copies of one.
Every `restart_every` iterations the population collapses onto the best prompt seen so far under a fluency
weight drawn at random (really at random: a fresh draw from the seeded generator each restart), and each
slot's new gradient is again computed with its own fluency weight. Token rankings (from the gradients) of
members that survive unchanged are reused. Starts pass the token filters children must pass; a target whose
children all fail them for `search.STALL_ITERS` iterations starts afresh from random prompts (`StallWatch`), and
its settings say how many iterations moved its population (`iterations_moved`). The result's
Pareto frontier traces activation against fluency. `epo_many` runs many targets in lockstep, packed
into shared batches.

Example:
    >>> from dreamy.models import load
    >>> r = epo(load("tiny:lm"), "model.layers.1.mlp.down_proj:3", n_tokens=4, iters=2, population=3, children=4,
    ...         progress=False)
    >>> r.method, len(r.settings["fluency_weights"])
    ('epo', 3)
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from dreamy.core import stepping
from dreamy.core.frozen import frozen
from dreamy.language.config import EPOConfig
from dreamy.language.frontier import pareto_indices
from dreamy.language.proposals import initial_members, random_spans, swap_children
from dreamy.language.result import PromptResult, PromptResults
from dreamy.language.states import ParentStates
from dreamy.language.search import (SearchSetup, StallWatch, StopRule, blocked_groups, history_rows, starts_of,
                                    target_list)
from dreamy.language.tokens import filter_candidates
from dreamy.models import LoadedModel
from dreamy.targets import Target

log = logging.getLogger(__name__)


def fluency_weights(n: int, fluency_weight_range: tuple[float, float]) -> Tensor:
    """`n` fluency weights spaced log-uniformly over `fluency_weight_range` (inclusive; one: their geometric mean).

    Example:
        >>> fluency_weights(3, (0.1, 10.0)).tolist()
        [0.10000000149011612, 1.0, 10.0]
    """
    low, high = fluency_weight_range
    if not 0 < low <= high:
        raise ValueError(f"fluency_weight_range must satisfy 0 < low <= high, got {fluency_weight_range}")
    if n == 1:
        return torch.tensor([math.sqrt(low * high)])
    return torch.logspace(math.log10(low), math.log10(high), n)


def slot_fluency_weights(population: int, fluency_weight_range: tuple[float, float], activation_slots: int = 0) -> Tensor:
    """The population's fluency weights: `activation_slots` zeros (activation alone), then the other slots'
    weights spaced log-uniformly over `fluency_weight_range` (`fluency_weights`).

    Example:
        >>> slot_fluency_weights(4, (0.1, 10.0), activation_slots=1).tolist()
        [0.0, 0.10000000149011612, 1.0, 10.0]
    """
    if not 0 <= activation_slots < population:
        raise ValueError(f"activation_slots must be in [0, population), got {activation_slots} of {population}")
    spread = fluency_weights(population - activation_slots, fluency_weight_range)
    return torch.cat([torch.zeros(activation_slots, dtype=spread.dtype), spread])


def restart_fluency_weight(fluency_weight_range: tuple[float, float], generator: torch.Generator) -> float:
    """The fluency weight a restart picks its prompt under: drawn log-uniformly at random from
    `fluency_weight_range`.

    Example:
        >>> 0.1 <= restart_fluency_weight((0.1, 10.0), torch.Generator().manual_seed(0)) <= 10.0
        True
    """
    low, high = math.log(fluency_weight_range[0]), math.log(fluency_weight_range[1])
    return math.exp(low + (high - low) * torch.rand(1, generator=generator).item())


def _frontier_summary(history: list[dict]) -> str:
    keep = pareto_indices([r["activation"] for r in history], [r["xentropy"] for r in history])
    points = [history[i] for i in keep]
    picks = points if len(points) <= 3 else [points[0], points[len(points) // 2], points[-1]]
    return " ".join(f"{p['activation']:.3g}@{p['xentropy']:.2f}" for p in picks)


def epo(loaded: LoadedModel, targets: "str | Target | Sequence[str | Target]", config: EPOConfig | None = None, *,
        fluency_model: nn.Module | None = None, starts: Mapping[str, Sequence[Sequence[int]]] | None = None,
        progress: bool = True, **overrides: Any) -> "PromptResult | PromptResults":
    """Run EPO (see the module docstring) as `config` says (`EPOConfig`; keywords override its fields).

    One target (a spec) gives its `PromptResult`; a list gives `PromptResults`, one per target, searched in
    lockstep: one gradient pass serves every member of every target that needs a new gradient, and one
    scoring call every child (children of every member of every target packed side by side in one forward).
    Each target draws from its own generator seeded with the config's seed, so its result is the one it gets
    alone (up to floating-point differences between batch sizes). `fluency_model` (sharing the tokenizer)
    measures the cross-entropy instead of the searched model. `starts` (`{target spec: [span token ids, ...]}`,
    best first) are the dataset windows an `init` of "maxima" or "mixed" starts the members from.

    Example:
        >>> from dreamy.models import load
        >>> results = epo(load("tiny:lm"), ["logits:3", "logits:4"], n_tokens=3, iters=1, population=2, children=4,
        ...               progress=False)
        >>> [r.target for r in results]
        ['logits:3', 'logits:4']
    """
    results = epo_many(loaded, target_list(targets), config, fluency_model=fluency_model, starts=starts,
                         progress=progress, **overrides)
    return results[0] if isinstance(targets, (str, Target)) else results


def epo_many(loaded: LoadedModel, targets: "Sequence[str | Target]", config: EPOConfig | None = None, *,
             fluency_model: nn.Module | None = None, starts: Mapping[str, Sequence[Sequence[int]]] | None = None,
             progress: bool = True, **overrides: Any) -> PromptResults:
    """`epo` on a list of targets (always a `PromptResults`).

    Example:
        >>> from dreamy.models import load
        >>> len(epo_many(load("tiny:lm"), ["logits:3"], n_tokens=3, iters=1, population=2, children=4, progress=False))
        1
    """
    return _epo(loaded, target_list(targets), EPOConfig.build(config, **overrides), fluency_model, progress, starts)


class _Population:
    """One target's EPO state: its members (on the device, and as host token lists), their scores, its generator,
    history, token rankings and restarts."""

    def __init__(self, members: Tensor, ids: list[tuple[int, ...]], act: Tensor, xent: Tensor,
                 generator: torch.Generator, history: list[dict], origins: list[str]) -> None:
        self.members, self.ids, self.act, self.xent = members, ids, act, xent
        self.origins = origins  # where each member's line started (host list, beside `ids`)
        self.generator = generator
        self.history = history
        self.top_cache: dict[tuple[tuple[int, ...], float], Tensor] = {}  # (prompt, fluency weight) -> top tokens [L, k]
        self.states: dict[tuple[int, ...], ParentStates] = {}  # prompt -> its KV cache etc. (kept from its gradient pass)
        self.restarts: list[dict] = []

    def restart(self, iteration: int, fluency_weight_range: tuple[float, float]) -> None:
        """Collapse onto the best prompt so far under a fluency weight drawn at random."""
        weight = restart_fluency_weight(fluency_weight_range, self.generator)
        best = max(self.history, key=lambda r: r["activation"] - weight * r["xentropy"])
        n, device = len(self.ids), self.members.device
        self.ids = [tuple(best["token_ids"])] * n
        self.origins = [best.get("origin", "")] * n
        self.members = torch.tensor(best["token_ids"], device=device)[None].repeat(n, 1)
        self.act = torch.full((n,), best["activation"], device=device)
        self.xent = torch.full((n,), best["xentropy"], device=device)
        self.restarts.append({"iteration": iteration, "fluency_weight": weight, "text": best["text"]})
        log.info("restart at %d onto %r (fluency weight %.3g)", iteration, best["text"], weight)

    def keys(self, weights: list[float]) -> list[tuple[tuple[int, ...], float]]:
        return list(zip(self.ids, weights))


def _epo(loaded: LoadedModel, targets: list, config: EPOConfig, fluency_model: nn.Module | None,
         progress: bool, starts: Mapping[str, Sequence[Sequence[int]]] | None) -> PromptResults:
    """The search with the model in eval mode and no parameter requiring grad, restored afterwards (`core.frozen`)."""
    with frozen(loaded.model):
        return _epo_frozen(loaded, targets, config, fluency_model, progress, starts)


def _epo_frozen(loaded: LoadedModel, targets: list, config: EPOConfig, fluency_model: nn.Module | None,
         progress: bool, starts: Mapping[str, Sequence[Sequence[int]]] | None) -> PromptResults:
    n_tokens, iters, population, topk = config.n_tokens, config.iters, config.population, config.topk
    fluency_weight_range, children = config.fluency_weight_range, config.children
    n_swaps, restart_every, init, seed = config.n_swaps, config.restart_every, config.init, config.seed
    setup = SearchSetup.build(loaded, targets, config, fluency_model=fluency_model)
    n_targets = len(setup.targets)
    weights = slot_fluency_weights(population, fluency_weight_range, config.n_activation_slots)
    weight_list = weights.tolist()
    gens = [stepping.make_generator(seed) for _ in range(n_targets)]
    windows = starts_of(setup, starts, init)
    firsts = [initial_members(setup.tokenizer, setup.allowed, population, n_tokens, init=init, windows=windows[k],
                              generator=gen, retokenize=setup.retokenize)
              for k, gen in enumerate(gens)]  # on the host; every start passes the token filters
    start_ids = [[tuple(row) for row in first.tolist()] for first, _ in firsts]
    spans = torch.cat([first for first, _ in firsts]).to(loaded.device)
    scores = setup.score(spans, torch.arange(n_targets).repeat_interleave(population))
    host = torch.stack([scores.activation, scores.xentropy]).tolist()  # one transfer
    pops = []
    for k, gen in enumerate(gens):
        rows = slice(k * population, (k + 1) * population)
        origins = firsts[k][1]
        pops.append(_Population(spans[rows], start_ids[k], scores.activation[rows].clone(), scores.xentropy[rows].clone(),
                                gen, history_rows(setup, start_ids[k], host[0][rows], host[1][rows], 0, origins=origins),
                                list(origins)))
    started = time.perf_counter()
    stop = StopRule(config, [(host[0][k * population:(k + 1) * population], host[1][k * population:(k + 1) * population])
                             for k in range(n_targets)])
    watch = StallWatch("epo", setup.targets)
    iteration = 0
    with stepping.progress(iters, "EPO" if n_targets == 1 else f"EPO x{n_targets} targets", enabled=progress) as bar:
        for iteration in range(1, iters + 1):
            if restart_every and iteration % restart_every == 0 and iteration < iters:  # never in the last one
                for pop in pops:
                    pop.restart(iteration, fluency_weight_range)
            tables = _refresh_top_tokens(setup, pops, weights, weight_list, topk)
            made = torch.cat([swap_children(pop.members, top, children=children, n_swaps=n_swaps,
                                            generator=pop.generator) for pop, top in zip(pops, tables)])
            made_ids = made.tolist()  # one transfer: token bookkeeping is host work
            made_groups = [made_ids[g * children:(g + 1) * children] for g in range(n_targets * population)]
            parents = [ids for pop in pops for ids in pop.ids]
            groups = filter_candidates(setup.tokenizer, made_groups, retokenize=setup.retokenize,
                                       parents=parents)  # per (target, member)
            blocked = blocked_groups(made_groups, groups, parents)
            before = [list(pop.ids) for pop in pops]
            new_points = _select(setup, pops, groups, weights, weight_list, iteration)
            afresh = [k for k, pop in enumerate(pops)
                      if watch.update(k, iteration, moved=pop.ids != before[k],
                                      blocked=all(blocked[k * population:(k + 1) * population]))]
            if afresh:
                _start_afresh(setup, [pops[k] for k in afresh], afresh, n_tokens, iteration)
            bar.update(1)
            if progress:  # the summary walks the whole history: only for a bar someone sees
                mean_best = sum(max(r["activation"] for r in p.history) for p in pops) / n_targets
                bar.set_postfix(frontier=_frontier_summary(pops[0].history) if n_targets == 1 else
                                f"{n_targets} targets, mean best {mean_best:.3g}")
            if stop.update(new_points, iteration < iters):
                log.info("EPO stopped after %d of %d iterations: %s", iteration, iters, stop.reason)
                break
    loop_seconds = time.perf_counter() - started
    results = PromptResults()
    for k, pop in enumerate(pops):
        settings = {**config.to_dict(), "fluency_weights": weights.tolist(), "restarts": pop.restarts,
                    "loop_seconds": loop_seconds, "iterations_run": iteration, "iterations_moved": watch.moved[k],
                    "fresh_starts": watch.fresh_starts[k], "stopped": stop.reason or "iters"}
        results.append(setup.result(pop.history, settings, seed, "epo", k))
    return results


def _start_afresh(setup: SearchSetup, pops: list[_Population], targets: list[int], n_tokens: int,
                  iteration: int) -> None:
    """Replace every member of the stuck `pops` (of targets `targets`) by new random prompts that pass the token
    filters, scored in one call and added to their histories (origin "random")."""
    n = len(pops[0].ids)
    drawn = [random_spans(setup.tokenizer, setup.allowed, n, n_tokens, generator=pop.generator,
                          retokenize=setup.retokenize) for pop in pops]
    device = pops[0].members.device
    spans = torch.cat(drawn).to(device)
    scores = setup.score(spans, torch.tensor(targets, device=device).repeat_interleave(n))
    host = torch.stack([scores.activation, scores.xentropy]).tolist()
    for i, (pop, fresh) in enumerate(zip(pops, drawn)):
        rows = slice(i * n, (i + 1) * n)
        pop.ids = [tuple(row) for row in fresh.tolist()]
        pop.origins = ["random"] * n
        pop.members, pop.act, pop.xent = spans[rows], scores.activation[rows].clone(), scores.xentropy[rows].clone()
        pop.history += history_rows(setup, pop.ids, host[0][rows], host[1][rows], iteration, origins=pop.origins)


def _select(setup: SearchSetup, pops: list[_Population], groups: list[list[tuple[int, ...]]], weights: Tensor,
            weight_list: list[float], iteration: int) -> list[tuple[list[float], list[float]]]:
    """Score every kept child (of every member of every target) in one call; each slot keeps the best of its
    population and their children under its own fluency weight `weights [population]` (`weight_list` on the
    host), chosen on the device; then one transfer brings the
    scores and choices to the host for the history and the members' token lists. Returns each target's new
    (activations, cross-entropies)."""
    population = len(weight_list)
    flat = [span for group in groups for span in group]
    if not flat:
        return [([], []) for _ in pops]
    parent_index = torch.tensor([g for g, group in enumerate(groups) for _ in group])
    device = pops[0].members.device
    spans = torch.tensor(flat, dtype=torch.long, device=device)
    scored = setup.score(spans, (parent_index // population).to(device), parents=torch.cat([p.members for p in pops]),
                         parent_index=parent_index.to(device), parent_states=_member_states(setup, pops))
    bounds = [0]
    for k in range(len(pops)):
        bounds.append(bounds[-1] + sum(len(g) for g in groups[k * population:(k + 1) * population]))
    slot_weights = weights[:, None].to(device)
    ranks = _shared_weight_ranks(weight_list)
    choices = []
    for k, pop in enumerate(pops):
        lo, hi = bounds[k], bounds[k + 1]
        act = torch.cat([pop.act, scored.activation[lo:hi]])
        xent = torch.cat([pop.xent, scored.xentropy[lo:hi]])
        choice = _slot_choices((act[None, :] - slot_weights.to(act) * xent[None, :]), ranks,
                               None if ranks is None else _repeats(pop.ids + flat[lo:hi]))
        pop.members = torch.cat([pop.members, spans[lo:hi]])[choice]
        pop.act, pop.xent = act[choice], xent[choice]
        choices.append(choice)
    host = torch.cat([scored.activation.float(), scored.xentropy.float(), torch.cat(choices).float()]).tolist()
    n = len(flat)
    act_host, xent_host, choice_host = host[:n], host[n:2 * n], [int(c) for c in host[2 * n:]]
    row = 0
    for k, pop in enumerate(pops):
        children_origins = []
        for m in range(population):
            group = groups[k * population + m]
            origins = [pop.origins[m]] * len(group)  # a child carries its parent's line
            pop.history += history_rows(setup, group, act_host[row:row + len(group)], xent_host[row:row + len(group)],
                                        iteration, m, weight_list[m], origins)
            children_origins += origins
            row += len(group)
        pool = pop.ids + flat[bounds[k]:bounds[k + 1]]
        pool_origins = pop.origins + children_origins
        chosen = choice_host[k * population:(k + 1) * population]
        pop.ids = [pool[c] for c in chosen]
        pop.origins = [pool_origins[c] for c in chosen]
    return [(act_host[bounds[k]:bounds[k + 1]], xent_host[bounds[k]:bounds[k + 1]]) for k in range(len(pops))]


def _shared_weight_ranks(weight_list: list[float]) -> list[int] | None:
    """Each slot's rank among the slots with its fluency weight (0 for the first), or None when no two slots
    share one (then every slot simply keeps its best).

    Example:
        >>> _shared_weight_ranks([0.0, 0.0, 0.3, 3.0]), _shared_weight_ranks([0.0, 0.3])
        ([0, 1, 0, 0], None)
    """
    seen: dict[float, int] = {}
    ranks = []
    for weight in weight_list:
        ranks.append(seen.get(weight, 0))
        seen[weight] = ranks[-1] + 1
    return ranks if max(ranks) > 0 else None


def _repeats(pool: list[tuple[int, ...]]) -> list[bool]:
    """Which entries of a pool of prompts repeat an earlier entry.

    Example:
        >>> _repeats([(1, 2), (3, 4), (1, 2)])
        [False, False, True]
    """
    seen: set[tuple[int, ...]] = set()
    out = []
    for ids in pool:
        out.append(ids in seen)
        seen.add(ids)
    return out


def _slot_choices(objective: Tensor, ranks: list[int] | None, repeats: list[bool] | None) -> Tensor:
    """Each slot's pick from the pool, given `objective` [slots, pool]: its best; slots sharing a fluency weight
    (`ranks`, `_shared_weight_ranks`) take that weight's best, second best, ... distinct prompts (`repeats` marks
    the pool's repeated prompts, never picked by a second-ranked slot), so they do not collapse onto one member.

    Example:
        >>> _slot_choices(torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]]), [0, 1], [False, False, False]).tolist()
        [1, 2]
    """
    if ranks is None:
        return objective.argmax(dim=1)
    masked = objective.masked_fill(torch.tensor(repeats, device=objective.device)[None, :], float("-inf"))
    depth = min(max(ranks) + 1, objective.shape[1])
    top = masked.topk(depth, dim=1).indices
    rows = torch.arange(objective.shape[0], device=objective.device)
    return top[rows, torch.tensor(ranks, device=objective.device).clamp(max=depth - 1)]


def _member_states(setup: SearchSetup, pops: list[_Population]) -> ParentStates | None:
    """Every member's `ParentStates` in member order (targets, then slots): kept from their gradient passes;
    members without any (none in practice) get one plain forward together."""
    if not setup.keeps_states:
        return None
    missing = list(dict.fromkeys((k, ids) for k, pop in enumerate(pops) for ids in pop.ids if ids not in pop.states))
    if missing:
        device = pops[0].members.device
        fresh = setup.states_of(torch.tensor([ids for _, ids in missing], device=device))
        for row, (k, ids) in enumerate(missing):
            pops[k].states[ids] = fresh.rows(row)
    return ParentStates.cat([pop.states[ids] for pop in pops for ids in pop.ids])


def _refresh_top_tokens(setup: SearchSetup, pops: list[_Population], weights: Tensor, weight_list: list[float],
                        topk: int) -> list[Tensor]:
    """Rank replacement tokens, in one packed gradient pass, for every member (of every target) whose
    (prompt, fluency weight) has no ranking yet; keep only the current members' rankings and return them, one
    `[population, L, k]` table per target."""
    keys = [pop.keys(weight_list) for pop in pops]
    missing = [(k, i) for k, pop in enumerate(pops) for i, key in enumerate(keys[k]) if key not in pop.top_cache]
    if missing:
        spans = torch.stack([pops[k].members[i] for k, i in missing])
        top, states = setup.top_tokens_and_states(spans, weights[[i for _, i in missing]], topk,
                                                  torch.tensor([k for k, _ in missing]))
        for row, (k, i) in enumerate(missing):
            pops[k].top_cache[keys[k][i]] = top[row]
            if states is not None:
                pops[k].states.setdefault(pops[k].ids[i], states.rows(row))
    for pop, own in zip(pops, keys):
        pop.top_cache = {key: pop.top_cache[key] for key in own}
        pop.states = {ids: pop.states[ids] for ids in pop.ids if ids in pop.states}
    return [torch.stack([pop.top_cache[key] for key in own]) for pop, own in zip(pops, keys)]
