"""Image parametrizations: what the optimizer actually changes, and how that becomes an image.

Each parametrization holds a batch of `n` images and exposes `parameters()` (for the optimizer) and
`images()` (a `[n, 3, H, W]` tensor in [0, 1] that carries gradients).

- `PixelParam`: raw pixels (through a sigmoid).
- `FourierParam`: a Fourier spectrum scaled by 1/frequency with decorrelated colour (lucid-style), which
  favours natural-looking low frequencies.
- `MacoParam`: MACO (Fel et al., 2023): the magnitude spectrum is fixed to a natural-image power law
  and only the phase is optimized.
- `ImageParam`: start from given images (feature accentuation); `dream(..., regularizers={"pull": w})`
  pulls the dream back toward them.
- `DeepImagePrior` (`"dip"`, in `dreamy.vision.prior`): the deep image prior of Ulyanov et al.: the
  WEIGHTS of a small conv generator fed fixed noise are optimized.
Generator priors (`GeneratorParam` over any generator; `"decoder"`, the latent of a frozen random
decoder) live in `dreamy.vision.generators`.
Any object with `parameters()` and `images()` works; the render loop also calls its `after_step()`
after every optimizer step when it has one (e.g. to clip a latent code).

Example:
    >>> param = FourierParam(2, (32, 32), generator=torch.Generator().manual_seed(0))
    >>> param.images().shape
    torch.Size([2, 3, 32, 32])
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

# square root of the colour correlation of natural images (ImageNet statistics, as used by lucid)
COLOR_CORRELATION_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


class ImageParametrization(Protocol):
    """What the render loop needs from a parametrization."""

    def parameters(self) -> list[Tensor]: ...

    def images(self) -> Tensor: ...


def decorrelate_colors(x: Tensor) -> Tensor:
    """Map decorrelated colour channels `[n, 3, H, W]` to correlated RGB (before the sigmoid).

    Example:
        >>> decorrelate_colors(torch.zeros(1, 3, 2, 2)).abs().sum().item()
        0.0
    """
    matrix = COLOR_CORRELATION_SQRT.to(x)
    matrix = matrix / matrix.norm(dim=0).max()
    return torch.einsum("ij,njhw->nihw", matrix, x)


def spectrum_scale(size: tuple[int, int], decay_power: float = 1.0) -> Tensor:
    """Per-frequency scale `1 / f^decay_power` for a real FFT of an image of `size`, shape `[H, W//2+1]`.

    Example:
        >>> spectrum_scale((8, 8)).shape
        torch.Size([8, 5])
    """
    h, w = size
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    freqs = torch.sqrt(fy**2 + fx**2)
    return 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay_power


def _check_shape(n: int, size: tuple[int, int]) -> tuple[int, int]:
    """Validate a batch size and an image size; returns the size as a tuple of ints."""
    if n < 1:
        raise ValueError(f"a parametrization needs n >= 1 images, got {n}")
    if len(size) != 2 or min(size) < 2:
        raise ValueError(f"image size must be (H, W) with both >= 2, got {size}")
    return int(size[0]), int(size[1])


class PixelParam:
    """Raw pixels through a sigmoid.

    Example:
        >>> PixelParam(1, (8, 8), generator=torch.Generator().manual_seed(0)).images().shape
        torch.Size([1, 3, 8, 8])
    """

    def __init__(self, n: int, size: tuple[int, int], *, generator: torch.Generator, std: float = 0.01,
                 device: str | torch.device = "cpu") -> None:
        size = _check_shape(n, size)
        raw = torch.randn(n, 3, *size, generator=generator, device=generator.device) * std
        self.raw = raw.to(device).requires_grad_(True)

    def parameters(self) -> list[Tensor]:
        return [self.raw]

    def images(self) -> Tensor:
        return torch.sigmoid(self.raw)


class FourierParam:
    """A 1/f-scaled Fourier spectrum with decorrelated colour, through a sigmoid (lucid-style).

    The optimizer changes the real and imaginary parts of each channel's spectrum; scaling them by
    `1 / f^decay_power` equalizes the gradient across frequencies, and the colour channels are
    decorrelated with the square root of ImageNet's colour covariance.

    Example:
        >>> p = FourierParam(1, (16, 16), generator=torch.Generator().manual_seed(0))
        >>> float(p.images().detach().min()) >= 0.0
        True
    """

    def __init__(self, n: int, size: tuple[int, int], *, generator: torch.Generator, std: float = 0.01,
                 decay_power: float = 1.0, decorrelate: bool = True, device: str | torch.device = "cpu") -> None:
        h, w = self.size = _check_shape(n, size)
        self.decorrelate = decorrelate
        self.scale = spectrum_scale(self.size, decay_power).to(device)
        spectrum = torch.randn(n, 3, h, w // 2 + 1, 2, generator=generator, device=generator.device) * std
        self.spectrum = spectrum.to(device).requires_grad_(True)

    def parameters(self) -> list[Tensor]:
        return [self.spectrum]

    def images(self) -> Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        x = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / 4.0
        if self.decorrelate:
            x = decorrelate_colors(x)
        return torch.sigmoid(x)


class MacoParam:
    """MACO (Fel et al., 2023): a fixed natural-image magnitude spectrum; only the phase is optimized.

    Constraining the magnitude keeps the dream's energy spread over frequencies like a photo's, so
    the optimizer cannot fall back on high-frequency noise. The paper fixes the magnitude to the
    mean spectrum of ImageNet; `magnitude` (`[3, H, W//2+1]`) defaults here to a 1/f power law (no
    download), and `magnitude_of(images)` gives the mean spectrum of any photos you have. The image
    is standardized per channel, colour-decorrelated and squashed into [0, 1] with a sigmoid.

    Example:
        >>> p = MacoParam(2, (16, 16), generator=torch.Generator().manual_seed(0))
        >>> len(p.parameters()), p.images().shape
        (1, torch.Size([2, 3, 16, 16]))
    """

    def __init__(self, n: int, size: tuple[int, int], *, generator: torch.Generator, magnitude: Tensor | None = None,
                 decay_power: float = 1.0, device: str | torch.device = "cpu") -> None:
        h, w = self.size = _check_shape(n, size)
        if magnitude is None:
            magnitude = spectrum_scale(self.size, decay_power).expand(3, h, w // 2 + 1)
        if tuple(magnitude.shape) != (3, h, w // 2 + 1):
            raise ValueError(f"magnitude must have shape (3, {h}, {w // 2 + 1}) for images of size {self.size}, got "
                             f"{tuple(magnitude.shape)}; compute it with magnitude_of(images) at that size")
        self.magnitude = magnitude.detach().float().to(device)
        phase = (torch.rand(n, 3, h, w // 2 + 1, generator=generator, device=generator.device) * 2 - 1) * math.pi
        self.phase = phase.to(device).requires_grad_(True)

    def parameters(self) -> list[Tensor]:
        return [self.phase]

    def images(self) -> Tensor:
        spectrum = torch.polar(self.magnitude.expand_as(self.phase), self.phase)
        x = torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
        x = (x - x.mean(dim=(2, 3), keepdim=True)) / (x.std(dim=(2, 3), keepdim=True) + 1e-8)
        return torch.sigmoid(decorrelate_colors(x))


def magnitude_of(images: Tensor) -> Tensor:
    """Mean Fourier magnitude spectrum `[3, H, W//2+1]` of `[n, 3, H, W]` images in [0, 1] (for MACO).

    Example:
        >>> magnitude_of(torch.rand(4, 3, 8, 8)).shape
        torch.Size([3, 8, 5])
    """
    centered = images - images.mean(dim=(2, 3), keepdim=True)
    return torch.fft.rfft2(centered, norm="ortho").abs().mean(dim=0)


class ImageParam:
    """Start from given images `[n, 3, H, W]` in [0, 1] (feature accentuation), optimized in logit space.

    `start` keeps the starting images; `dream(..., regularizers={"pull": w})` adds an L2 pull of the
    dream toward them (so the result stays recognisably the photo, only accentuated).

    Example:
        >>> seed = torch.full((1, 3, 4, 4), 0.25)
        >>> torch.allclose(ImageParam(seed).images(), seed, atol=1e-5)
        True
    """

    def __init__(self, images: Tensor, *, device: str | torch.device | None = None) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"ImageParam needs [n, 3, H, W] images in [0, 1], got shape {tuple(images.shape)}")
        if images.min() < 0 or images.max() > 1:
            raise ValueError(f"ImageParam needs images in [0, 1], got values in [{float(images.min()):.3g}, "
                             f"{float(images.max()):.3g}]; divide uint8 images by 255")
        images = images.detach().float()
        if device is not None:
            images = images.to(device)
        self.start = images
        self.raw = torch.logit(images.clamp(1e-4, 1 - 1e-4)).clone().requires_grad_(True)

    def parameters(self) -> list[Tensor]:
        return [self.raw]

    def images(self) -> Tensor:
        return torch.sigmoid(self.raw)


PARAMETRIZATIONS = ("pixel", "fourier", "maco", "dip", "decoder")


def size_error(name: str, size: tuple[int, int]) -> str | None:
    """Why parametrization `name` cannot make images of `size` (height, width), or None when it can: the
    `decoder` upsamples 8x, so both sides must be divisible by 8; `dip` needs both sides >= 2.

    Example:
        >>> size_error("decoder", (17, 17)), size_error("decoder", (16, 24)), size_error("fourier", (17, 17))
        ('param="decoder" needs an image size divisible by 8, got 17x17; use e.g. 16 or 24', None, None)
    """
    h, w = size
    if name == "decoder" and (h % 8 or w % 8):
        nearest = sorted({max(8, 8 * (side // 8)) for side in (h, w)} | {8 * -(-side // 8) for side in (h, w)})
        return (f'param="decoder" needs an image size divisible by 8, got {h}x{w}; use e.g. '
                f"{' or '.join(str(side) for side in nearest[:2])}")
    if name == "dip" and min(h, w) < 2:
        return f'param="dip" needs both image sides >= 2, got {h}x{w}'
    return None


def make_param(name: str, n: int, size: tuple[int, int], *, generator: torch.Generator,
               device: str | torch.device = "cpu") -> ImageParametrization:
    """Build a parametrization by name: `pixel`, `fourier`, `maco`, `dip` (deep image prior: a generator's
    weights are optimized) or `decoder` (the latent code of a frozen random decoder).

    Example:
        >>> type(make_param("maco", 1, (8, 8), generator=torch.Generator().manual_seed(0))).__name__
        'MacoParam'
    """
    if name == "pixel":
        return PixelParam(n, size, generator=generator, device=device)
    if name == "fourier":
        return FourierParam(n, size, generator=generator, device=device)
    if name == "maco":
        return MacoParam(n, size, generator=generator, device=device)
    if name == "dip":
        from dreamy.vision.prior import DeepImagePrior

        return DeepImagePrior(n, size, generator=generator, device=device)
    if name == "decoder":
        from dreamy.vision.generators import random_decoder_param

        return random_decoder_param(n, size, generator=generator, device=device)
    raise ValueError(f"unknown parametrization '{name}'; use one of {', '.join(PARAMETRIZATIONS)}, "
                     "or pass an object such as ImageParam(images) or generators.GeneratorParam(...)")


__all__ = ["FourierParam", "ImageParam", "ImageParametrization", "MacoParam", "PARAMETRIZATIONS", "PixelParam",
           "decorrelate_colors", "magnitude_of", "make_param", "size_error", "spectrum_scale"]
