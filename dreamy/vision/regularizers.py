"""Regularizers: per-image penalties added to the negated objective, and the batch diversity term.

Each function maps `[n, 3, H, W]` images in [0, 1] to a `[n]` penalty (higher = worse).
`diversity` works on activations and acts only among rows that dream the same target.

Example:
    >>> images = torch.rand(2, 3, 8, 8)
    >>> total_variation(images).shape
    torch.Size([2])
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def l1(images: Tensor, center: float = 0.5) -> Tensor:
    """Mean absolute deviation from grey.

    Example:
        >>> l1(torch.full((1, 3, 2, 2), 0.5)).item()
        0.0
    """
    return (images - center).abs().flatten(1).mean(dim=1)


def l2(images: Tensor, center: float = 0.5) -> Tensor:
    """Root mean squared deviation from grey.

    Example:
        >>> round(l2(torch.ones(1, 3, 2, 2)).item(), 3)
        0.5
    """
    return ((images - center) ** 2).flatten(1).mean(dim=1).add(1e-12).sqrt()


def total_variation(images: Tensor) -> Tensor:
    """Mean absolute difference between neighbouring pixels (penalizes high-frequency noise).

    Example:
        >>> total_variation(torch.zeros(1, 3, 4, 4)).item()
        0.0
    """
    dy = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().flatten(1).mean(dim=1)
    dx = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().flatten(1).mean(dim=1)
    return dx + dy


def blur(images: Tensor, kernel: int = 3) -> Tensor:
    """Mean squared difference between the images and their box-blurred copy.

    Example:
        >>> blur(torch.full((1, 3, 5, 5), 0.3)).item() < 1e-12
        True
    """
    padded = F.pad(images, (kernel // 2,) * 4, mode="replicate")
    blurred = F.avg_pool2d(padded, kernel, stride=1)
    return ((images - blurred) ** 2).flatten(1).mean(dim=1)


def center_bias(images: Tensor, center: float = 0.5) -> Tensor:
    """Energy away from the image centre, weighted by squared distance from it.

    Following the centre-biased regularization of multifaceted feature visualization (Nguyen et
    al., 2016), this pushes the dreamed object toward the middle of the canvas.

    Example:
        >>> x = torch.full((2, 3, 9, 9), 0.5); x[0, :, 4, 4] = 1.0; x[1, :, 0, 0] = 1.0
        >>> bool(center_bias(x)[0] < center_bias(x)[1])
        True
    """
    h, w = images.shape[-2:]
    ys = torch.linspace(-1, 1, h, device=images.device)[:, None]
    xs = torch.linspace(-1, 1, w, device=images.device)[None, :]
    weight = (ys**2 + xs**2) / 2
    return (((images - center) ** 2) * weight).flatten(1).mean(dim=1)


def pull_to(start: Tensor) -> Callable[[Tensor], Tensor]:
    """A regularizer: mean squared distance of each image to its `start` image (`[n, 3, H, W]`, or one
    image for all rows), so feature accentuation stays near the photo it started from.

    Example:
        >>> start = torch.rand(1, 3, 4, 4)
        >>> pull_to(start)(start).item()
        0.0
    """
    def pull(images: Tensor) -> Tensor:
        target = start.to(images)
        if target.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"pull_to: start images are {tuple(target.shape[-2:])} but the dream is "
                             f"{tuple(images.shape[-2:])}; resize the start images to the dream size")
        return ((images - target) ** 2).flatten(1).mean(dim=1)
    return pull


def gram(activations: Tensor) -> Tensor:
    """Normalized Gram matrices `[n, C, C]` of `[n, C, H, W]` maps, `[n, T, C]` sequences or `[n, C]`
    vectors (the outer product).

    Example:
        >>> gram(torch.rand(2, 4, 3, 3)).shape
        torch.Size([2, 4, 4])
    """
    if activations.ndim == 4:
        flat = activations.flatten(2)
    elif activations.ndim == 3:
        flat = activations.transpose(1, 2)
    elif activations.ndim == 2:
        flat = activations[:, :, None]
    else:
        raise ValueError(f"gram needs [n, C, H, W], [n, T, C] or [n, C] activations, got shape {tuple(activations.shape)}")
    return flat @ flat.transpose(1, 2) / flat.shape[-1]


def diversity(activations: Tensor, row_targets: Tensor) -> Tensor:
    """Per-row mean cosine similarity of Gram matrices to the other rows dreaming the same target.

    Minimizing it (adding it with a positive weight) pushes the images of one target apart in style
    (lucid / Cadena et al.). Rows alone with their target get 0.

    Example:
        >>> acts = torch.rand(4, 3, 5, 5)
        >>> diversity(acts, torch.tensor([0, 0, 1, 2])).shape
        torch.Size([4])
    """
    flat = F.normalize(gram(activations).flatten(1), dim=1)
    similarity = flat @ flat.T
    same = (row_targets[:, None] == row_targets[None, :]) & ~torch.eye(len(row_targets), dtype=torch.bool, device=flat.device)
    counts = same.sum(dim=1).clamp(min=1)
    return (similarity * same).sum(dim=1) / counts


REGULARIZERS = {"l1": l1, "l2": l2, "tv": total_variation, "blur": blur, "center": center_bias}
