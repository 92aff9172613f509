"""A true deep image prior (Ulyanov, Vedaldi and Lempitsky, 2018): dream by optimizing a generator's WEIGHTS.

Each image is the output of its own small convolutional generator fed a fixed noise input; the
optimizer changes the generator's weights (and, with `optimize_input=True`, the noise too). The
network's structure (upsampling, 3x3 convolutions, normalization) makes smooth, spatially coherent
images far easier to reach than pixel noise, which is the prior; nothing is trained beforehand.

The generator is a decoder (the hourglass's upsampling half): noise at 1/2^k of the image size goes
through k stages of bilinear upsampling, reflection-padded 3x3 convolution, per-image channel
normalization (batch norm with one image, as in the paper) and LeakyReLU, then a 1x1 convolution and a
sigmoid. The `n` rows are `n` independent generators run as ONE grouped convolution per layer, so
rows dreaming different targets never interact. Weights are stored at unit scale and multiplied by
1/sqrt(fan_in) on use (an "equalized learning rate"), so the render loop's Adam learning rate moves
every layer alike; every stored tensor is also divided by `LR_SCALE` and multiplied back on use, so
the loop's default lr 0.05 acts as 0.02 (on EfficientNet-Lite0's cat logit, 64 steps: p(cat) 0.94
at an effective 0.02, 0.57 at 0.05, 0.05 at 0.15). `input_noise` re-draws a small perturbation of the input each
step (the paper's regularizing noise), from the render loop's seeded generator stream.

Example:
    >>> prior = DeepImagePrior(2, (32, 32), generator=torch.Generator().manual_seed(0))
    >>> prior.images().shape, len(prior.parameters()) > 1
    (torch.Size([2, 3, 32, 32]), True)
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

LR_SCALE = 0.4  # stored tensors are effective values / LR_SCALE: Adam's steps shrink by this factor


def _stage_sizes(size: tuple[int, int], stages: int) -> list[tuple[int, int]]:
    """Spatial sizes from the noise input up to `size`, halving (rounding up) once per stage.

    Example:
        >>> _stage_sizes((30, 32), 2)
        [(8, 8), (15, 16), (30, 32)]
    """
    sizes = [tuple(size)]
    for _ in range(stages):
        h, w = sizes[0]
        sizes.insert(0, (max(1, math.ceil(h / 2)), max(1, math.ceil(w / 2))))
    return sizes


class DeepImagePrior:
    """`n` independent conv decoders `noise -> image`; their weights are the parameters (see the module docstring).

    - `channels`: output channels of each upsampling stage (the number of stages is its length, fewer
      for images too small to halve that often: the noise input keeps at least 4 pixels a side).
    - `input_channels`, `input_scale`: the fixed noise input, uniform in [0, input_scale) as in the paper.
    - `optimize_input`: also optimize the noise input.
    - `input_noise`: std of a fresh perturbation added to the input at every step (0 = off).

    Example:
        >>> p = DeepImagePrior(1, (16, 16), generator=torch.Generator().manual_seed(0), optimize_input=True)
        >>> any(t is p.input for t in p.parameters())
        True
    """

    def __init__(self, n: int, size: tuple[int, int], *, generator: torch.Generator,
                 channels: Sequence[int] = (64, 64, 32, 32, 16), input_channels: int = 32, input_scale: float = 0.1,
                 optimize_input: bool = False, input_noise: float = 0.0, device: str | torch.device = "cpu") -> None:
        if n < 1:
            raise ValueError(f"a parametrization needs n >= 1 images, got {n}")
        if len(size) != 2 or min(size) < 2:
            raise ValueError(f"image size must be (H, W) with both >= 2, got {size}")
        if not channels or min(channels) < 1 or input_channels < 1:
            raise ValueError(f"channels must be a non-empty list of positive widths, got {list(channels)} "
                             f"(input_channels {input_channels})")
        if input_noise < 0:
            raise ValueError(f"input_noise is a standard deviation >= 0, got {input_noise}")
        self.n = n
        self.size = (int(size[0]), int(size[1]))
        # the noise input keeps >= 4 pixels a side (a 1-pixel map normalizes to a constant): small images use
        # the last stages of `channels` only
        stages = min(len(channels), max(1, int(math.log2(max(min(self.size), 2) / 4))))
        channels = list(channels)[-stages:]
        self.sizes = _stage_sizes(self.size, len(channels))
        self.generator = generator
        self.input_noise = input_noise
        self.optimize_input = optimize_input

        def draw(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator, device=generator.device).to(device)

        noise = torch.rand(n * input_channels, *self.sizes[0], generator=generator, device=generator.device) * input_scale
        self.input = noise[None].to(device).requires_grad_(optimize_input)
        self.layers: list[dict[str, Tensor]] = []
        width = input_channels
        for out in channels:
            # no convolution bias before a normalization (it would be subtracted right away)
            self.layers.append({"weight": draw(n * out, width, 3, 3), "scale": torch.ones(n * out, device=device),
                                "shift": torch.zeros(n * out, device=device)})
            width = out
        self.layers.append({"weight": draw(n * 3, width, 1, 1), "bias": torch.zeros(n * 3, device=device)})
        for layer in self.layers:
            for key in layer:
                layer[key] = (layer[key] / LR_SCALE).requires_grad_(True)

    def parameters(self) -> list[Tensor]:
        weights = [tensor for layer in self.layers for tensor in layer.values()]
        return weights + ([self.input] if self.optimize_input else [])

    def images(self) -> Tensor:
        x = self.input
        if self.input_noise > 0 and torch.is_grad_enabled():
            jitter = torch.randn(x.shape, generator=self.generator, device=self.generator.device) * self.input_noise
            x = x + jitter.to(x.device)
        for layer, size in zip(self.layers[:-1], self.sizes[1:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            weight = layer["weight"] * (LR_SCALE / math.sqrt(layer["weight"][0].numel()))
            x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), weight, groups=self.n)
            x = F.instance_norm(x, weight=layer["scale"] * LR_SCALE, bias=layer["shift"] * LR_SCALE)
            x = F.leaky_relu(x, 0.2)
        last = self.layers[-1]
        x = F.conv2d(x, last["weight"] * (LR_SCALE / math.sqrt(last["weight"][0].numel())), last["bias"] * LR_SCALE,
                     groups=self.n)
        return torch.sigmoid(x.view(self.n, 3, *self.size))

    def count(self) -> int:
        """Number of optimized values per image (weights, and the input when optimized).

        Example:
            >>> DeepImagePrior(2, (8, 8), generator=torch.Generator().manual_seed(0), channels=(4,)).count()
            1175
        """
        return sum(p.numel() for p in self.parameters()) // self.n


__all__ = ["DeepImagePrior"]
