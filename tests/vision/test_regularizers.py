"""Regularizers penalize what they claim to, and diversity pushes same-target images apart."""

import pytest
import torch

from dreamy.vision import regularizers as regs
from dreamy.vision.render import dream

PENALTIES = (regs.l1, regs.l2, regs.total_variation, regs.blur, regs.center_bias)


def test_known_values():
    ones = torch.ones(1, 3, 4, 4)
    assert regs.l1(ones).item() == pytest.approx(0.5)
    assert regs.l2(ones).item() == pytest.approx(0.5)
    stripes = (torch.arange(4.0) % 2).expand(1, 3, 4, 4)  # columns 0 1 0 1
    assert regs.total_variation(stripes).item() == pytest.approx(1.0)  # every horizontal step is 1, vertical 0


def test_penalties_order_images_sensibly():
    grey = torch.full((1, 3, 16, 16), 0.5)
    noise = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    smooth = torch.linspace(0, 1, 16).expand(1, 3, 16, 16)
    for penalty in PENALTIES:
        assert penalty(grey).item() < 1e-6 < penalty(noise).item(), penalty.__name__
    assert regs.total_variation(smooth) < regs.total_variation(noise)
    assert regs.blur(smooth) < regs.blur(noise)


@pytest.mark.parametrize("penalty", PENALTIES, ids=lambda f: f.__name__)
def test_gradient_step_lowers_each_penalty_row_by_row(penalty):
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    values = penalty(images)
    assert values.shape == (3,)
    values.sum().backward()
    grad = images.grad
    assert torch.isfinite(grad).all() and (grad.flatten(1).abs().sum(dim=1) > 0).all()
    with torch.no_grad():
        assert (penalty(images - 0.01 * grad / grad.abs().max()) < values).all()


def test_center_bias_prefers_centred_content():
    centred = torch.full((1, 3, 16, 16), 0.5)
    centred[..., 6:10, 6:10] = 1.0
    corner = torch.full((1, 3, 16, 16), 0.5)
    corner[..., :4, :4] = 1.0
    assert regs.center_bias(centred) < regs.center_bias(corner)


def test_pull_is_zero_at_the_start_and_grows_away():
    start = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pull = regs.pull_to(start)
    assert torch.equal(pull(start), torch.zeros(2))
    assert (pull(start + 0.2) > pull(start + 0.1)).all()
    with pytest.raises(ValueError, match="resize"):
        pull(torch.rand(2, 3, 4, 4))


def test_regularizer_weight_shapes_the_dream(tiny_cnn):
    plain = dream(tiny_cnn, ["conv3:2"], param="pixel", steps=20, progress=False)
    smooth = dream(tiny_cnn, ["conv3:2"], param="pixel", steps=20, progress=False, regularizers={"tv": 50.0})
    assert regs.total_variation(smooth.images) < regs.total_variation(plain.images)


def test_diversity_only_compares_rows_of_the_same_target():
    acts = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    alone = regs.diversity(acts, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(alone, torch.zeros(4))
    rows = torch.tensor([0, 0, 1, 1])
    changed = acts.clone()
    changed[2:] = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    before, after = regs.diversity(acts, rows), regs.diversity(changed, rows)
    assert torch.equal(before[:2], after[:2]) and not torch.equal(before[2:], after[2:])


def test_diversity_is_gram_cosine_similarity():
    acts = torch.rand(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    g = acts.flatten(2) @ acts.flatten(2).transpose(1, 2)
    expected = torch.nn.functional.cosine_similarity(g[0].flatten(), g[1].flatten(), dim=0)
    torch.testing.assert_close(regs.diversity(acts, torch.tensor([0, 0])), expected.repeat(2))
    assert regs.gram(torch.rand(2, 5)).shape == (2, 5, 5)  # vectors (e.g. logits) work too


def mean_pairwise_distance(images):
    """1 - mean Pearson correlation between the rows' pixels (the cosine distance of centred images)."""
    flat = images.flatten(1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    flat = flat / flat.norm(dim=1, keepdim=True)
    n = len(flat)
    return 1 - ((flat @ flat.T).sum() - n) / (n * (n - 1))


def test_diversity_weight_spreads_the_batch(tiny_cnn):
    kwargs = dict(param="pixel", steps=40, n_per_target=4, progress=False, seed=3)
    distances = [mean_pairwise_distance(dream(tiny_cnn, ["conv3:1"], diversity=w, **kwargs).images) for w in (0.0, 1.0, 3.0)]
    assert distances[0] < distances[1] < distances[2]
