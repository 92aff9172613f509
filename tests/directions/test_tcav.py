"""dreamy/directions/tcav.py: TCAV scores, the paper's t-test against random CAVs, the model-level run."""

import math

import pytest
import torch

from dreamy.directions import TCAVConfig, tcav, tcav_score, tcav_test
from dreamy.directions.tcav import incomplete_beta, prediction_t_test, random_sets, t_test


def synthetic(dependence=1.0, seed=0, d=32):
    gen = torch.Generator().manual_seed(seed)
    planted = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)
    concept = torch.randn(50, d, generator=gen) + 3 * planted
    randoms = [torch.randn(50, d, generator=gen) for _ in range(20)]  # 10 counterparts, then 10 stand-ins
    # the class logit's gradient at the site: along the concept (times dependence) plus unrelated directions
    gradients = dependence * planted + 0.3 * torch.randn(80, d, generator=gen)
    return concept, randoms, gradients


def test_a_planted_dependence_scores_near_one_and_is_significant():
    concept, randoms, gradients = synthetic(dependence=1.0)
    result = tcav_test(concept, randoms, gradients)
    assert result.score > 0.95 and min(result.scores) > 0.9
    assert result.significant and result.p_value < 1e-4
    assert result.significant_against_null and result.null_p_value < 0.01
    assert len(result.scores) == len(result.random_scores) == len(result.null_scores) == 10
    # the concept's CAVs tell it from random sets on held-out examples; random sets' CAVs are near chance
    assert sum(result.cav_accuracy) / 10 > 0.8 > 0.65 > sum(result.random_cav_accuracy) / 10
    assert result.null_scores[0] == pytest.approx(sum(result.random_scores) / 10)  # the paper's null is stand-in 0


def test_a_planted_negative_dependence_scores_near_zero():
    concept, randoms, gradients = synthetic(dependence=-1.0)
    result = tcav_test(concept, randoms, gradients)
    assert result.score < 0.05 and result.significant and result.significant_against_null


def test_a_random_concept_is_not_significant():
    _, randoms, gradients = synthetic()
    fake = torch.randn(50, 32, generator=torch.Generator().manual_seed(9))  # drawn like the random sets
    result = tcav_test(fake, randoms, gradients)
    assert not result.significant_against_null and result.null_p_value > 0.05
    record = result.to_records()[0]
    assert record["random_score"] == pytest.approx(sum(result.random_scores) / 10)
    assert record["null_p_value"] == result.null_p_value and record["p_value"] == result.p_value


def test_random_concepts_are_called_significant_at_about_alpha_against_the_null():
    """The paper's t-test treats the concept's runs as independent, so it calls random "concepts" significant far
    more often than alpha; the test against stand-in concepts stays near alpha (16 seeded random concepts)."""
    paper = calibrated = 0
    for seed in range(16):
        _, randoms, gradients = synthetic(seed=100 + seed, d=16)
        fake = torch.randn(50, 16, generator=torch.Generator().manual_seed(500 + seed))
        result = tcav_test(fake, randoms, gradients, steps=50)
        paper += result.significant
        calibrated += result.significant_against_null
    assert calibrated <= 3 < paper


def test_tcav_score_counts_positive_directional_derivatives():
    gradients = torch.tensor([[1.0, 0.0], [-1.0, 0.5], [0.5, -2.0], [0.0, 1.0]])
    assert tcav_score(gradients, torch.tensor([1.0, 0.0])) == 0.5
    assert tcav_score(gradients, torch.tensor([0.0, 1.0])) == 0.5
    assert tcav_score(gradients, torch.tensor([1.0, 1.0])) == 0.5
    assert tcav_score(gradients, torch.tensor([1.0, -1.0])) == 0.5
    assert tcav_score(gradients, torch.tensor([0.0, -1.0])) == 0.25  # a zero derivative is not positive


def test_the_t_test_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    gen = torch.Generator().manual_seed(0)
    for shift in (0.0, 0.3, 1.5):
        a = torch.rand(10, generator=gen).tolist()
        b = (torch.rand(12, generator=gen) + shift).tolist()
        t, p = t_test(a, b)
        reference = stats.ttest_ind(a, b)
        assert t == pytest.approx(reference.statistic, rel=1e-9)
        assert p == pytest.approx(reference.pvalue, rel=1e-7, abs=1e-12)
    for a, b, x in ((0.5, 0.5, 0.3), (9.0, 0.5, 0.97), (2.0, 7.0, 0.01)):
        assert incomplete_beta(a, b, x) == pytest.approx(float(special.betainc(a, b, x)), rel=1e-10)
    t, p = prediction_t_test(0.9, [0.5, 0.6, 0.4, 0.55, 0.45])
    sd = float(torch.tensor([0.5, 0.6, 0.4, 0.55, 0.45]).std())
    assert t == pytest.approx(0.4 / (sd * math.sqrt(1.2)))
    assert p == pytest.approx(2 * float(stats.t.sf(t, 4)), rel=1e-8)
    assert t_test([1.0, 1.0], [1.0, 1.0]) == (None, 1.0)
    assert t_test([1.0, 1.0], [0.0, 0.0]) == (None, 0.0)


def test_random_sets_are_seeded_and_distinct_within_a_set():
    sets = random_sets(30, 10, 11, seed=3)
    assert len(sets) == 11 and all(len(set(s.tolist())) == 10 for s in sets)
    assert all(torch.equal(a, b) for a, b in zip(sets, random_sets(30, 10, 11, seed=3)))
    with pytest.raises(ValueError, match="pool of at least 40"):
        random_sets(30, 40, 2, seed=0)


def test_the_test_refuses_too_few_random_runs():
    with pytest.raises(Exception, match="random_runs must be >= 10"):
        TCAVConfig(random_runs=5)
    concept, randoms, gradients = synthetic()
    with pytest.raises(ValueError, match="needs random_runs \\+ null_concepts = 20 random sets"):
        tcav_test(concept, randoms[:19], gradients)


def test_tcav_on_a_model_through_a_linear_head(tiny_cnn):
    """At the pooled features the class gradient is the head's row for every image, so each CAV scores 1 or 0:
    whether it points along that row."""
    gen = torch.Generator().manual_seed(0)
    concept = torch.rand(10, 3, 32, 32, generator=gen) * 0.4 + 0.6
    pool = torch.rand(30, 3, 32, 32, generator=gen) * 0.5
    result = tcav(tiny_cnn, "logits:2", "pool", concept, pool, torch.rand(6, 3, 32, 32, generator=gen), seed=1)
    assert set(result.scores) <= {0.0, 1.0} and set(result.random_scores) <= {0.0, 1.0}
    assert result.score == pytest.approx(sum(result.scores) / 10)
    assert (result.target, result.site, result.model, result.reduce) == ("logits:2", "pool", "tiny:cnn", "mean")
    assert 0.0 <= result.p_value <= 1.0 and math.isfinite(result.p_value)
    with pytest.raises(ValueError, match="reduce='max' has none"):
        tcav(tiny_cnn, "logits:2", "conv3", concept, pool, concept, reduce="max")
