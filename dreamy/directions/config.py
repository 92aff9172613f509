"""`DirectionConfig` and `TCAVConfig`: every knob of learning a concept direction and of testing a class's
dependence on it, with their defaults, checked when built.

A direction is learned from the activations two example sets give at one site. `reduce` says how a site's
positions become one vector per example: for image models a spatial reduction of the feature map (`mean`,
the default; `max`, `sum`, `center` or `pos=N`, a flat position index), for language models a token position
(`pos=N`, N counted with the start token at 0, so `pos=-1` is the last token) or the mean over the tokens
after the start token (`mean`, the default; `max` and `sum` likewise skip the start token, whose activation is
the model's attention sink).

Example:
    >>> DirectionConfig().methods
    ('logistic', 'mean_diff', 'pca')
    >>> DirectionConfig(methods=("svm",))
    Traceback (most recent call last):
    ...
    dreamy.core.config.ConfigError: DirectionConfig.methods: unknown method 'svm'; use any of 'logistic', 'mean_diff', 'pca'
    >>> TCAVConfig(random_runs=3)
    Traceback (most recent call last):
    ...
    dreamy.core.config.ConfigError: TCAVConfig.random_runs must be >= 10, got 3
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

from dreamy.core.config import Config, ConfigError, check_int, check_number, set_field

METHODS = ("logistic", "mean_diff", "pca")
REDUCTIONS = ("mean", "max", "sum", "center")
_POSITION = re.compile(r"^pos=-?\d+$")


def check_reduce(config: Config, name: str = "reduce") -> None:
    """Refuse a reduction that is not one of `REDUCTIONS`, `pos=N` or None (the default for the model's kind).

    Example:
        >>> check_reduce(DirectionConfig(reduce="pos=-1"))
        >>> DirectionConfig(reduce="last")
        Traceback (most recent call last):
        ...
        dreamy.core.config.ConfigError: DirectionConfig.reduce must be None, one of 'mean', 'max', 'sum', 'center' or pos=N (e.g. pos=-1, the last token), got 'last'
    """
    value = getattr(config, name)
    if value is None or value in REDUCTIONS or (isinstance(value, str) and _POSITION.match(value)):
        return
    raise ConfigError(f"{type(config).__name__}.{name} must be None, one of {', '.join(repr(r) for r in REDUCTIONS)} "
                      f"or pos=N (e.g. pos=-1, the last token), got {value!r}")


@dataclass(frozen=True)
class DirectionConfig(Config):
    """How `dreamy.directions.learn_direction` learns a direction from a positive and a negative example set.

    - `methods`: any of `logistic` (the CAV of Kim et al. 2018: the weight vector of an L2-regularized logistic
      regression, `l2` its penalty on the standardized features, fitted by Newton's method for at most `steps`
      iterations), `mean_diff` (the difference
      of the class means) and `pca` (the first principal component of the paired differences positive[i] -
      negative[i], as in Tigges et al. 2023; needs sets of equal size, example i of each being a pair).
    - `heldout`: the share of each set (of the pairs, when paired) held out of fitting for the accuracy.
    - `reduce`: how a site's positions become one vector per example (see the module docstring).
    - `batch_size`: examples per forward; `seed` draws the held-out split.
    """

    kind: ClassVar[str] = "direction"

    methods: tuple[str, ...] = METHODS
    heldout: float = 0.25
    reduce: str | None = None
    l2: float = 1e-2
    steps: int = 50
    batch_size: int = 16
    seed: int = 0

    def check(self) -> None:
        methods = (self.methods,) if isinstance(self.methods, str) else tuple(self.methods)
        if not methods:
            raise ConfigError(f"DirectionConfig.methods must name at least one of {', '.join(repr(m) for m in METHODS)}")
        for method in methods:
            if method not in METHODS:
                raise ConfigError(f"DirectionConfig.methods: unknown method {method!r}; use any of "
                                  f"{', '.join(repr(m) for m in METHODS)}")
        set_field(self, "methods", tuple(dict.fromkeys(methods)))
        check_number(self, "heldout", minimum=0)
        if self.heldout >= 1:
            raise ConfigError(f"DirectionConfig.heldout is a share of the examples, below 1, got {self.heldout!r}")
        check_reduce(self)
        check_number(self, "l2", minimum=0)
        check_int(self, "steps", minimum=1)
        check_int(self, "batch_size", minimum=1)
        check_int(self, "seed", minimum=0)


@dataclass(frozen=True)
class TCAVConfig(Config):
    """How `dreamy.directions.tcav` tests a class's dependence on a concept (Kim et al. 2018).

    `random_runs` CAVs of the concept against as many random example sets (the counterparts), and as many CAVs of
    one other random set against the same counterparts (the paper's null); the two sets of TCAV scores are compared
    by a two-sided t-test and the dependence is significant when its p-value is below `alpha`. The paper asks for
    at least 10 runs, so fewer are refused. That test treats the concept's runs as independent although they share
    the concept's examples, and calls a random "concept" significant far more often than alpha (half the time in
    `tests/directions/test_tcav.py`'s synthetic runs), so a second p-value compares the concept's mean score with
    those of `null_concepts` random stand-in concepts scored against the same counterparts (a two-sided prediction
    t-test; exchangeable with a concept that means nothing). Each random set has `random_size` examples (None: as
    many as the concept). The CAVs are logistic regressions (`l2`, `steps`) fitted on all of their examples
    (`heldout` of them are held out only to report each CAV's accuracy); `reduce`, `batch_size` and `seed` as in
    `DirectionConfig`.
    """

    kind: ClassVar[str] = "tcav"

    random_runs: int = 10
    null_concepts: int = 10
    random_size: int | None = None
    alpha: float = 0.05
    heldout: float = 0.25
    reduce: str | None = None
    l2: float = 1e-2
    steps: int = 50
    batch_size: int = 16
    seed: int = 0

    def check(self) -> None:
        check_int(self, "random_runs", minimum=10)
        check_int(self, "null_concepts", minimum=2)
        check_int(self, "random_size", minimum=2, optional=True)
        check_number(self, "alpha", above=0)
        if self.alpha >= 1:
            raise ConfigError(f"TCAVConfig.alpha is a significance level, below 1, got {self.alpha!r}")
        check_number(self, "heldout", minimum=0)
        if self.heldout >= 1:
            raise ConfigError(f"TCAVConfig.heldout is a share of the examples, below 1, got {self.heldout!r}")
        check_reduce(self)
        check_number(self, "l2", minimum=0)
        check_int(self, "steps", minimum=1)
        check_int(self, "batch_size", minimum=1)
        check_int(self, "seed", minimum=0)

    def direction_config(self) -> DirectionConfig:
        """The `DirectionConfig` each of the test's CAVs is fitted with (logistic regression only).

        Example:
            >>> TCAVConfig(l2=0.5).direction_config().l2
            0.5
        """
        return DirectionConfig(methods=("logistic",), heldout=self.heldout, reduce=self.reduce, l2=self.l2,
                               steps=self.steps, batch_size=self.batch_size, seed=self.seed)


__all__ = ["DirectionConfig", "METHODS", "REDUCTIONS", "TCAVConfig", "check_reduce"]
