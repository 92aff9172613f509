"""TCAV (Kim et al. 2018, "Interpretability Beyond Feature Attribution"): how much a class depends on a concept.

The conceptual sensitivity of example x is the directional derivative of the class's logit along the concept's
CAV at a site; the TCAV score is the share of the class's examples with a positive one. A score means little
alone (a CAV of random examples scores something too), so the paper's test: CAVs of the concept against
`random_runs` random example sets (the counterparts), and as many CAVs of one random stand-in concept against the
same counterparts; the two sets of scores are compared by a two-sided t-test, and the dependence is significant
when p < alpha (`p_value`, `significant`). Because the concept's runs share its examples, that test calls random
"concepts" significant far more often than alpha; `null_p_value` compares the concept's mean score with the mean
scores of `null_concepts` random stand-ins against the same counterparts (a two-sided prediction t-test, which a
concept exchangeable with random sets passes at the rate alpha; `significant_against_null`).

- `tcav_score(gradients, cav)`: the share of rows of `gradients @ cav` above 0.
- `tcav_test(concept, randoms, gradients, config)`: the test on activations (`randoms`: random_runs counterparts
  followed by null_concepts stand-ins; the first stand-in is the paper's null) and per-example gradients (`[K, D]`).
- `tcav(loaded, target, site, concept, random_pool, class_examples, config)`: the test from example sets; random
  sets are drawn from `random_pool` (seeded), the gradients are `dreamy.directions.examples.target_gradients`.

Example:
    >>> gen = torch.Generator().manual_seed(0)
    >>> planted = torch.nn.functional.normalize(torch.randn(32, generator=gen), dim=0)
    >>> concept = torch.randn(40, 32, generator=gen) + 3 * planted
    >>> randoms = [torch.randn(40, 32, generator=gen) for _ in range(20)]
    >>> gradients = planted + 0.3 * torch.randn(50, 32, generator=gen)    # the class depends on the concept
    >>> result = tcav_test(concept, randoms, gradients)
    >>> result.score > 0.99, result.significant, result.significant_against_null
    (True, True, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from dreamy.core.config import json_value
from dreamy.core.stepping import make_generator
from dreamy.directions.config import TCAVConfig
from dreamy.directions.examples import Examples, bare_site, default_reduce, site_features, target_gradients
from dreamy.directions.learn import learn_direction
from dreamy.models import LoadedModel


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    value = d
    for m in range(1, 400):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            value *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return value


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b).

    Example:
        >>> round(incomplete_beta(2.0, 3.0, 0.4), 6)    # 1 - (1-x)^4 - 4x(1-x)^3 at x = 0.4
        0.5248
    """
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_test(first: Sequence[float], second: Sequence[float]) -> tuple[float | None, float]:
    """Student's two-sided t-test of equal means (pooled variance, as `scipy.stats.ttest_ind` by default):
    (t statistic, p-value). Two constant samples give p = 1 when equal and p = 0 when not (t is None).

    Example:
        >>> t, p = t_test([1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 4.0, 5.0])
        >>> round(t, 4), round(p, 4)
        (-1.0954, 0.3153)
    """
    n1, n2 = len(first), len(second)
    if n1 < 2 or n2 < 2:
        raise ValueError(f"a t-test needs at least 2 values per sample, got {n1} and {n2}")
    m1, m2 = sum(first) / n1, sum(second) / n2
    ss = sum((v - m1) ** 2 for v in first) + sum((v - m2) ** 2 for v in second)
    df = n1 + n2 - 2
    pooled = ss / df
    if pooled <= 1e-24:
        return None, 1.0 if abs(m1 - m2) <= 1e-12 else 0.0
    t = (m1 - m2) / math.sqrt(pooled * (1.0 / n1 + 1.0 / n2))
    return t, min(1.0, incomplete_beta(df / 2.0, 0.5, df / (df + t * t)))


