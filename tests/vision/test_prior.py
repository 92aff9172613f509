"""The deep image prior: a generator's weights are what is optimized; seeded; rows independent; it raises its target."""

import pytest
import torch

from dreamy.vision.param import make_param
from dreamy.vision.prior import DeepImagePrior, _stage_sizes
from dreamy.vision.render import dream
from dreamy.vision.transforms import Transforms


def test_the_generator_weights_are_the_optimized_parameters(tiny_cnn):
    prior = DeepImagePrior(1, (32, 32), generator=torch.Generator().manual_seed(0), channels=(16, 8))
    weights = [p.detach().clone() for p in prior.parameters()]
    noise = prior.input.detach().clone()
    assert not prior.input.requires_grad and all(p.requires_grad for p in prior.parameters())
    assert prior.count() == sum(w.numel() for w in weights) > 1000  # weights, not pixels or a latent code
    dream(tiny_cnn, ["head:3"], param=prior, steps=3, progress=False)
    assert all(not torch.equal(before, after.detach()) for before, after in zip(weights, prior.parameters()))
    assert torch.equal(prior.input.detach(), noise)  # the input stays fixed


def test_optimize_input_also_moves_the_noise(tiny_cnn):
    prior = DeepImagePrior(1, (32, 32), generator=torch.Generator().manual_seed(0), channels=(8,), optimize_input=True)
    noise = prior.input.detach().clone()
    dream(tiny_cnn, ["head:3"], param=prior, steps=2, progress=False)
    assert not torch.equal(prior.input.detach(), noise)


def test_same_seed_same_dream_and_other_seeds_differ(tiny_cnn):
    kwargs = dict(param="dip", steps=4, progress=False, transforms=Transforms.standard((32, 32)))
    a = dream(tiny_cnn, ["conv3:1", "head:2"], seed=3, **kwargs)
    b = dream(tiny_cnn, ["conv3:1", "head:2"], seed=3, **kwargs)
    c = dream(tiny_cnn, ["conv3:1", "head:2"], seed=4, **kwargs)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    noisy = dict(kwargs, param=None)
    make = lambda seed: DeepImagePrior(2, (32, 32), generator=torch.Generator().manual_seed(seed), input_noise=0.05)  # noqa: E731
    d = dream(tiny_cnn, ["conv3:1", "head:2"], seed=3, **{**noisy, "param": make(0)})
    e = dream(tiny_cnn, ["conv3:1", "head:2"], seed=3, **{**noisy, "param": make(0)})
    assert torch.equal(d.images, e.images)


def test_rows_are_independent_generators():
    prior = DeepImagePrior(2, (16, 16), generator=torch.Generator().manual_seed(0), channels=(8, 8))
    first = prior.images().detach()
    with torch.no_grad():
        for layer in prior.layers:
            weight = layer["weight"]
            weight[weight.shape[0] // 2:] += 1.0  # change only row 1's generator
    second = prior.images().detach()
    assert torch.equal(first[0], second[0]) and not torch.equal(first[1], second[1])


def test_a_class_logit_rises(tiny_cnn):
    result = dream(tiny_cnn, ["head:4", "head:7"], param="dip", steps=25, lr=0.05, seed=0, progress=False)
    start = make_param("dip", 2, (32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = tiny_cnn.model(tiny_cnn.preprocess.normalize(start.images()))[[0, 1], [4, 7]]
    assert bool((result.activation > before + 0.5).all()), (before, result.activation)


def test_any_size_works_and_bad_settings_are_explained():
    assert _stage_sizes((30, 45), 2) == [(8, 12), (15, 23), (30, 45)]
    assert DeepImagePrior(1, (30, 45), generator=torch.Generator().manual_seed(0)).images().shape == (1, 3, 30, 45)
    with pytest.raises(ValueError, match="channels"):
        DeepImagePrior(1, (8, 8), generator=torch.Generator(), channels=())
    with pytest.raises(ValueError, match="input_noise"):
        DeepImagePrior(1, (8, 8), generator=torch.Generator(), input_noise=-1)
