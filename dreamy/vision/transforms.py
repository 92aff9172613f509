"""Random transforms applied during optimization, drawn independently for every batch item.

Robustness to small shifts, scales and rotations keeps dreams from exploiting pixel-exact
adversarial patterns. All draws use an explicit `torch.Generator` and are batched: pad, jitter,
zoom, rotation and crop of every item become one affine matrix per item and ONE `grid_sample` for the
whole batch (no Python loop over items); noise is one batched draw. Unlike lucent, every item gets
its own draw, and jitter is symmetric.

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
    """`n` uniform draws in [low, high) from `gen` (drawn on the generator's device, then moved)."""
    return (torch.rand(n, generator=gen, device=gen.device) * (high - low) + low).to(device)


def affine_theta(angle: Tensor, zoom: Tensor, shift_x: Tensor, shift_y: Tensor, size: tuple[int, int],
                 padded: tuple[int, int]) -> Tensor:
    """Per-item `[n, 2, 3]` matrices for `F.affine_grid` that sample an output of `size` (H, W) from an
    image of `padded` size: rotation by `angle` (radians, counter-clockwise on screen), zoom by `zoom`
    (> 1 magnifies), and a shift of the sampled window by (`shift_x`, `shift_y`) in normalized
    coordinates of the padded image. Rotation is rigid in pixel units, also for non-square images.

    Example:
        >>> zero, one = torch.zeros(1), torch.ones(1)
        >>> theta = affine_theta(zero, one, zero, zero, (4, 4), (4, 4))
        >>> bool(torch.equal(theta, torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])))
        True
    """
    h, w = size
    ph, pw = padded
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # output normalized (u, v) -> pixels (u*w/2, v*h/2) -> rotate/zoom -> normalized of the padded image
    return torch.stack([
        torch.stack([cos * (w / pw), -sin * (h / pw), shift_x], dim=1),
        torch.stack([sin * (w / ph), cos * (h / ph), shift_y], dim=1),
    ], dim=1)


@dataclass(frozen=True)
class Transforms:
    """Per-item random pad, jitter, scale, rotation, crop-and-resize and noise.

    pad:      pixels of constant padding (value `pad_value`) added before the geometric transforms
    jitter:   max translation in pixels (uniform in [-jitter, jitter] per axis and item)
    scale:    (low, high) range of the zoom factor
    rotate:   max rotation in degrees (uniform in [-rotate, rotate])
    crop:     minimum crop side fraction; a random crop of side in [crop, 1] anywhere in the image is
              resized back to full size (1 = off)
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

    def __post_init__(self) -> None:
        if self.pad < 0 or self.jitter < 0 or self.rotate < 0 or self.noise < 0:
            raise ValueError(f"pad, jitter, rotate and noise must be >= 0, got {self}")
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {self.scale}")
        if not 0 < self.crop <= 1:
            raise ValueError(f"crop is the minimum crop fraction, in (0, 1]; got {self.crop}")

    @classmethod
    def standard(cls, size: tuple[int, int]) -> "Transforms":
        """lucid's standard robustness set (pad 12, jitter 8, zoom 0.9-1.1, rotation ±10°), with pad and
        jitter scaled from 224 pixels to `size`.

        Example:
            >>> Transforms.standard((224, 224)).pad
            12
        """
        side = min(size)
        return cls(pad=max(1, round(12 * side / 224)), jitter=max(1.0, 8.0 * side / 224), scale=(0.9, 1.1), rotate=10.0)

    @property
    def is_identity(self) -> bool:
        """True when the transforms change nothing."""
        return (self.pad == 0 and self.jitter == 0 and self.scale == (1.0, 1.0) and self.rotate == 0
                and self.crop >= 1.0 and self.noise == 0)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Transform `[n, C, H, W]` images, each with its own random draw; returns the input size."""
        if self.is_identity:
            return images
        n, _, h, w = images.shape
        device = images.device
        x = images
        if self.pad > 0:
            x = F.pad(x, (self.pad,) * 4, mode="constant", value=self.pad_value)
        ph, pw = x.shape[-2:]
        zoom = _uniform(n, *self.scale, generator, device)
        crop = _uniform(n, self.crop, 1.0, generator, device) if self.crop < 1.0 else None
        if crop is not None:
            zoom = zoom / crop
        angle = _uniform(n, -self.rotate, self.rotate, generator, device) * (math.pi / 180)
        shift_x = _uniform(n, -self.jitter, self.jitter, generator, device) * (2 / pw)
        shift_y = _uniform(n, -self.jitter, self.jitter, generator, device) * (2 / ph)
        if crop is not None:  # place the crop anywhere it fits inside the (unpadded) image
            shift_x = shift_x + _uniform(n, -1, 1, generator, device) * (1 - crop) * (w / pw)
            shift_y = shift_y + _uniform(n, -1, 1, generator, device) * (1 - crop) * (h / ph)
        theta = affine_theta(angle, zoom, shift_x, shift_y, (h, w), (ph, pw))
        grid = F.affine_grid(theta.to(x.dtype), [n, x.shape[1], h, w], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.noise > 0:
            noise = torch.randn(out.shape, generator=generator, device=generator.device, dtype=out.dtype)
            out = out + noise.to(device) * self.noise
        return out


__all__ = ["Transforms", "affine_theta"]
