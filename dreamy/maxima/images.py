"""Image maxima: stream an image set once through a vision model and keep the top-k images per target.

Every batch goes through one `Probe` for all targets, which stops the forward after the deepest
hooked site. Scores use the probe's defaults (conv maps averaged over space), the same number
`dreamy.vision.dream` reports as `DreamResult.activation`, so dreams and dataset maxima compare
directly. The top images are then re-run once to record their per-position score maps.

Example:
    >>> import tempfile
    >>> from dreamy.models import load
    >>> found = image_maxima(load("tiny:cnn"), ["conv2:1", "head:3"], "photos", k=3, limit=20,
    ...                      cache_dir=tempfile.mkdtemp(), progress=False)
    >>> len(found["conv2:1"].examples), found["head:3"].images.shape
    (3, (3, 32, 32, 3))
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from dreamy.core.files import fingerprint, safe_name
from dreamy.core.frozen import frozen
from dreamy.datasets import ImageSet, open_images
from dreamy.datasets.images import image_classes
from dreamy.maxima.records import Example, Maxima, MaximaResults, canonical_target, default_cache_dir, entry_dir, load_cached_maxima, save_maxima
from dreamy.maxima.topk import scan, summarize
from dreamy.models import LoadedModel
from dreamy.targets import Probe

log = logging.getLogger(__name__)


def _usable(found: Maxima | None, k: int) -> bool:
    return found is not None and found.settings.get("k", 0) >= k


def cached_or_todo(loaded: LoadedModel, targets: Sequence[str], dataset: str, k: int, cache_dir: str | os.PathLike | None,
                   refresh: bool, matching: Callable[[Maxima], bool] | None = None) -> tuple[dict[str, Maxima], list[str]]:
    """Split canonical targets into those with a usable cache entry (at least `k` examples, and one `matching`
    accepts) and those still to scan."""
    found: dict[str, Maxima] = {}
    todo: list[str] = []
    for target in dict.fromkeys(canonical_target(t) for t in targets):
        entry = None if refresh or cache_dir is None else load_cached_maxima(cache_dir, loaded.name, target, dataset)
        if _usable(entry, k) and (matching is None or matching(entry)):
            found[target] = entry
        else:
            todo.append(target)
    return found, todo


def image_maxima(
    loaded: LoadedModel,
    targets: Sequence[str],
    images: str | ImageSet = "photos",
    *,
    k: int = 9,
    batch_size: int = 32,
    limit: int | None = None,
    cache_dir: str | os.PathLike | None = "default",
    refresh: bool = False,
    progress: bool = True,
) -> MaximaResults:
    """The top-`k` images of `images` (a name for `dreamy.datasets.open_images`, or an `ImageSet`) per target.

    Returns `{canonical target spec: Maxima}`. Entries already in `cache_dir` (with at least `k`
    examples) are reused unless `refresh`; new ones are written there. `cache_dir="default"` is
    `default_cache_dir()`; None disables caching. A long scan checkpoints itself in the cache and
    resumes after an interrupt.
    """
    if loaded.preprocess is None:
        raise ValueError(f"model '{loaded.name}' has no image preprocessing; image maxima need a vision model (got kind {loaded.kind})")
    dataset = open_images(images, limit)
    cache = default_cache_dir() if cache_dir == "default" else cache_dir
    found, todo = cached_or_todo(loaded, targets, dataset.name, k, cache, refresh)
    if not todo:
        return MaximaResults(found)
    from dreamy.vision.render import patch_tokens

    probe = Probe(loaded.model, todo, patch_tokens=patch_tokens(loaded.model))  # ViT token sites: as the dreams read them
    size = tuple(loaded.preprocess.size)
    device = loaded.device

    def score_batch(items: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        batch = dataset.tensor(items, size).to(device)
        scores = probe(loaded.preprocess.normalize(batch)).scores
        return scores, torch.tensor(items), scores

    settings = {"k": k, "batch_size": batch_size, "image_size": list(size), "n_images": len(dataset)}
    checkpoint = None
    if cache is not None:
        checkpoint = entry_dir(cache, loaded.name, dataset.name, todo[0]).parent / f".scan-{safe_name('|'.join(todo))}.pt"
    with frozen(loaded.model):  # no BatchNorm statistics updated, no dropout; the model's mode restored after
        top, all_scores, seconds = scan(score_batch, len(dataset), n_targets=len(todo), k=k, batch_size=batch_size,
                                        checkpoint=checkpoint, desc=f"maxima {dataset.name}", progress=progress,
                                        fingerprint=fingerprint({"model": loaded.name, "targets": todo, **settings}))
        described = {j: _describe(loaded, probe, j, target, dataset,
                                  [int(i) for i, v in zip(top.indices[j], top.values[j]) if torch.isfinite(v)], size)
                     for j, target in enumerate(todo)}
    for j, target in enumerate(todo):
        maxima = described[j]
        maxima.stats = {"activation": summarize(all_scores[:, j]), "seconds": seconds, "n_targets_in_scan": len(todo)}
        maxima.settings = settings
        if cache is not None:
            save_maxima(maxima, cache)
        found[target] = maxima
    return MaximaResults({canonical_target(t): found[canonical_target(t)] for t in targets})


def label_classes(items: list[dict[str, Any]], dataset: str, loaded: LoadedModel) -> list[dict[str, Any]]:
    """Give each gallery item (`Maxima.gallery_items`) of image set `dataset` its `classes`: the ImageNet classes
    its photo shows, when the set labels them and `loaded` is a 1000-class (ImageNet) classifier; else unchanged.

    Example:
        >>> from dreamy.models import load
        >>> label_classes([{"label": "skimage coffee full"}], "photos", load("tiny:cnn"))  # 10 classes: not ImageNet
        [{'label': 'skimage coffee full'}]
    """
    if len(loaded.class_names or ()) != 1000:
        return items
    for item in items:
        classes = image_classes(dataset, str(item.get("label", "")))
        if classes is not None:
            item["classes"] = list(classes)
    return items


@torch.no_grad()
def _describe(loaded: LoadedModel, probe: Probe, j: int, target: str, dataset: ImageSet, indices: list[int],
              size: tuple[int, int]) -> Maxima:
    """Re-run the top images of target `j` to record their activations and per-position score maps."""
    if not indices:
        return Maxima(loaded.name, target, dataset.name, "image", [], {}, {})
    batch = dataset.tensor(indices, size).to(loaded.device)
    result = probe(loaded.preprocess.normalize(batch), keep_activations=True)
    activations = result.scores[:, j].cpu()
    maps = probe.maps(result.activations)[j].float().cpu()
    examples = [Example(rank, index, float(a), dataset.source(index)) for rank, (index, a) in enumerate(zip(indices, activations))]
    images = (batch.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return Maxima(loaded.name, target, dataset.name, "image", examples, {}, {}, images,
                  maps.numpy() if maps.ndim > 1 else None)
