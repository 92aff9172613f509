"""The steering check: add `alpha * u` at a target's site while the model continues neutral prompts, and score
the target as Arad, Mueller & Belinkov (2025, "SAEs Are Good for Steering - If You Select the Right Features")
do, plus what the steered continuations show.

What the paper defines (its code, technion-cs-nlp/saes-are-good-for-steering, `src/input_score.py`,
`src/output_score.py`, `src/utils.py`, `src/sae_utils.py`):

- The feature's tokens: the logit lens of its decoder row, `softmax(lm_head(final_norm(W_dec[i])))`, top k = 20.
- Input score: over the feature's top activating examples (at most 100, from Neuronpedia; features with fewer
  than 10 are skipped), the share whose most activating token is one of those k tokens.
- Output score: one forward of the neutral prompt "From my experience," with the feature amplified at the
  last token (its SAE activation raised by 10 times the largest SAE activation at that token, the SAE's
  reconstruction error kept, so the site gets `+ 10 * max_act * W_dec[i]`); of the next-token distribution,
  `(1 - min_rank / vocab) * max_prob`, `min_rank` the best (0-based) rank and `max_prob` the largest probability
  of the k tokens.
- Steered generations: the same hook while sampling 20 tokens (temperature 0.7) from 50 neutral openings.

What `steer` computes, and where it differs:

- `u` is the target's output direction (`dreamy.sae.describe.output_direction`: an SAE feature's decoder row, a
  `dir=` vector, a `down_proj@in:j` column, a residual unit's basis vector) scaled to unit norm; the promoted
  tokens are `vocab_projection(u)`'s top `top_k` (the final norm, then the unembedding: the paper's logit lens).
- `input_score`: the share of the given top activating windows (at most `max_windows`) whose most activating
  token (the argmax of the window's per-token activations; its last token when it has none) is a promoted
  token, as the paper; None without windows. The windows are `dreamy.maxima` text windows (a corpus scan), not
  Neuronpedia's examples, and no minimum count is imposed (`n_windows` says how many there were).
- `output_score`: the paper's `(1 - min_rank / vocab) * max_prob` on the first next-token distribution of each
  steered continuation (with `positions="last"` exactly the paper's single intervened forward), averaged over
  the neutral prompts; with `prompts=("From my experience,",)` it is the paper's score for that prompt.
  `output_score_unsteered` is the same formula without steering (the baseline the paper does not report).
- The strength differs: the paper adds `10 * max_act` (recomputed per token from all SAE activations, so it
  exists only for SAE features); here `alpha` is one number per target, by default `scale` times the site's
  mean activation norm on the neutral prompts' tokens (`alpha_source` says which).
- Beyond the paper (the issue's "how much its promoted tokens rise in the steered continuations"):
  `promoted_rise` is the mean probability mass the model puts on the promoted tokens at each generated step,
  steered minus unsteered (each along its own continuation); `promoted_share` / `promoted_share_unsteered` the
  share of generated tokens that are promoted tokens; and the fluency cost, `fluency_cost`, is the mean
  next-token cross-entropy of the steered continuations under the unsteered model minus that of the unsteered
  continuations (`xent_steered`, `xent_unsteered`).
- Generation is greedy by default (`temperature=0`), sampled from a seeded generator otherwise, for a fixed
  `new_tokens` (the paper's 20, no stop at "."), one prompt at a time.

Example:
    >>> from dreamy.models import load
    >>> lm = load("tiny:lm")
    >>> result = steer(lm, "model.layers.1:3", prompts=("The cat",), new_tokens=3, top_k=5)
    >>> result.site, len(result.continuations), 0.0 <= result.output_score <= 1.0
    ('model.layers.1', 1, True)
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from dreamy.core.stepping import make_generator
from dreamy.language.layout import start_token
from dreamy.language.states import cache_kwarg, output_cache, takes_logits_to_keep
from dreamy.models import LoadedModel
from dreamy.sae.describe import output_direction, vocab_projection
from dreamy.sae.splice import edit_site
from dreamy.steering.config import SteerConfig
from dreamy.targets import TargetError


def steering_direction(loaded: LoadedModel, spec: str) -> tuple[str, Tensor]:
    """The site to steer at and the unit direction of target `spec`; one `TargetError` naming the spec for a
    target that writes no single direction (logits, sums of terms, units without a Linear behind them).

    Example:
        >>> from dreamy.models import load
        >>> site, u = steering_direction(load("tiny:lm"), "model.layers.1.mlp.down_proj@in:5")
        >>> site, round(float(u.norm()), 4)
        ('model.layers.1.mlp.down_proj', 1.0)
        >>> steering_direction(load("tiny:lm"), "logits:3")
        Traceback (most recent call last):
        ...
        dreamy.targets.errors.TargetError: cannot steer target 'logits:3': an output direction needs one term at a hidden site
    """
    try:
        site, vector = output_direction(loaded, spec)
    except (TargetError, ValueError) as error:
        why = str(error).split(": ", 1)[-1] if str(error).startswith(f"'{spec}'") else str(error)
        raise TargetError(f"cannot steer target '{spec}': {why}") from error
    vector = vector.detach().float().reshape(-1)
    norm = float(vector.norm())
    if norm == 0.0:
        raise TargetError(f"cannot steer target '{spec}': its direction is zero")
    return site, vector / norm


def promoted_tokens(loaded: LoadedModel, direction: Tensor, k: int = 20) -> list[tuple[str, int, float]]:
    """The logit lens of `direction`: its `k` most promoted tokens as (text, id, logit), best first.

    Example:
        >>> from dreamy.models import load
        >>> lm = load("tiny:lm")
        >>> [t[1] for t in promoted_tokens(lm, lm.model.lm_head.weight[7] / lm.model.model.norm.weight, k=1)]
        [7]
    """
    return [(t.token, t.id, t.value) for t in vocab_projection(loaded, direction, k=k).promoted]


def top_activating_tokens(windows: Sequence[Mapping[str, Any]]) -> list[int]:
    """The most activating token id of each window (`token_ids` with `token_activations`, as `dreamy.maxima`
    gives them; the last token when a window has no per-token activations). Windows without ids are skipped.

    Example:
        >>> top_activating_tokens([{"token_ids": [4, 5, 6], "token_activations": [0.1, 2.0, 0.3]},
        ...                        {"token_ids": [8, 9]}])
        [5, 9]
    """
    found = []
    for window in windows:
        ids = list(window.get("token_ids") or [])
        if not ids:
            continue
        values = list(window.get("token_activations") or [])
        if values:
            n = min(len(ids), len(values))  # aligned at the window's end
            ids, values = ids[len(ids) - n:], values[len(values) - n:]
            found.append(int(ids[max(range(n), key=values.__getitem__)]))
        else:
            found.append(int(ids[-1]))
    return found


def input_score(promoted_ids: Sequence[int], windows: Sequence[Mapping[str, Any]], max_windows: int = 100) -> float | None:
    """The paper's input score: the share of the (first `max_windows`) top activating windows whose most
    activating token is one of `promoted_ids`; None without windows.

    Example:
        >>> input_score([5, 7], [{"token_ids": [4, 5], "token_activations": [0.0, 1.0]},
        ...                      {"token_ids": [4, 6], "token_activations": [0.0, 1.0]}])
        0.5
    """
    tokens = top_activating_tokens(list(windows)[:max_windows])
    if not tokens:
        return None
    wanted = set(int(i) for i in promoted_ids)
    return sum(t in wanted for t in tokens) / len(tokens)


def rank_output_score(probs: Tensor, token_ids: Sequence[int]) -> tuple[float, int, float]:
    """(score, min_rank, max_prob) of a next-token distribution `probs` `[V]` for the tokens `token_ids`: the
    paper's `(1 - min_rank / V) * max_prob`, `min_rank` the best 0-based rank among them (ties rank first).

    Example:
        >>> score, rank, prob = rank_output_score(torch.tensor([0.25, 0.5, 0.25]), [2, 0])
        >>> score == (1 - 1 / 3) * 0.25, rank
        (True, 1)
    """
    picked = probs[torch.as_tensor(list(token_ids), device=probs.device)]
    best = picked.max()
    min_rank = int((probs > best).sum())
    max_prob = float(best)
    return (1.0 - min_rank / probs.numel()) * max_prob, min_rank, max_prob


@dataclass
class Continuation:
    """One continuation of a prompt: the new tokens, the log-probability the generating model gave each, the
    probability mass it put on each watched token set at each step (`watched` `[new_tokens, W]`), and its first
    next-token distribution (`first_probs` `[V]`)."""

    prompt: str
    token_ids: list[int]
    text: str
    logprobs: list[float]
    watched: Tensor | None = None
    first_probs: Tensor | None = None


def _steer_fn(vector: Tensor, positions: str):
    def add(activation: Tensor) -> Tensor:
        v = vector.to(activation)
        if activation.shape[1] == 1:  # a generated token (the KV cache holds the rest)
            return activation + v
        keep = activation.shape[1] - 1 if positions == "last" else 1
        return torch.cat([activation[:, :keep], activation[:, keep:] + v], dim=1)
    return add


@torch.no_grad()
def generate(loaded: LoadedModel, prompt: str, new_tokens: int = 20, *, site: str | None = None,
             vector: Tensor | None = None, positions: str = "last", temperature: float = 0.0,
             generator: torch.Generator | None = None, watch: Tensor | None = None) -> Continuation:
    """Continue `prompt` (after the start token) by `new_tokens` tokens, with `vector` added at `site` (the
    prompt's last token and every new one for `positions="last"`, every token after the start for `"all"`);
    greedy when `temperature` is 0, else sampled with `generator`. `watch` `[W, V]` (0/1 rows) asks for the
    probability each step puts on each row's tokens. The hook is removed however generation ends.

    Example:
        >>> from dreamy.models import load
        >>> lm = load("tiny:lm")
        >>> plain = generate(lm, "The cat", 4)
        >>> zero = generate(lm, "The cat", 4, site="model.layers.0", vector=torch.zeros(64))
        >>> plain.token_ids == zero.token_ids, len(plain.logprobs)
        (True, 4)
    """
    model = loaded.model
    ids = [start_token(loaded.tokenizer)] + loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    context = torch.tensor([ids], device=loaded.device)
    chosen: list[Tensor] = []
    logprobs: list[Tensor] = []
    masses: list[Tensor] = []
    first = None
    watch = None if watch is None else watch.to(device=loaded.device, dtype=torch.float32)
    cache_name = cache_kwarg(model)
    keep = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
    with ExitStack() as stack:  # the steering hook comes off however generation ends
        if site is not None and vector is not None:
            stack.enter_context(edit_site(model, site, _steer_fn(vector, positions)))
        out = model(input_ids=context, use_cache=True, **keep)
        for step in range(new_tokens):
            logits = out.logits[0, -1].float()
            log_p = torch.log_softmax(logits, dim=-1)
            if first is None:
                first = log_p.exp()
            if watch is not None:
                masses.append(watch @ log_p.exp())
            if temperature == 0:
                token = logits.argmax().reshape(1)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                token = torch.multinomial(probs, 1, generator=generator)
            chosen.append(token)
            logprobs.append(log_p[token])
            if step + 1 < new_tokens:
                out = model(input_ids=token.reshape(1, 1), use_cache=True, **{cache_name: output_cache(out)}, **keep)
    token_ids = torch.cat(chosen).tolist()
    return Continuation(prompt, token_ids, loaded.tokenizer.decode(token_ids), torch.cat(logprobs).cpu().tolist(),
                        torch.stack(masses).cpu() if masses else None, first.cpu())


@torch.no_grad()
def continuation_xentropy(loaded: LoadedModel, prompt: str, token_ids: Sequence[int]) -> float:
    """The mean next-token cross-entropy of `token_ids` after `prompt` under the unsteered model.

    Example:
        >>> from dreamy.models import load
        >>> lm = load("tiny:lm")
        >>> c = generate(lm, "The cat", 3)
        >>> abs(continuation_xentropy(lm, "The cat", c.token_ids) + sum(c.logprobs) / 3) < 1e-4
        True
    """
    prompt_ids = [start_token(loaded.tokenizer)] + loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + list(token_ids)], device=loaded.device)
    log_p = torch.log_softmax(loaded.model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float(), dim=-1)
    picked = log_p.gather(1, ids[0, len(prompt_ids):].unsqueeze(1))
    return float(-picked.mean())


@torch.no_grad()
def site_activations(loaded: LoadedModel, site: str, prompts: Sequence[str]) -> list[Tensor]:
    """`site`'s activation (`[1, T, d]`, the start token first) on each of `prompts`, read in one forward each.

    Example:
        >>> from dreamy.models import load
        >>> [tuple(a.shape) for a in site_activations(load("tiny:lm"), "model.layers.1", ["The cat sat."])][0][-1]
        64
    """
    seen: list[Tensor] = []

    def record(activation: Tensor) -> Tensor:
        seen.append(activation.detach())
        return activation

    start = start_token(loaded.tokenizer)
    with edit_site(loaded.model, site, record):
        for prompt in prompts:
            ids = [start] + loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            loaded.model(input_ids=torch.tensor([ids], device=loaded.device))
    return seen


def site_norm(loaded: LoadedModel, site: str, prompts: Sequence[str]) -> float:
    """The mean norm of `site`'s activation over the tokens of `prompts` (after the start token).

    Example:
        >>> from dreamy.models import load
        >>> site_norm(load("tiny:lm"), "model.layers.1", ["The cat sat."]) > 0
        True
    """
    norms = [activation[:, 1:].float().norm(dim=-1).flatten() for activation in site_activations(loaded, site, prompts)]
    return float(torch.cat(norms).mean())


@dataclass
class SteerResult:
    """The steering check of one target (see the module docstring for every score).

    `promoted`: the logit-lens tokens as `[text, id, logit]`; `continuations`: per prompt, the steered and the
    unsteered continuation text; `settings`: the config it ran with.
    """

    target: str
    site: str
    alpha: float
    alpha_source: str
    promoted: list[list[Any]]
    input_score: float | None
    n_windows: int
    output_score: float
    output_score_unsteered: float
    output_min_rank: float
    output_max_prob: float
    promoted_rise: float
    promoted_share: float
    promoted_share_unsteered: float
    xent_steered: float
    xent_unsteered: float
    continuations: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def fluency_cost(self) -> float:
        """Cross-entropy of the steered continuations minus the unsteered ones', both under the unsteered model."""
        return self.xent_steered - self.xent_unsteered

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-able record (`kind` "steering"), with `fluency_cost`.

        Example:
            >>> r = SteerResult("t", "s", 1.0, "alpha", [], None, 0, 0.5, 0.1, 0.0, 0.5, 0.2, 0.1, 0.0, 3.0, 2.5)
            >>> r.to_records()[0]["fluency_cost"]
            0.5
        """
        record = {name: getattr(self, name) for name in self.__dataclass_fields__}
        record["fluency_cost"] = self.fluency_cost
        return [{"kind": "steering", **record}]


def _in_set(ids: Sequence[int], wanted: set[int]) -> float:
    return sum(i in wanted for i in ids) / max(1, len(ids))


def steer_many(loaded: LoadedModel, targets: Sequence[str], config: SteerConfig | None = None, *,
               windows: Mapping[str, Sequence[Mapping[str, Any]]] | None = None, **overrides: Any) -> list[SteerResult]:
    """The steering check of each target (see the module docstring); the unsteered continuations are generated
    once for all of them. `windows` maps a target to its top activating dataset windows (for the input score).
    A target that cannot be steered raises `TargetError` naming it, before any generation.

    Example:
        >>> from dreamy.models import load
        >>> results = steer_many(load("tiny:lm"), ["model.layers.1:3", "model.layers.0:5"], prompts=("A dog",),
        ...                      new_tokens=2, top_k=3)
        >>> [r.target for r in results], [len(r.promoted) for r in results]
        (['model.layers.1:3', 'model.layers.0:5'], [3, 3])
    """
    config = SteerConfig.build(config, **overrides)
    windows = windows or {}
    directions = [steering_direction(loaded, spec) for spec in targets]
    promoted = [promoted_tokens(loaded, u, config.top_k) for _, u in directions]
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    watch = torch.zeros(len(targets), vocab)
    for j, tokens in enumerate(promoted):
        watch[j, [t[1] for t in tokens]] = 1.0
    generator = make_generator(config.seed, loaded.device) if config.temperature > 0 else None
    plain = [generate(loaded, p, config.new_tokens, temperature=config.temperature, generator=generator, watch=watch)
             for p in config.prompts]
    norms: dict[str, float] = {}
    results = []
    for j, (spec, (site, unit)) in enumerate(zip(targets, directions)):
        if config.alpha is not None:
            alpha, source = float(config.alpha), "alpha"
        else:
            if site not in norms:
                norms[site] = site_norm(loaded, site, config.prompts)
            alpha, source = config.scale * norms[site], f"scale {config.scale:g} x mean site norm {norms[site]:.4g}"
        ids = [t[1] for t in promoted[j]]
        wanted = set(ids)
        generator = make_generator(config.seed, loaded.device) if config.temperature > 0 else None
        steered = [generate(loaded, p, config.new_tokens, site=site, vector=alpha * unit, positions=config.positions,
                            temperature=config.temperature, generator=generator, watch=watch[j:j + 1])
                   for p in config.prompts]
        scores = [rank_output_score(c.first_probs, ids) for c in steered]
        baseline = [rank_output_score(c.first_probs, ids)[0] for c in plain]
        rise = [float(s.watched[:, 0].mean() - u.watched[:, j].mean()) for s, u in zip(steered, plain)]
        xent_steered = [continuation_xentropy(loaded, c.prompt, c.token_ids) for c in steered]
        xent_plain = [continuation_xentropy(loaded, c.prompt, c.token_ids) for c in plain]
        mine = list(windows.get(spec) or [])[:config.max_windows]
        n = len(config.prompts)
        results.append(SteerResult(
            target=spec, site=site, alpha=alpha, alpha_source=source,
            promoted=[[text, i, value] for text, i, value in promoted[j]],
            input_score=input_score(ids, mine, config.max_windows), n_windows=len(top_activating_tokens(mine)),
            output_score=sum(s[0] for s in scores) / n, output_score_unsteered=sum(baseline) / n,
            output_min_rank=sum(s[1] for s in scores) / n, output_max_prob=sum(s[2] for s in scores) / n,
            promoted_rise=sum(rise) / n,
            promoted_share=sum(_in_set(c.token_ids, wanted) for c in steered) / n,
            promoted_share_unsteered=sum(_in_set(c.token_ids, wanted) for c in plain) / n,
            xent_steered=sum(xent_steered) / n, xent_unsteered=sum(xent_plain) / n,
            continuations=[{"prompt": s.prompt, "steered": s.text, "unsteered": u.text} for s, u in zip(steered, plain)],
            settings=config.to_dict()))
    return results


def steer(loaded: LoadedModel, target: str, config: SteerConfig | None = None, *,
          windows: Sequence[Mapping[str, Any]] | None = None, **overrides: Any) -> SteerResult:
    """The steering check of one target (`steer_many` for one); `windows` are its top activating dataset windows.

    Example:
        >>> from dreamy.models import load
        >>> r = steer(load("tiny:lm"), "model.layers.1:3", prompts=("A dog",), new_tokens=2, alpha=0.0)
        >>> r.alpha, r.promoted_rise, r.fluency_cost
        (0.0, 0.0, 0.0)
    """
    return steer_many(loaded, [target], config, windows={target: windows or []}, **overrides)[0]


__all__ = ["Continuation", "SteerResult", "continuation_xentropy", "generate", "input_score", "promoted_tokens",
           "rank_output_score", "site_activations", "site_norm", "steer", "steer_many", "steering_direction", "top_activating_tokens"]