def prediction_t_test(value: float, sample: Sequence[float]) -> tuple[float | None, float]:
    """Is `value` an outlier of the population `sample` comes from? The two-sided prediction t-test
    `t = (value - mean) / (sd * sqrt(1 + 1/n))` with n - 1 degrees of freedom: (t, p). A constant sample gives
    p = 1 when `value` equals it and p = 0 when not (t is None).

    Example:
        >>> t, p = prediction_t_test(3.0, [0.0, 1.0, 2.0, 1.0])
        >>> round(t, 4), round(p, 4)
        (2.1909, 0.1162)
    """
    n = len(sample)
    if n < 2:
        raise ValueError(f"a prediction t-test needs at least 2 values in the sample, got {n}")
    mean = sum(sample) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in sample) / (n - 1))
    if sd <= 1e-12:
        return None, 1.0 if abs(value - mean) <= 1e-12 else 0.0
    t = (value - mean) / (sd * math.sqrt(1.0 + 1.0 / n))
    df = n - 1
    return t, min(1.0, incomplete_beta(df / 2.0, 0.5, df / (df + t * t)))


def tcav_score(gradients: Tensor, cav: Tensor) -> float:
    """The share of examples whose directional derivative along `cav` (`gradients @ cav`) is positive.

    Example:
        >>> tcav_score(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0]]), torch.tensor([1.0, 0.0]))
        0.6666666666666666
    """
    if gradients.ndim != 2 or gradients.shape[1] != cav.numel():
        raise ValueError(f"gradients must be [K, {cav.numel()}] for a CAV of {cav.numel()} values, got {tuple(gradients.shape)}")
    if gradients.shape[0] == 0:
        raise ValueError("no class examples to score; give at least one")
    return int((gradients.float() @ cav.float().reshape(-1) > 0).sum()) / gradients.shape[0]


