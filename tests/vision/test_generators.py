"""Generator priors: any generator's latent can be dreamed, with DGN-AM clipping and decay."""

import pytest
import torch
from torch import nn

from dreamy.vision.generators import GeneratorParam, RandomDecoder
from dreamy.vision.render import dream


def small_generator():
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 3 * 32 * 32), nn.Sigmoid(), nn.Unflatten(1, (3, 32, 32)))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return net.requires_grad_(False)


def test_any_generator_latent_is_dreamed_with_clipping(tiny_cnn):
    param = GeneratorParam(small_generator(), (8,), n=1, generator=torch.Generator().manual_seed(1), clip=(-2, 2), decay=0.01)
    start = param.latent.detach().clone()
    result = dream(tiny_cnn, ["head:4"], param=param, steps=25, lr=0.1, progress=False)
    assert not torch.equal(param.latent.detach(), start)
    assert param.latent.detach().abs().max() <= 2.0
    assert result.history[-3:].mean() > result.history[:2].mean()


def test_decay_shrinks_the_code():
    param = GeneratorParam(small_generator(), (8,), n=2, generator=torch.Generator().manual_seed(0), decay=0.5)
    before = param.latent.detach().norm()
    param.after_step()
    assert torch.isclose(param.latent.detach().norm(), before * 0.5)


def test_random_decoder_is_seeded_and_untrained():
    a = RandomDecoder((32, 32), generator=torch.Generator().manual_seed(0))
    b = RandomDecoder((32, 32), generator=torch.Generator().manual_seed(0))
    z = torch.randn(1, *a.latent_shape)
    assert torch.equal(a(z), b(z)) and not any(p.requires_grad for p in a.parameters())


def test_random_decoder_rows_do_not_interact():
    prior = RandomDecoder((32, 32), generator=torch.Generator().manual_seed(0))
    z = torch.randn(2, *prior.latent_shape, generator=torch.Generator().manual_seed(1))
    changed = z.clone()
    changed[1] = torch.randn(prior.latent_shape, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(prior(z)[0], prior(changed)[0])


def test_output_range_maps_a_tanh_generator_into_unit_range():
    net = nn.Sequential(nn.Linear(4, 3 * 4 * 4), nn.Tanh(), nn.Unflatten(1, (3, 4, 4))).requires_grad_(False)
    param = GeneratorParam(net, (4,), n=3, generator=torch.Generator().manual_seed(0), output_range=(-1, 1))
    raw = net(param.latent.detach())
    torch.testing.assert_close(param.images().detach(), (raw + 1) / 2)


def test_bad_generator_settings_are_explained():
    with pytest.raises(ValueError, match="decay"):
        GeneratorParam(small_generator(), (8,), n=1, generator=torch.Generator(), decay=1.5)
    with pytest.raises(ValueError, match=r"\[n, 3, H, W\]"):
        GeneratorParam(nn.Linear(8, 5), (8,), n=1, generator=torch.Generator()).images()
