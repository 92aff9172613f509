"""Generator priors: dream in the latent space of a generator `z -> image` instead of pixel space.

`GeneratorParam` wraps ANY torch generator (a GAN, a VAE decoder, ...) and optimizes its latent code
with DGN-AM's latent handling (Nguyen et al., 2016): an L2 decay on the code each step and clipping
to a box (e.g. the range seen on real data).

`RandomDecoder` (parametrization `"decoder"`) is the one generator that needs no download: an
UNTRAINED convolutional upsampling network with FIXED random weights, of which only the
low-resolution latent code (1/8 of the image side) is optimized. It knows nothing about natural
images; its architecture (upsampling + convolutions) only biases dreams toward smooth structure. It is
not a deep image prior (Ulyanov et al., 2018 optimize the network's weights: that is
`dreamy.vision.prior.DeepImagePrior`, parametrization `"dip"`), and not a learned prior either: do not
expect the photo-like dreams of a GAN trained on ImageNet (DGN-AM, Nguyen et al., 2016). Every image
depends only on its own latent code (instance, not batch, normalization), so rows dreaming different
targets do not interact.

Example:
    >>> prior = RandomDecoder((32, 32), generator=torch.Generator().manual_seed(0))
    >>> param = GeneratorParam(prior, prior.latent_shape, n=2, generator=torch.Generator().manual_seed(1))
    >>> param.images().shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class RandomDecoder(nn.Module):
    """An untrained, seeded upsampling conv net mapping `[n, C, H/8, W/8]` codes to `[n, 3, H, W]` images in [0, 1]."""

    def __init__(self, size: tuple[int, int], *, channels: int = 32, generator: torch.Generator | None = None) -> None:
        super().__init__()
        h, w = size
        if h % 8 or w % 8:
            raise ValueError(f"RandomDecoder needs a size divisible by 8, got {size}")
        self.latent_shape = (channels, h // 8, w // 8)
        layers: list[nn.Module] = []
        for _ in range(3):
            layers += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(channels, channels, 3, padding=1), nn.InstanceNorm2d(channels),
                       nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(channels, 3, 1)]
        self.net = nn.Sequential(*layers)
        gen = generator or torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / max(1, p[0].numel())) ** 0.5 if p.ndim > 1 else torch.zeros(p.shape))
        self.requires_grad_(False)

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.net(z))


class GeneratorParam:
    """Optimize the latent code of `net` (a generator `z -> [n, 3, H, W]` images).

    `clip=(low, high)` keeps every latent value in a box after each step (DGN-AM clips to the range
    the code takes on real images); `decay` multiplies the code by `1 - decay` after each step
    (DGN-AM's L2 decay). The render loop calls `after_step()`. `output_range` is the range of the
    generator's pixels (`(-1, 1)` for a tanh GAN); images are mapped from it to [0, 1] and clamped.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Sigmoid(), nn.Unflatten(1, (3, 8, 8)))
        >>> p = GeneratorParam(net, (4,), n=2, generator=torch.Generator().manual_seed(0), clip=(-1, 1))
        >>> p.after_step(); float(p.latent.detach().abs().max()) <= 1.0
        True
    """

    def __init__(self, net: nn.Module, latent_shape: Sequence[int], *, n: int, generator: torch.Generator,
                 clip: tuple[float, float] | None = None, decay: float = 0.0, init_std: float = 1.0,
                 output_range: tuple[float, float] = (0.0, 1.0), device: str | torch.device = "cpu") -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if clip is not None and not clip[0] < clip[1]:
            raise ValueError(f"clip must be (low, high) with low < high, got {clip}")
        if not output_range[0] < output_range[1]:
            raise ValueError(f"output_range must be (low, high) with low < high, got {output_range}")
        self.net = net.to(device)
        self.clip = clip
        self.decay = decay
        self.output_range = output_range
        latent = torch.randn(n, *latent_shape, generator=generator, device=generator.device) * init_std
        if clip is not None:
            latent = latent.clamp(*clip)
        self.latent = latent.to(device).requires_grad_(True)

    def parameters(self) -> list[Tensor]:
        return [self.latent]

    def images(self) -> Tensor:
        images = self.net(self.latent)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"the generator must return [n, 3, H, W] images, got shape {tuple(images.shape)}")
        low, high = self.output_range
        if (low, high) != (0.0, 1.0):
            images = (images - low) / (high - low)
        return images.clamp(0.0, 1.0)

    @torch.no_grad()
    def after_step(self) -> None:
        """Apply DGN-AM's latent decay and clipping."""
        if self.decay:
            self.latent.mul_(1.0 - self.decay)
        if self.clip is not None:
            self.latent.clamp_(*self.clip)


def random_decoder_param(n: int, size: tuple[int, int], *, generator: torch.Generator, device: str | torch.device = "cpu") -> GeneratorParam:
    """A `GeneratorParam` over a seeded `RandomDecoder` (parametrization `"decoder"`; no download needed).

    Example:
        >>> random_decoder_param(1, (16, 16), generator=torch.Generator().manual_seed(0)).images().shape
        torch.Size([1, 3, 16, 16])
    """
    prior = RandomDecoder(size, generator=generator)
    return GeneratorParam(prior, prior.latent_shape, n=n, generator=generator, clip=(-3.0, 3.0), decay=1e-3, device=device)
