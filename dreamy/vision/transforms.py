"""Random transforms applied during optimization, drawn independently for every batch item.

Robustness to small shifts, scales and rotations keeps dreams from exploiting pixel-exact
adversarial patterns. All draws use an explicit `torch.Generator` and are batched: one affine grid
per item, one `grid_sample` for the whole batch.

Example:
    >>> t = Transforms.standard((32, 32))
    >>> out = t(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0))
    >>> out.shape
    torch.Size([4, 3, 32, 32])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> Tensor:
    return (torch.rand(n, generator=gen) * (high - low) + low).to(device)


@dataclass(frozen=True)
class Transforms:
    """Per-item random pad, jitter, scale, rotation, crop-and-resize and noise.

    pad:      pixels of constant padding (value `pad_value`) added before the geometric transforms
    jitter:   max translation in pixels (uniform in [-jitter, jitter] per axis)
    scale:    (low, high) range of the zoom factor
    rotate:   max rotation in degrees (uniform in [-rotate, rotate])
    crop:     minimum crop fraction; a random crop of side in [crop, 1] is resized back (1 = off)
    noise:    std of additive Gaussian noise

    Example:
        >>> Transforms(jitter=0).is_identity
        True
    """

    pad: int = 0
    pad_value: float = 0.5
    jitter: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    rotate: float = 0.0
    crop: float = 1.0
    noise: float = 0.0

    @classmethod
    def standard(cls, size: tuple[int, int]) -> "Transforms":
        """lucid's standard robustness set, scaled to the image size (12/224 pad, 8/224 jitter, ±5°, 0.95-1.05 zoom).

        Example:
            >>> Transforms.standard((224, 224)).pad
            12
        """
        side = min(size)
        return cls(pad=max(1, round(12 * side / 224)), jitter=max(1.0, 8.0 * side / 224), scale=(0.95, 1.05), rotate=5.0)

    @property
    def is_identity(self) -> bool:
        """True when the transforms change nothing."""
        return (self.pad == 0 and self.jitter == 0 and self.scale == (1.0, 1.0) and self.rotate == 0
                and self.crop >= 1.0 and self.noise == 0)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Transform `[n, 3, H, W]` images, each with its own random draw; returns the input size."""
        if self.is_identity:
            return images
        n, _, h, w = images.shape
        device = images.device
        x = images
        if self.pad > 0:
            x = F.pad(x, (self.pad,) * 4, mode="constant", value=self.pad_value)
        ph, pw = x.shape[-2:]
        zoom = _uniform(n, *self.scale, generator, device)
        if self.crop < 1.0:
            zoom = zoom / _uniform(n, self.crop, 1.0, generator, device)
        angle = _uniform(n, -self.rotate, self.rotate, generator, device) * math.pi / 180
        shift_x = _uniform(n, -self.jitter, self.jitter, generator, device) * 2 / pw
        shift_y = _uniform(n, -self.jitter, self.jitter, generator, device) * 2 / ph
        if self.crop < 1.0:  # the crop's position: anywhere the crop fits
            room = 1 - 1 / zoom
            shift_x = shift_x + _uniform(n, -1, 1, generator, device) * room
            shift_y = shift_y + _uniform(n, -1, 1, generator, device) * room
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        # sample the central HxW window of the padded image, rotated/zoomed/shifted per item
        fx, fy = w / pw, h / ph
        theta = torch.stack([
            torch.stack([cos * fx, -sin * fy, shift_x], dim=1),
            torch.stack([sin * fx, cos * fy, shift_y], dim=1),
        ], dim=1)
        grid = F.affine_grid(theta.to(x.dtype), [n, 3, h, w], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.noise > 0:
            out = out + torch.randn(out.shape, generator=generator).to(device) * self.noise
        return out