@dataclass
class TCAVResult:
    """A TCAV test: `scores` of the concept's CAVs (one per counterpart), `random_scores` of the paper's null (one
    stand-in's CAVs against the same counterparts), their two-sided t-test (`t_statistic`, `p_value`),
    `significant` (p < `alpha`) and `score` (the mean of `scores`, the concept's TCAV score); `null_scores` (each
    stand-in concept's mean score), the prediction t-test of `score` against them (`null_p_value`) and
    `significant_against_null`. `cav_accuracy` / `random_cav_accuracy`: held-out accuracy of each CAV."""

    score: float
    scores: list[float]
    random_scores: list[float]
    t_statistic: float | None
    p_value: float
    significant: bool
    alpha: float
    cav_accuracy: list[float | None]
    random_cav_accuracy: list[float | None]
    n_class_examples: int
    settings: dict[str, Any]
    null_scores: list[float] = field(default_factory=list)
    null_p_value: float | None = None
    significant_against_null: bool | None = None
    target: str | None = None
    site: str | None = None
    model: str | None = None
    reduce: str | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-able record: the test's figures and where they came from.

        Example:
            >>> TCAVResult(1.0, [1.0] * 2, [0.5] * 2, None, 0.0, True, 0.05, [], [], 3, {}).to_records()[0]["p_value"]
            0.0
        """
        null = self.null_scores
        return [{"kind": "tcav", "target": self.target, "site": self.site, "model": self.model, "reduce": self.reduce,
                 "score": self.score, "scores": list(self.scores), "random_scores": list(self.random_scores),
                 "random_score": sum(self.random_scores) / len(self.random_scores) if self.random_scores else None,
                 "t_statistic": self.t_statistic, "p_value": self.p_value, "significant": self.significant,
                 "null_scores": list(null), "null_score": sum(null) / len(null) if null else None,
                 "null_p_value": self.null_p_value, "significant_against_null": self.significant_against_null,
                 "alpha": self.alpha, "cav_accuracy": list(self.cav_accuracy),
                 "random_cav_accuracy": list(self.random_cav_accuracy), "n_class_examples": self.n_class_examples,
                 "sources": dict(self.sources), "settings": json_value(self.settings)}]


def tcav_test(concept: Tensor, randoms: Sequence[Tensor], gradients: Tensor, config: TCAVConfig | None = None,
              **overrides: Any) -> TCAVResult:
    """The TCAV test on activations: `concept` `[N, D]`, `randoms` (`random_runs` counterparts, then `null_concepts`
    stand-in concepts, each `[M, D]`; the first stand-in is the paper's null) and the class's `gradients` `[K, D]`.

    Example:
        >>> gen = torch.Generator().manual_seed(1)
        >>> sets = [torch.randn(30, 6, generator=gen) for _ in range(21)]
        >>> result = tcav_test(sets[20], sets[:20], torch.randn(20, 6, generator=gen))   # a random "concept"
        >>> result.significant_against_null
        False
    """
    config = TCAVConfig.build(config, **overrides)
    runs, stand_ins = config.random_runs, config.null_concepts
    if len(randoms) < runs + stand_ins:
        raise ValueError(f"the test needs random_runs + null_concepts = {runs + stand_ins} random sets, got "
                         f"{len(randoms)}; draw more from the random pool or lower random_runs (at least 10) or "
                         "null_concepts (at least 2)")
    fit = config.direction_config()
    counterparts, nulls = randoms[:runs], randoms[runs:runs + stand_ins]

    def run(examples: Tensor) -> tuple[list[float], list[float | None]]:
        found = [learn_direction(examples, other, fit, paired=False) for other in counterparts]
        return ([tcav_score(gradients, cav.directions["logistic"]) for cav in found],
                [cav.heldout_accuracy["logistic"] for cav in found])

    scores, accuracy = run(concept)
    null_runs = [run(stand_in) for stand_in in nulls]
    random_scores, random_accuracy = null_runs[0]
    t, p = t_test(scores, random_scores)
    score = sum(scores) / len(scores)
    null_scores = [sum(values) / len(values) for values, _ in null_runs]
    _, null_p = prediction_t_test(score, null_scores)
    return TCAVResult(score=score, scores=scores, random_scores=random_scores, t_statistic=t, p_value=p,
                      significant=p < config.alpha, alpha=config.alpha, cav_accuracy=accuracy,
                      random_cav_accuracy=random_accuracy, n_class_examples=int(gradients.shape[0]),
                      settings=config.to_dict(), null_scores=null_scores, null_p_value=null_p,
                      significant_against_null=null_p < config.alpha)


def random_sets(pool_size: int, size: int, count: int, seed: int) -> list[Tensor]:
    """`count` seeded random index sets of `size` distinct rows of a pool of `pool_size` (sets may overlap).

    Example:
        >>> [s.tolist() for s in random_sets(5, 2, 2, seed=0)]
        [[0, 4], [3, 4]]
    """
    if size > pool_size:
        raise ValueError(f"random sets of {size} examples need a pool of at least {size}, got {pool_size}; "
                         "give a larger random pool or set random_size lower")
    generator = make_generator(seed)
    return [torch.randperm(pool_size, generator=generator)[:size].sort().values for _ in range(count)]


def tcav(loaded: LoadedModel, target: str, site: str, concept: Examples, random_pool: Examples,
         class_examples: Examples, config: TCAVConfig | None = None, *, sources: dict[str, str] | None = None,
         **overrides: Any) -> TCAVResult:
    """TCAV of `target` (a class logit `logits:K`, or a token's logit on a language model, read at the last token)
    on the concept given by `concept` examples, at `site`; random sets are drawn from `random_pool` (which should
    not hold the concept's examples) and the scores are taken over `class_examples`.

    Example:
        >>> from dreamy.models import load
        >>> cnn = load("tiny:cnn")
        >>> gen = torch.Generator().manual_seed(0)
        >>> bright = torch.rand(12, 3, 32, 32, generator=gen) * 0.5 + 0.5
        >>> pool = torch.rand(40, 3, 32, 32, generator=gen) * 0.5
        >>> result = tcav(cnn, "logits:0", "conv3", bright, pool, torch.rand(8, 3, 32, 32, generator=gen))
        >>> len(result.scores), 0.0 <= result.p_value <= 1.0
        (10, True)
    """
    config = TCAVConfig.build(config, **overrides)
    where = str(bare_site(site))
    reduce = default_reduce(loaded, config.reduce)
    if reduce == "max":
        raise ValueError("TCAV reads the gradient at fixed positions; reduce='max' has none, use 'mean' or 'center'")
    concept_features = site_features(loaded, where, concept, reduce, config.batch_size)
    pool_features = site_features(loaded, where, random_pool, reduce, config.batch_size)
    size = config.random_size or concept_features.shape[0]
    picks = random_sets(pool_features.shape[0], size, config.random_runs + config.null_concepts, config.seed)
    gradients = target_gradients(loaded, target, where, class_examples, reduce, config.batch_size)
    result = tcav_test(concept_features, [pool_features[p] for p in picks], gradients, config)
    result.target, result.site, result.model, result.reduce = target, where, loaded.name, reduce
    result.sources = dict(sources or {})
    return result


__all__ = ["TCAVResult", "incomplete_beta", "prediction_t_test", "random_sets", "t_test", "tcav", "tcav_score", "tcav_test"]
