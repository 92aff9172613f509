"""Regularizers penalize what they claim to, and diversity pushes same-target images apart."""

import torch

from dreamy.vision import regularizers as regs
from dreamy.vision.render import dream


def test_penalties_order_images_sensibly():
    grey = torch.full((1, 3, 16, 16), 0.5)
    noise = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    smooth = torch.linspace(0, 1, 16).expand(1, 3, 16, 16)
    for penalty in (regs.l1, regs.l2, regs.total_variation, regs.blur):
        assert penalty(grey).item() < 1e-6 < penalty(noise).item(), penalty.__name__
    assert regs.total_variation(smooth) < regs.total_variation(noise)
    assert regs.blur(smooth) < regs.blur(noise)


def test_center_bias_prefers_centred_content():
    centred = torch.full((1, 3, 16, 16), 0.5)
    centred[..., 6:10, 6:10] = 1.0
    corner = torch.full((1, 3, 16, 16), 0.5)
    corner[..., :4, :4] = 1.0
    assert regs.center_bias(centred) < regs.center_bias(corner)


def test_regularizer_weight_shapes_the_dream(tiny_cnn):
    plain = dream(tiny_cnn, ["conv3:2"], param="pixel", steps=20, progress=False)
    smooth = dream(tiny_cnn, ["conv3:2"], param="pixel", steps=20, progress=False, regularizers={"tv": 50.0})
    assert regs.total_variation(smooth.images) < regs.total_variation(plain.images)


def test_diversity_only_compares_rows_of_the_same_target():
    acts = torch.rand(3, 4, 5, 5)
    alone = regs.diversity(acts, torch.tensor([0, 1, 2]))
    assert torch.equal(alone, torch.zeros(3))


def mean_pairwise_distance(images):
    flat = images.flatten(1)
    d = torch.cdist(flat, flat)
    n = len(flat)
    return d.sum() / (n * (n - 1))


def test_diversity_weight_spreads_the_batch(tiny_cnn):
    kwargs = dict(param="pixel", steps=40, n_per_target=4, progress=False, seed=3)
    low = dream(tiny_cnn, ["conv2:3"], diversity=0.0, **kwargs)
    high = dream(tiny_cnn, ["conv2:3"], diversity=50.0, **kwargs)
    assert mean_pairwise_distance(high.images) > mean_pairwise_distance(low.images)
