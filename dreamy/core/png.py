"""PNG encoding and decoding of images: the one encoder used by galleries, Ray batches and the maxima cache,
and the reader that judges use on a run's PNGs. It imports nothing from dreamy.

Example:
    >>> png_bytes(torch.rand(3, 4, 4))[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import io
from pathlib import Path

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


def read_png(path: str | Path) -> torch.Tensor:
    """A PNG file as a `[3, H, W]` float tensor in [0, 1].

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "a.png"
        >>> _ = path.write_bytes(png_bytes(torch.ones(3, 4, 5)))
        >>> read_png(path).shape
        torch.Size([3, 4, 5])
    """
    with Image.open(io.BytesIO(Path(path).read_bytes())) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


__all__ = ["png_bytes", "read_png"]
