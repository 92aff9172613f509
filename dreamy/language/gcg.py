"""GCG (Zou et al., 2023): greedy coordinate gradient search over the tokens of a prompt span.

Each iteration ranks replacement tokens per position by the one-hot gradient of the objective
(`activation - fluency_weight * cross-entropy`), scores a batch of single- (or n-) token swaps, and
moves to the best of the batch. Optional fixed prefix/suffix text surrounds the optimized span. The start
passes the token filters its children must pass; a prompt whose children all fail them for `search.STALL_ITERS`
iterations is replaced by a random one (`StallWatch`), and `settings["iterations_moved"]` counts the moves.

`gcg_many` searches many targets in lockstep: one gradient pass for all their prompts, one scoring
call for all their children (packed side by side on their parents' KV caches, see `SearchSetup`).
Each target draws from its own generator seeded with `seed`, so its result is the one `gcg` gives
it alone (up to floating-point differences between batch sizes).

Example:
    >>> from dreamy.models import load
    >>> r = gcg(load("tiny:lm"), "model.layers.1.mlp.down_proj:3", n_tokens=4, iters=2, children=8, progress=False)
    >>> len(r.frontier) >= 1
    True
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from dreamy.core import stepping
from dreamy.core.frozen import frozen
from dreamy.language.config import GCGConfig
from dreamy.language.proposals import initial_members, random_spans, swap_children
from dreamy.language.result import PromptResult, PromptResults
from dreamy.language.search import (SearchSetup, StallWatch, StopRule, blocked_groups, history_rows, starts_of,
                                    target_list)
from dreamy.language.tokens import filter_candidates
from dreamy.models import LoadedModel
from dreamy.targets import Target


def gcg(loaded: LoadedModel, targets: "str | Target | Sequence[str | Target]", config: GCGConfig | None = None, *,
        fluency_model: nn.Module | None = None, starts: Mapping[str, Sequence[Sequence[int]]] | None = None,
        progress: bool = True, **overrides: Any) -> "PromptResult | PromptResults":
    """Maximize each target over an `n_tokens` prompt span with GCG (see the module docstring), as `config` says
    (`GCGConfig`; keywords override its fields). One target (a spec) gives its `PromptResult`; a list gives
    `PromptResults`, searched in lockstep.

    Example:
        >>> from dreamy.models import load
        >>> results = gcg(load("tiny:lm"), ["logits:3", "logits:4"], n_tokens=3, iters=1, children=8, progress=False)
        >>> [r.target for r in results]
        ['logits:3', 'logits:4']
    """
    results = gcg_many(loaded, target_list(targets), config, fluency_model=fluency_model, starts=starts,
                         progress=progress, **overrides)
    return results[0] if isinstance(targets, (str, Target)) else results


def gcg_many(loaded: LoadedModel, targets: "Sequence[str | Target]", config: GCGConfig | None = None, *,
             fluency_model: nn.Module | None = None, starts: Mapping[str, Sequence[Sequence[int]]] | None = None,
             progress: bool = True, **overrides: Any) -> PromptResults:
    """`gcg` on a list of targets (always a `PromptResults`).

    Example:
        >>> from dreamy.models import load
        >>> len(gcg_many(load("tiny:lm"), ["logits:3"], n_tokens=3, iters=1, children=8, progress=False))
        1
    """
    return _gcg(loaded, target_list(targets), GCGConfig.build(config, **overrides), fluency_model, progress, starts)


def _gcg(loaded: LoadedModel, targets: list, config: GCGConfig, fluency_model: nn.Module | None,
         progress: bool, starts: Mapping[str, Sequence[Sequence[int]]] | None) -> PromptResults:
    """The search with the model in eval mode and no parameter requiring grad, restored afterwards (`core.frozen`)."""
    with frozen(loaded.model):
        return _gcg_frozen(loaded, targets, config, fluency_model, progress, starts)


def _gcg_frozen(loaded: LoadedModel, targets: list, config: GCGConfig, fluency_model: nn.Module | None,
         progress: bool, starts: Mapping[str, Sequence[Sequence[int]]] | None) -> PromptResults:
    n_tokens, iters, children, topk = config.n_tokens, config.iters, config.children, config.topk
    n_swaps, fluency_weight, init, seed = config.n_swaps, config.fluency_weight, config.init, config.seed
    setup = SearchSetup.build(loaded, targets, config, fluency_model=fluency_model)
    n_targets = len(setup.targets)
    gens = [stepping.make_generator(seed) for _ in range(n_targets)]
    windows = starts_of(setup, starts, init)
    firsts = [initial_members(setup.tokenizer, setup.allowed, 1, n_tokens, init=init, windows=windows[k], generator=gen,
                              retokenize=setup.retokenize) for k, gen in enumerate(gens)]  # one current prompt: "maxima" and "mixed" start from the best window
    origins = [origin for _, (origin,) in firsts]
    start = torch.cat([first for first, _ in firsts])
    current_ids = [tuple(row) for row in start.tolist()]  # host copy of the current prompts
    current = start.to(loaded.device)
    everyone = torch.arange(n_targets)
    scores = setup.score(current, everyone)
    act, xent = torch.stack([scores.activation, scores.xentropy]).tolist()
    histories = [history_rows(setup, start[k : k + 1].tolist(), act[k : k + 1], xent[k : k + 1], 0, origins=origins[k:k + 1])
                 for k in range(n_targets)]
    stop = StopRule(config, [(act[k:k + 1], xent[k:k + 1]) for k in range(n_targets)])
    watch = StallWatch("gcg", setup.targets)
    iteration = 0
    fluency_weights = torch.full((n_targets,), float(fluency_weight))
    objective_of = lambda row: row["activation"] - fluency_weight * row["xentropy"]
    with stepping.progress(iters, "GCG" if n_targets == 1 else f"GCG x{n_targets} targets", enabled=progress) as bar:
        for iteration in range(1, iters + 1):
            top, states = setup.top_tokens_and_states(current, fluency_weights, topk, everyone)  # states: children reuse them
            made = torch.cat([swap_children(current[k : k + 1], top[k : k + 1], children=children, n_swaps=n_swaps,
                                            generator=gens[k]) for k in range(n_targets)])
            made_ids = made.tolist()  # one transfer: token bookkeeping is host work
            made_groups = [made_ids[k * children:(k + 1) * children] for k in range(n_targets)]
            groups = filter_candidates(setup.tokenizer, made_groups, retokenize=setup.retokenize, parents=current_ids)
            blocked = blocked_groups(made_groups, groups, current_ids)
            before = list(current_ids)
            flat = [span for group in groups for span in group]
            if flat:
                owners = torch.tensor([k for k, group in enumerate(groups) for _ in group], device=current.device)
                spans = torch.tensor(flat, dtype=torch.long, device=current.device)
                scored = setup.score(spans, owners, parents=current, parent_index=owners, parent_states=states)
                objective = scored.activation - fluency_weight * scored.xentropy
                bounds = [0]
                for group in groups:
                    bounds.append(bounds[-1] + len(group))
                picks = torch.stack([objective[lo:hi].argmax() + lo if hi > lo else torch.tensor(-1, device=objective.device)
                                     for lo, hi in zip(bounds[:-1], bounds[1:])])
                host = torch.cat([scored.activation.float(), scored.xentropy.float(), picks.float()]).tolist()  # one transfer
                n = len(flat)
                new_points = []
                for k in range(n_targets):
                    lo, hi = bounds[k], bounds[k + 1]
                    new_points.append((host[lo:hi], host[n + lo:n + hi]))
                    if hi == lo:
                        continue
                    histories[k] += history_rows(setup, flat[lo:hi], host[lo:hi], host[n + lo:n + hi], iteration,
                                                 origins=[origins[k]] * (hi - lo))
                    current_ids[k] = flat[int(host[2 * n + k])]
                current = torch.where((picks >= 0)[:, None], spans[picks.clamp(min=0)], current)
            afresh = [k for k in range(n_targets)
                      if watch.update(k, iteration, moved=current_ids[k] != before[k], blocked=blocked[k])]
            if afresh:  # stuck behind the token filters: new random prompts that pass them
                drawn = torch.cat([random_spans(setup.tokenizer, setup.allowed, 1, n_tokens, generator=gens[k],
                                                retokenize=setup.retokenize) for k in afresh])
                fresh = setup.score(drawn.to(current.device), torch.tensor(afresh, device=current.device))
                fresh_act, fresh_xent = torch.stack([fresh.activation, fresh.xentropy]).tolist()
                for row, k in enumerate(afresh):
                    current_ids[k] = tuple(drawn[row].tolist())
                    origins[k] = "random"
                    histories[k] += history_rows(setup, [current_ids[k]], fresh_act[row:row + 1],
                                                 fresh_xent[row:row + 1], iteration, origins=["random"])
                current = current.clone()
                current[afresh] = drawn.to(current.device)
            bar.update(1)
            if progress:  # the best so far walks every history: only for a bar someone sees
                bests = [max(history, key=objective_of) for history in histories]
                if n_targets == 1:
                    bar.set_postfix(best=f"{bests[0]['activation']:.3g}", xent=f"{bests[0]['xentropy']:.2f}")
                else:
                    bar.set_postfix(mean_best=f"{sum(b['activation'] for b in bests) / n_targets:.3g}")
            if stop.update(new_points if flat else [([], [])] * n_targets, iteration < iters):
                break
    settings = {**config.to_dict(), "iterations_run": iteration, "stopped": stop.reason or "iters"}
    return PromptResults(setup.result(histories[k], {**settings, "iterations_moved": watch.moved[k],
                                                     "fresh_starts": watch.fresh_starts[k]}, seed, "gcg", k)
                         for k in range(n_targets))
