"""Every parametrization gives valid images and can raise a target on its own."""

import pytest
import torch

from dreamy.vision.param import COLOR_CORRELATION_SQRT, FourierParam, ImageParam, MacoParam, magnitude_of, make_param
from dreamy.vision.render import dream


@pytest.mark.parametrize("name", ["pixel", "fourier", "maco", "dip", "decoder"])
def test_parametrization_gives_valid_images(name):
    param = make_param(name, 3, (32, 32), generator=torch.Generator().manual_seed(0))
    images = param.images()
    assert images.shape == (3, 3, 32, 32)
    assert images.min() >= 0 and images.max() <= 1
    images.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in param.parameters())


@pytest.mark.parametrize("name", ["pixel", "fourier", "maco", "dip", "decoder"])
def test_parametrization_raises_its_target(tiny_cnn, name):
    result = dream(tiny_cnn, ["conv3:5"], param=name, steps=30, lr=0.05, progress=False)
    assert result.history[-5:].mean() > result.history[:2].mean()


def spectrum_before_the_sigmoid(images: torch.Tensor) -> torch.Tensor:
    """|rfft2| of a MACO image undone back to its standardized signal (inverse sigmoid, inverse colour mixing)."""
    matrix = COLOR_CORRELATION_SQRT / COLOR_CORRELATION_SQRT.norm(dim=0).max()
    signal = torch.einsum("ij,njhw->nihw", torch.linalg.inv(matrix.double()), torch.logit(images.double()))
    return torch.fft.rfft2(signal, norm="ortho").abs()


def test_maco_images_keep_the_fixed_magnitude_spectrum_while_the_phase_moves():
    h, w = 16, 16
    magnitude = torch.rand(3, h, w // 2 + 1, generator=torch.Generator().manual_seed(1)) + 0.5  # not a power law
    param = MacoParam(2, (h, w), generator=torch.Generator().manual_seed(0), magnitude=magnitude)
    phase = param.phase.detach().clone()
    opt = torch.optim.Adam(param.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        param.images()[:, 0, :4].mean().neg().backward()  # brighten the top rows of the red channel
        opt.step()
    assert param.parameters() == [param.phase] and (param.phase - phase).abs().max() > 0.1
    # columns 1..W/2-1 of a real FFT are untouched by irfft2's symmetry; the standardization only
    # rescales each image channel, so the spectrum there is the fixed magnitude times one number each
    ratio = spectrum_before_the_sigmoid(param.images().detach())[..., 1:w // 2] / magnitude[..., 1:w // 2]
    torch.testing.assert_close(ratio / ratio.mean(dim=(2, 3), keepdim=True), torch.ones_like(ratio), atol=1e-3, rtol=0)


def test_maco_takes_a_dataset_magnitude():
    photos = torch.rand(4, 3, 16, 16)
    param = MacoParam(1, (16, 16), generator=torch.Generator().manual_seed(0), magnitude=magnitude_of(photos))
    assert param.images().shape == (1, 3, 16, 16)


def test_fourier_starts_near_grey_and_low_frequency():
    images = FourierParam(2, (32, 32), generator=torch.Generator().manual_seed(0)).images()
    assert (images - 0.5).abs().max() < 0.05


def test_image_param_starts_from_the_photo_and_pull_keeps_it_near(tiny_cnn):
    start = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.1
    assert torch.allclose(ImageParam(start).images(), start, atol=1e-4)
    kwargs = dict(steps=30, lr=0.1, progress=False)
    free = dream(tiny_cnn, ["conv3:1"], param=ImageParam(start), **kwargs)
    pulled = dream(tiny_cnn, ["conv3:1"], param=ImageParam(start), regularizers={"pull": 20.0}, **kwargs)
    assert free.history[-3:].mean() > free.history[:2].mean()
    assert (pulled.images - start).pow(2).mean() < 0.5 * (free.images - start).pow(2).mean()
    assert pulled.settings["regularizers"] == {"pull": 20.0}


def test_pull_needs_a_start_image(tiny_cnn):
    with pytest.raises(ValueError, match="ImageParam"):
        dream(tiny_cnn, ["head:0"], param="pixel", steps=1, regularizers={"pull": 1.0}, progress=False)


@pytest.mark.parametrize("images, match", [(torch.rand(3, 32, 32), "shape"), (torch.rand(1, 3, 8, 8) * 255, "255")])
def test_image_param_rejects_bad_images(images, match):
    with pytest.raises(ValueError, match=match):
        ImageParam(images)


def test_bad_sizes_and_magnitudes_are_explained():
    with pytest.raises(ValueError, match="n >= 1"):
        make_param("fourier", 0, (8, 8), generator=torch.Generator())
    with pytest.raises(ValueError, match="magnitude_of"):
        MacoParam(1, (16, 16), generator=torch.Generator(), magnitude=torch.ones(3, 8, 5))


def test_unknown_parametrization_lists_the_choices():
    with pytest.raises(ValueError, match="pixel, fourier, maco"):
        make_param("wavelet", 1, (8, 8), generator=torch.Generator())
