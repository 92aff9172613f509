"""Image sets for dataset maxima: the bundled sample photos, Fashion-MNIST, or any folder of images.

`open_images(name)`: `photos` (the scikit-image sample photos and scikit-learn's china/flower, each as a full
square crop plus a 3x3 grid of half-size crops), `fashion-mnist[:test|train|all]` (Debian
`dataset-fashion-mnist`), or any folder of images (`folder:PATH` or just the path). A `limit` becomes part of
the name, so cached maxima of a subset never pass for the whole set.

Example:
    >>> photos = open_images("photos")
    >>> len(photos) >= 100, photos.image(0).shape[-1]
    (True, 3)
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dreamy.datasets.errors import DatasetError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
                  "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
                  "cell", "stereo_motorcycle")  # skimage.data.cat() is chelsea again
PHOTO_CLASSES: dict[str, tuple[int, ...]] = {  # ImageNet classes clearly shown in each bundled photo (by eye)
    "skimage astronaut": (812,),  # the space shuttle model
    "skimage camera": (872,),  # tripod
    "skimage chelsea": (281, 282, 285),  # tabby, tiger cat, Egyptian cat
    "skimage clock": (892,),  # wall clock
    "skimage coffee": (967, 968),  # espresso, cup
    "sklearn china": (698, 975),  # palace, lakeside
}  # every other photo shows no ImageNet class clearly (textures, micrographs, text, a dahlia, a motorbike)
IMAGE_SETS = ("photos", "fashion-mnist", "fashion-mnist:train", "fashion-mnist:all", "folder:PATH")


@dataclass
class ImageSet:
    """An indexable image set: `image(i)` is an `[H, W, 3]` uint8 array, `source(i)` says where it came from."""

    name: str
    length: int
    _image: Callable[[int], np.ndarray]
    _source: Callable[[int], str]

    def __len__(self) -> int:
        return self.length

    def image(self, index: int) -> np.ndarray:
        """The image at `index` as `[H, W, 3]` uint8."""
        if not 0 <= index < self.length:
            raise IndexError(f"image index {index} out of range for '{self.name}' ({self.length} images)")
        return self._image(index)

    def source(self, index: int) -> str:
        """A human-readable origin of image `index` (file, class label, crop box)."""
        return self._source(index)

    def tensor(self, indices: Sequence[int], size: tuple[int, int]) -> Tensor:
        """Images `indices` as `[B, 3, H, W]` floats in [0, 1], centre-cropped to a square and resized to `size`.

        Example:
            >>> open_images("photos").tensor([0, 1], (32, 32)).shape
            torch.Size([2, 3, 32, 32])
        """
        return torch.stack([to_tensor(self.image(i), size) for i in indices])

    def batches(self, batch_size: int, size: tuple[int, int], start: int = 0) -> Iterator[tuple[list[int], Tensor]]:
        """Yield `(indices, images)` batches from `start` on, images as in `tensor`."""
        for first in range(start, self.length, batch_size):
            indices = list(range(first, min(self.length, first + batch_size)))
            yield indices, self.tensor(indices, size)

    def limited(self, limit: int | None) -> "ImageSet":
        """The first `limit` images (named accordingly), or self when `limit` is None or not smaller."""
        if limit is None or limit >= self.length:
            return self
        if limit < 1:
            raise DatasetError(f"limit must be >= 1, got {limit}")
        return ImageSet(f"{self.name}[:{limit}]", limit, self._image, self._source)


def to_tensor(image: np.ndarray, size: tuple[int, int]) -> Tensor:
    """`[H, W, 3]` (or `[H, W]`) uint8 / bool / float image -> `[3, *size]` float in [0, 1], centre square crop.

    Example:
        >>> to_tensor(np.zeros((10, 20, 3), np.uint8), (8, 8)).shape
        torch.Size([3, 8, 8])
    """
    array = np.asarray(image)
    if array.dtype == np.uint8:
        values = torch.from_numpy(array.astype(np.float32) / 255.0)
    else:
        values = torch.from_numpy(array.astype(np.float32))
        if values.numel() and values.max() > 1.0:
            values = values / 255.0
    if values.ndim == 2:
        values = values[..., None]
    values = values[..., :3]
    if values.shape[-1] == 1:
        values = values.expand(*values.shape[:2], 3)
    values = values.permute(2, 0, 1)
    height, width = values.shape[1:]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    values = values[:, top:top + side, left:left + side]
    if tuple(values.shape[1:]) != tuple(size):
        values = F.interpolate(values[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return values.clamp(0, 1).contiguous()


def _rgb_uint8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).astype(np.uint8) if array.max() <= 1 else np.clip(array, 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def _crop_boxes(height: int, width: int) -> list[tuple[str, int, int, int]]:
    """A full square crop and a 3x3 grid of half-size square crops: (label, top, left, side)."""
    side = min(height, width)
    boxes = [("full", (height - side) // 2, (width - side) // 2, side)]
    half = side // 2
    for row in range(3):
        for col in range(3):
            top, left = row * (height - half) // 2, col * (width - half) // 2
            boxes.append((f"half r{row}c{col}", top, left, half))
    return boxes


def sample_photos() -> ImageSet:
    """The scikit-image sample photos plus scikit-learn's china and flower, each as 10 square crops.

    Example:
        >>> sample_photos().source(0)
        'skimage astronaut full'
    """
    try:
        import skimage.data
        from sklearn.datasets import load_sample_images
    except ImportError as error:
        raise DatasetError("the 'photos' set needs scikit-image and scikit-learn: pip install scikit-image scikit-learn") from error
    photos: list[tuple[str, np.ndarray]] = []
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        photos.append((f"skimage {name}", _rgb_uint8(image[0] if isinstance(image, tuple) else image)))
    samples = load_sample_images()
    for filename, image in zip(samples.filenames, samples.images):
        photos.append((f"sklearn {Path(filename).stem}", _rgb_uint8(image)))
    entries = [(label, photo, box) for label, photo in photos for box in _crop_boxes(*photo.shape[:2])]

    def image_at(index: int) -> np.ndarray:
        _, photo, (_, top, left, side) = entries[index]
        return photo[top:top + side, left:left + side]

    def source_at(index: int) -> str:
        label, _, (crop, top, left, side) = entries[index]
        return f"{label} {crop}" if crop == "full" else f"{label} {crop} ({left},{top},{side}px)"

    return ImageSet("photos", len(entries), image_at, source_at)


def image_classes(dataset: str, source: str) -> tuple[int, ...] | None:
    """The ImageNet classes that image `source` (an `ImageSet.source`) of set `dataset` clearly shows, from
    `PHOTO_CLASSES`: a tuple, empty when it shows none, for the sample photos (also a `photos[:N]` subset);
    None for a set that does not label its images with ImageNet classes (Fashion-MNIST, folders).

    Example:
        >>> image_classes("photos", "skimage coffee half r1c1 (120,100,200px)"), image_classes("photos", "skimage moon full")
        ((967, 968), ())
    """
    if dataset != "photos" and not dataset.startswith("photos[:"):
        return None
    return next((classes for photo, classes in PHOTO_CLASSES.items() if source.startswith(photo + " ")), ())


def set_classes(dataset: str) -> frozenset[int] | None:
    """Every ImageNet class that some image of set `dataset` shows (see `image_classes`); None for a set that does
    not label its images with ImageNet classes.

    Example:
        >>> 285 in set_classes("photos"), 1 in set_classes("photos"), set_classes("fashion-mnist")
        (True, False, None)
    """
    if image_classes(dataset, "") is None:
        return None
    return frozenset(c for classes in PHOTO_CLASSES.values() for c in classes)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist(split: str = "test", root: str | os.PathLike | None = None) -> ImageSet:
    """Fashion-MNIST (28x28 greyscale, shown as RGB) from Debian's `dataset-fashion-mnist`.

    `split` is `test` (10k), `train` (60k) or `all` (train then test). `root` defaults to
    `$DREAMY_FASHION_MNIST`, else /usr/share/datasets/fashion-mnist.

    Example:
        >>> fashion_mnist("test").source(0)
        'fashion-mnist test #0 (Ankle boot)'
    """
    directory = Path(root or os.environ.get("DREAMY_FASHION_MNIST") or FASHION_MNIST_DIR)
    splits = {"test": ["t10k"], "train": ["train"], "all": ["train", "t10k"]}
    if split not in splits:
        raise DatasetError(f"unknown Fashion-MNIST split '{split}'; use one of {sorted(splits)}")
    parts = []
    for prefix in splits[split]:
        images, labels = directory / f"{prefix}-images-idx3-ubyte.gz", directory / f"{prefix}-labels-idx1-ubyte.gz"
        if not images.exists() or not labels.exists():
            raise DatasetError(f"Fashion-MNIST not found in {directory}; install it with: apt-get install -y dataset-fashion-mnist "
                               "(or set DREAMY_FASHION_MNIST to a folder with the *-idx*-ubyte.gz files)")
        parts.append((prefix, _read_idx(images), _read_idx(labels)))
    offsets = np.cumsum([0] + [len(p[1]) for p in parts])

    def locate(index: int) -> tuple[str, np.ndarray, np.ndarray, int]:
        part = int(np.searchsorted(offsets, index, side="right") - 1)
        prefix, images, labels = parts[part]
        return prefix, images, labels, index - int(offsets[part])

    def image_at(index: int) -> np.ndarray:
        _, images, _, local = locate(index)
        return np.repeat(images[local][..., None], 3, axis=2)

    def source_at(index: int) -> str:
        prefix, _, labels, local = locate(index)
        return f"fashion-mnist {'test' if prefix == 't10k' else 'train'} #{local} ({FASHION_CLASSES[labels[local]]})"

    name = "fashion-mnist" if split == "test" else f"fashion-mnist:{split}"
    return ImageSet(name, int(offsets[-1]), image_at, source_at)


def image_folder(path: str | os.PathLike) -> ImageSet:
    """Every image file under `path` (recursively, sorted), loaded lazily with Pillow.

    Example:
        >>> import tempfile; from PIL import Image
        >>> folder = tempfile.mkdtemp(); Image.new("RGB", (5, 4)).save(f"{folder}/a.png")
        >>> len(image_folder(folder))
        1
    """
    from PIL import Image

    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"image folder '{root}' does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under '{root}'")

    def image_at(index: int) -> np.ndarray:
        with Image.open(files[index]) as handle:
            return np.asarray(handle.convert("RGB"))

    return ImageSet(f"folder:{root.resolve()}", len(files), image_at, lambda i: str(files[i].relative_to(root)))


def open_images(spec: "str | ImageSet", limit: int | None = None) -> ImageSet:
    """An image set by name (see the module docstring), optionally only its first `limit` images.

    Example:
        >>> open_images("photos", limit=5).name
        'photos[:5]'
    """
    if isinstance(spec, ImageSet):
        return spec.limited(limit)
    if spec == "photos":
        found = sample_photos()
    elif spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        found = fashion_mnist(spec.partition(":")[2] or "test")
    elif spec.startswith("folder:") or Path(spec).expanduser().is_dir():
        found = image_folder(spec.removeprefix("folder:"))
    else:
        raise DatasetError(f"unknown image set '{spec}'; use one of {', '.join(IMAGE_SETS)}")
    return found.limited(limit)
