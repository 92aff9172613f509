"""Transforms draw independently per batch item, keep the shape and are reproducible."""

import math

import pytest
import torch

from dreamy.vision.transforms import Transforms, affine_theta

EACH_KIND = (Transforms(jitter=4), Transforms(scale=(0.8, 1.2)), Transforms(rotate=20), Transforms(crop=0.6),
             Transforms(noise=0.1), Transforms(pad=4, jitter=2))


@pytest.mark.parametrize("transform", EACH_KIND, ids=repr)
@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_each_item_gets_its_own_draw_and_keeps_its_shape(transform, size):
    image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)).expand(6, -1, -1, -1).contiguous()
    out = transform(image, torch.Generator().manual_seed(0))
    assert out.shape == image.shape
    distinct = {tuple(out[i].flatten()[:200].tolist()) for i in range(6)}
    assert len(distinct) == 6


def test_same_generator_seed_same_output():
    images = torch.rand(3, 3, 16, 16)
    t = Transforms(pad=2, jitter=2, scale=(0.9, 1.1), rotate=10, crop=0.8, noise=0.05)
    assert torch.equal(t(images, torch.Generator().manual_seed(1)), t(images, torch.Generator().manual_seed(1)))
    assert not torch.equal(t(images, torch.Generator().manual_seed(1)), t(images, torch.Generator().manual_seed(2)))


def test_identity_transforms_leave_images_alone():
    images = torch.rand(2, 3, 16, 16)
    assert Transforms().is_identity and torch.equal(Transforms()(images, torch.Generator()), images)
    padded_only = Transforms(pad=3)(images, torch.Generator())
    torch.testing.assert_close(padded_only, images, atol=1e-4, rtol=0)  # grid_sample rounds (~1e-6 here); a shift would be ~0.1


def test_jitter_shifts_content_by_whole_pixels_when_it_draws_them():
    # a jitter draw is uniform in [-j, j]; with the image a single bright pixel, the centre of mass moves
    image = torch.zeros(64, 3, 33, 33)
    image[:, :, 16, 16] = 1.0
    out = Transforms(jitter=4)(image, torch.Generator().manual_seed(0))
    ys, xs = torch.meshgrid(torch.arange(33.0), torch.arange(33.0), indexing="ij")
    mass = out[:, 0].sum(dim=(1, 2))
    cx = (out[:, 0] * xs).sum(dim=(1, 2)) / mass - 16
    assert cx.abs().max() <= 4.01 and cx.min() < -1 and cx.max() > 1  # symmetric, within range


def test_rotation_is_rigid_on_non_square_images():
    h, w = 20, 40
    theta = affine_theta(torch.tensor([math.pi / 2]), torch.ones(1), torch.zeros(1), torch.zeros(1), (h, w), (h, w))[0]
    dx = 6.0  # an output pixel 6 px right of the centre ...
    source = theta @ torch.tensor([2 * dx / w, 0.0, 1.0])
    source_pixels = source * torch.tensor([w / 2, h / 2])
    torch.testing.assert_close(source_pixels, torch.tensor([0.0, dx]))  # ... reads the pixel 6 px below it


def test_crop_and_resize_magnifies():
    stripes = (torch.arange(32.0) % 2).expand(4, 3, 32, 32).contiguous()
    cropped = Transforms(crop=0.5)(stripes, torch.Generator().manual_seed(0))
    # fewer stripe edges survive after zooming in
    edges = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()
    assert edges(cropped) < 0.8 * edges(stripes)


def test_transforms_pass_gradients():
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    Transforms.standard((16, 16))(images, torch.Generator().manual_seed(0)).sum().backward()
    assert images.grad.abs().sum() > 0


def test_standard_set_scales_with_image_size():
    assert Transforms.standard((224, 224)).pad == 12 and Transforms.standard((224, 224)).jitter == 8
    assert Transforms.standard((32, 32)).pad < 12


@pytest.mark.parametrize("bad", [dict(pad=-1), dict(scale=(1.2, 0.8)), dict(crop=0.0), dict(noise=-0.1)])
def test_bad_settings_are_rejected(bad):
    with pytest.raises(ValueError):
        Transforms(**bad)
