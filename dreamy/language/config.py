"""`EPOConfig` and `GCGConfig`: every knob of a prompt search, with its default, checked when built.

Both share the prompt's layout (`n_tokens` between a fixed `prefix` and `suffix`), the budget (`iters`), how
children are made (`children` per parent, `topk` replacement tokens per position, `n_swaps` swaps each),
the vocabulary (`ascii_only`, `retokenize`), the start (`init`), how children are scored (`scoring`) and the seed. The
concept "weight of the prompt's cross-entropy in the objective" is the fluency weight: one number for GCG
(`fluency_weight`), a range spread over the population's slots for EPO (`fluency_weight_range`).

Example:
    >>> EPOConfig(iters=30).population, GCGConfig().children
    (8, 128)
    >>> EPOConfig.build(children_per_member=16)
    Traceback (most recent call last):
    ...
    dreamy.core.config.ConfigError: EPOConfig has no setting 'children_per_member': it is called 'children' now
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from dreamy.core.config import Config, ConfigError, check_bool, check_choice, check_int, check_number, set_field

SCORING = ("auto", "packed", "grouped", "full")
RENAMED = {"children_per_member": "children", "batch_size": "children", "lambda_range": "fluency_weight_range"}


@dataclass(frozen=True)
class PromptConfig(Config):
    """The settings EPO and GCG share (see the module docstring).

    - `init`: None or "random" (random allowed tokens), "maxima" (the target's dataset windows of the prompt's
      length, one per member, given as `starts`), "mixed" (windows for half the members, random tokens for the
      rest), a start text, or token ids of the span (whole numbers). Every start passes the token filters its
      children must pass (`proposals.initial_members`): a text or ids that cannot is refused when the search starts.
    - `minutes`: a wall-clock budget per search (a packed batch of targets shares it); `plateau`: stop once no
      target's frontier has moved for this many iterations. A stopped search says why (`settings["stopped"]`).
    - `chunk_size`: rows per forward when scoring (default: the scorer's own); `scoring`: "auto" (packed KV
      reuse), "packed", "grouped" or "full" (see `dreamy.language.search.SearchSetup`).
    """

    kind: ClassVar[str] = "prompt"
    renamed: ClassVar[Mapping[str, str]] = RENAMED
    # what each field means, in a line (the command line's --help reads it)
    field_help: ClassVar[Mapping[str, str]] = {
        "n_tokens": "prompt length in tokens", "iters": "search iterations",
        "children": "children per parent per iteration (EPO: per member)",
        "topk": "replacement tokens drawn from per position", "prefix": "fixed text before the prompt",
        "suffix": "fixed text after the prompt", "seed": "seed of every random draw",
        "minutes": "wall-clock budget per search (a packed batch of targets shares it); a search that reaches it "
                   "stops and says so",
        "plateau": "stop a search once no target's frontier has moved for this many iterations"}

    n_tokens: int = 12
    iters: int = 100
    children: int = 32
    topk: int = 128
    n_swaps: int = 1
    prefix: str = ""
    suffix: str = ""
    init: Any = None
    ascii_only: bool = True
    retokenize: bool = True
    chunk_size: int | None = None
    scoring: str = "auto"
    minutes: float | None = None
    plateau: int | None = None
    seed: int = 0

    def check(self) -> None:
        for name in ("n_tokens", "iters", "children", "topk", "n_swaps"):
            check_int(self, name, minimum=1)
        check_int(self, "chunk_size", minimum=1, optional=True)
        check_int(self, "seed", minimum=0)
        check_bool(self, "ascii_only")
        check_bool(self, "retokenize")
        check_choice(self, "scoring", SCORING)
        check_number(self, "minutes", above=0, optional=True)
        check_int(self, "plateau", minimum=1, optional=True)
        for name in ("prefix", "suffix"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{type(self).__name__}.{name} must be text, got {getattr(self, name)!r}")
        if self.init == "random":
            set_field(self, "init", None)  # one spelling of the default, so runs fingerprint alike
        if self.init is not None and not isinstance(self.init, str):
            try:
                ids = tuple(operator.index(t) for t in self.init)  # whole numbers only: 3.5 is not token 3
            except TypeError:
                raise ConfigError(f"{type(self).__name__}.init must be None, a text or token ids (whole numbers), "
                                  f"got {self.init!r}") from None
            set_field(self, "init", ids)

    @property
    def method(self) -> str:
        return "epo" if isinstance(self, EPOConfig) else "gcg"


@dataclass(frozen=True)
class EPOConfig(PromptConfig):
    """EPO (Thompson et al., 2024): a population of `population` slots, each with its own fluency weight,
    spaced log-uniformly over `fluency_weight_range`, except the first `activation_slots` slots (default: one,
    none for a population of one), whose weight is 0 (activation alone: they hold the frontier's high-activation
    end, as the highest weights hold its fluent end; several hold distinct prompts); `children` per member per iteration; every
    `restart_every` iterations (None: never) the population restarts from the best prompt so far under a
    fluency weight drawn at random from the range. Defaults from `benchmarks/epo_defaults` (topk) and
    `benchmarks/epo_vs_reference` (activation_slots, and the range (0.1, 30): with (0.3, 30) the frontier lost its
    high-activation end to the reference's on 2 of its 4 neurons, averaged over 4 seeds).

    Example:
        >>> EPOConfig(population=4, activation_slots=2).n_activation_slots
        2
    """

    field_help: ClassVar[Mapping[str, str]] = {
        "population": "EPO slots",
        "activation_slots": "EPO slots with fluency weight 0 (by default one, none for a population of one), "
                            "holding the frontier's high-activation end",
        "fluency_weight_range": "EPO's fluency weights of the other slots, spread log-uniformly over LOW..HIGH"}

    n_tokens: int = 12
    children: int = 32
    topk: int = 128
    population: int = 8
    fluency_weight_range: tuple[float, float] = (0.1, 30.0)
    restart_every: int | None = 30
    activation_slots: int | None = None

    @property
    def n_activation_slots(self) -> int:
        """How many activation slots (fluency weight 0) the population has: `activation_slots`, or by default
        (None) one when the population has more than one slot, else none.

        Example:
            >>> EPOConfig().n_activation_slots, EPOConfig(population=1).n_activation_slots
            (1, 0)
        """
        if self.activation_slots is not None:
            return self.activation_slots
        return 1 if self.population > 1 else 0

    def check(self) -> None:
        super().check()
        check_int(self, "population", minimum=1)
        check_int(self, "activation_slots", minimum=0, optional=True)
        if self.activation_slots is not None and self.activation_slots >= self.population:
            raise ConfigError(f"EPOConfig.activation_slots ({self.activation_slots}) must leave at least one of the "
                              f"{self.population} population slots a fluency weight; lower it or raise population")
        check_int(self, "restart_every", minimum=1, optional=True)
        weights = tuple(self.fluency_weight_range)
        if len(weights) != 2 or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights) \
                or not 0 < weights[0] <= weights[1] < float("inf"):
            raise ConfigError(f"EPOConfig.fluency_weight_range must be (low, high) with 0 < low <= high, "
                              f"got {self.fluency_weight_range!r}")
        set_field(self, "fluency_weight_range", (float(weights[0]), float(weights[1])))


@dataclass(frozen=True)
class GCGConfig(PromptConfig):
    """GCG (Zou et al., 2023): `children` single- (or `n_swaps`-) token swaps of the current prompt per
    iteration, the best under `activation - fluency_weight * cross-entropy` kept."""

    n_tokens: int = 16
    children: int = 128
    topk: int = 64
    fluency_weight: float = 0.0

    def check(self) -> None:
        super().check()
        check_number(self, "fluency_weight", minimum=0)


__all__ = ["EPOConfig", "GCGConfig", "PromptConfig", "SCORING"]
