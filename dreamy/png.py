"""PNG encoding of images: the one encoder used by galleries, Ray batches and the maxima cache.

It sits below all three (it imports nothing from dreamy), so data flows one way.

Example:
    >>> png_bytes(torch.rand(3, 4, 4))[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def png_bytes(image: torch.Tensor | np.ndarray) -> bytes:
    """PNG bytes of a `[3, H, W]` tensor in [0, 1], or of an `[H, W, 3]` uint8 array.

    Example:
        >>> from PIL import Image
        >>> Image.open(io.BytesIO(png_bytes(torch.rand(3, 4, 6)))).size
        (6, 4)
    """
    if isinstance(image, torch.Tensor):
        image = (image.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = ["png_bytes"]
