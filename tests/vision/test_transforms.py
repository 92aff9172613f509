"""Transforms draw independently per batch item, keep the shape and are reproducible."""

import torch

from dreamy.vision.transforms import Transforms


def test_each_item_gets_its_own_draw():
    image = torch.rand(1, 3, 32, 32).expand(6, -1, -1, -1).contiguous()
    for transform in (Transforms(jitter=4), Transforms(scale=(0.8, 1.2)), Transforms(rotate=20),
                      Transforms(crop=0.6), Transforms(noise=0.1), Transforms(pad=4, jitter=2)):
        out = transform(image, torch.Generator().manual_seed(0))
        assert out.shape == image.shape
        distinct = {tuple(out[i].flatten()[:50].tolist()) for i in range(6)}
        assert len(distinct) == 6, transform


def test_same_generator_seed_same_output():
    images = torch.rand(3, 3, 16, 16)
    t = Transforms.standard((16, 16))
    assert torch.equal(t(images, torch.Generator().manual_seed(1)), t(images, torch.Generator().manual_seed(1)))


def test_identity_transforms_leave_images_alone():
    images = torch.rand(2, 3, 16, 16)
    assert Transforms().is_identity and torch.equal(Transforms()(images, torch.Generator()), images)
    padded_only = Transforms(pad=3)(images, torch.Generator())
    assert torch.allclose(padded_only, images, atol=1e-5)


def test_transforms_pass_gradients():
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    Transforms.standard((16, 16))(images, torch.Generator().manual_seed(0)).sum().backward()
    assert images.grad.abs().sum() > 0


def test_standard_set_scales_with_image_size():
    assert Transforms.standard((224, 224)).pad == 12 and Transforms.standard((224, 224)).jitter == 8
    assert Transforms.standard((32, 32)).pad < 12
