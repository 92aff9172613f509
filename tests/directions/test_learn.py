"""dreamy/directions/learn.py: the three methods recover a planted direction, held-out accuracy, pairs, cosines."""

import math

import pytest
import torch

from dreamy.directions import DirectionConfig, direction_from_examples, learn_direction
from dreamy.directions.learn import fit_logistic, mean_difference, paired_pca, split_indices


def planted_sets(n=2000, d=32, shift=3.0, seed=0, paired=True):
    gen = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)
    base = torch.randn(n, d, generator=gen)
    if paired:  # pair i: the same sentence (base[i]) with and without the concept, plus a little noise each
        positive = base + shift * direction + 0.5 * torch.randn(n, d, generator=gen)
        negative = base + 0.5 * torch.randn(n, d, generator=gen)
    else:
        positive = torch.randn(n, d, generator=gen) + shift * direction
        negative = torch.randn(n // 2, d, generator=gen)
    return positive, negative, direction


def test_every_method_recovers_a_planted_direction():
    positive, negative, planted = planted_sets()
    result = learn_direction(positive, negative)
    for method in ("logistic", "mean_diff", "pca"):
        assert float(result.directions[method] @ planted) > 0.99, method
        assert float(result.directions[method].norm()) == pytest.approx(1.0, abs=1e-5)
    for pair, cosine in result.cosines.items():
        a, b = pair.split("/")
        assert cosine == pytest.approx(float(result.directions[a] @ result.directions[b]), abs=1e-6)
        assert cosine > 0.98


def test_unpaired_sets_recover_the_direction_and_refuse_pca():
    positive, negative, planted = planted_sets(n=4000, d=16, paired=False)
    result = learn_direction(positive, negative, methods=("logistic", "mean_diff"))
    assert not result.paired
    assert float(result.directions["logistic"] @ planted) > 0.99
    assert float(result.directions["mean_diff"] @ planted) > 0.99
    with pytest.raises(ValueError, match="pca needs paired examples"):
        learn_direction(positive, negative)


def test_heldout_accuracy_is_what_the_overlap_of_the_classes_allows():
    # unit-variance classes 3 apart along the direction: the midpoint rule is right with probability Phi(1.5)
    positive, negative, _ = planted_sets(n=4000, d=8, paired=False)
    negative = torch.randn(4000, 8, generator=torch.Generator().manual_seed(5))
    result = learn_direction(positive, negative, methods=("logistic", "mean_diff"), heldout=0.5)
    expected = 0.5 * (1 + math.erf(1.5 / math.sqrt(2)))
    for method in ("logistic", "mean_diff"):
        assert result.heldout_accuracy[method] == pytest.approx(expected, abs=0.02)
    assert result.counts["heldout_positive"] == 2000 and result.counts["fitted_negative"] == 2000


def test_the_accuracy_counts_examples_on_the_right_side_of_the_threshold():
    positive, negative, _ = planted_sets(n=200, d=4)
    result = learn_direction(positive, negative, heldout=0.0)
    for method in result.methods:
        u, t = result.directions[method], result.thresholds[method]
        right = int((positive @ u > t).sum()) + int((negative @ u <= t).sum())
        assert result.train_accuracy[method] == pytest.approx(right / 400)
    assert result.heldout_accuracy == {m: None for m in result.methods}


def test_pairs_are_held_out_together():
    positive = torch.arange(20.0)[:, None].repeat(1, 3)
    negative = positive.clone() - 100
    result = learn_direction(positive, negative, methods=("mean_diff",), heldout=0.25)
    assert result.paired and result.counts["heldout_pairs"] == 5
    fit, held = split_indices(20, 0.25, torch.Generator().manual_seed(0))
    assert sorted(fit.tolist() + held.tolist()) == list(range(20)) and len(held) == 5


def test_an_explicit_test_set_is_used_for_the_accuracy():
    positive, negative, planted = planted_sets(n=300, d=8)
    same = learn_direction(positive, negative, methods=("mean_diff",), test=(positive[:50], negative[:50]))
    flipped = learn_direction(positive, negative, methods=("mean_diff",), test=(negative[:50], positive[:50]))
    assert same.counts["fitted_positive"] == 300 and same.counts["heldout_positive"] == 50
    assert torch.equal(same.directions["mean_diff"], flipped.directions["mean_diff"])  # fitted on all examples
    assert same.heldout_accuracy["mean_diff"] > 0.75
    assert flipped.heldout_accuracy["mean_diff"] == pytest.approx(1 - same.heldout_accuracy["mean_diff"])


def test_logistic_regression_agrees_with_scikit_learn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 6, generator=gen) * torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    y = (x @ torch.tensor([1.0, -1.0, 2.0, 0.0, 0.3, 0.0]) + 0.5 * torch.randn(300, generator=gen) > 0.2).long()
    u, threshold = fit_logistic(x, y, l2=0.0, steps=500)
    reference = linear_model.LogisticRegression(C=1e6, max_iter=5000).fit(x.numpy(), y.numpy())
    w = torch.tensor(reference.coef_[0], dtype=torch.float32)
    assert float(u @ w / w.norm()) > 0.999
    assert threshold == pytest.approx(-float(reference.intercept_[0]) / float(w.norm()), rel=0.01, abs=0.01)


def test_mean_difference_and_pca_by_hand():
    positive = torch.tensor([[2.0, 0.0], [4.0, 2.0]])
    negative = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert mean_difference(positive, negative).tolist() == [1.0, 0.0]
    assert paired_pca(positive, negative).tolist() == pytest.approx([1.0, 0.0])
    assert paired_pca(negative, positive).tolist() == pytest.approx([-1.0, 0.0])  # oriented towards the positives
    with pytest.raises(ValueError, match="same mean"):
        mean_difference(positive, positive)


def test_bad_inputs_say_what_to_fix():
    with pytest.raises(ValueError, match="at least 2 examples"):
        learn_direction(torch.ones(1, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="same D"):
        learn_direction(torch.ones(4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="NaN"):
        learn_direction(torch.full((4, 3), float("nan")), torch.zeros(4, 3))
    with pytest.raises(Exception, match="unknown DirectionConfig setting 'method'"):
        learn_direction(torch.ones(4, 3), torch.zeros(4, 3), method="pca")


def test_from_examples_records_where_the_direction_came_from(tiny_lm):
    good = ["I loved it.", "What a joy.", "Great fun.", "So good.", "Very nice."]
    bad = ["I hated it.", "What a bore.", "Awful mess.", "So bad.", "Very vile."]
    result = direction_from_examples(tiny_lm, "model.layers.1", good, bad, DirectionConfig(reduce="pos=-1"),
                                     heldout_examples=(good[:2], bad[:2]))
    assert (result.site, result.model, result.reduce) == ("model.layers.1", "tiny:lm", "pos=-1")
    assert result.sources == {"positive": "5 texts", "negative": "5 texts"}
    assert result.counts["heldout_positive"] == 2 and result.counts["fitted_positive"] == 5
    record = result.to_records()[1]
    assert record["method"] == "mean_diff" and set(record["cosines"]) == {"logistic", "pca"}
    assert record["cosines"]["pca"] == result.cosines["mean_diff/pca"]
    with pytest.raises(ValueError, match="bare site"):
        direction_from_examples(tiny_lm, "model.layers.1:3", good, bad)


def test_image_examples_learn_a_direction(tiny_cnn):
    gen = torch.Generator().manual_seed(0)
    red = torch.rand(12, 3, 32, 32, generator=gen) * 0.3
    red[:, 0] += 0.7
    blue = torch.rand(12, 3, 32, 32, generator=gen) * 0.3
    blue[:, 2] += 0.7
    result = direction_from_examples(tiny_cnn, "conv2", red, blue, methods=("logistic", "mean_diff"), heldout=0.25)
    assert result.directions["logistic"].shape == (16,)
    assert result.heldout_accuracy["mean_diff"] == 1.0
