"""Multifaceted feature visualization (Nguyen et al., 2016): one dream per facet of a target.

A unit often responds to several kinds of input (a "car" logit: fronts, sides, interiors). We cluster
the hooked activations (at the target's site) of its top dataset images with k-means, start one dream
from the mean image of each cluster, and optimize from there with the paper's centre bias.
The top images come from the caller (e.g. `dreamy.maxima`), as a tensor.

Example:
    >>> from dreamy.models import load
    >>> images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> starts = facet_starts(load("tiny:cnn"), "conv3:0", images, k=3, seed=0)
    >>> starts.shape
    torch.Size([3, 3, 32, 32])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamy.core.stepping import make_generator
from dreamy.models import LoadedModel
from dreamy.targets import Probe, Target, parse
from dreamy.vision.config import DreamConfig
from dreamy.vision.param import ImageParam
from dreamy.vision.render import DreamResult, dream


def kmeans(points: Tensor, k: int, *, seed: int = 0, iters: int = 50) -> Tensor:
    """Cluster `[n, d]` points into `k` non-empty groups (k-means++ start); returns labels `[n]`.

    Example:
        >>> pts = torch.cat([torch.zeros(5, 2), torch.ones(5, 2) * 10])
        >>> labels = kmeans(pts, 2)
        >>> len(set(labels[:5].tolist())), len(set(labels[5:].tolist())), bool(labels[0] != labels[5])
        (1, 1, True)
    """
    points = points.float()
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the number of points), got {k}")
    gen = make_generator(seed)
    centers = points[torch.randint(n, (1,), generator=gen)]
    while centers.shape[0] < k:
        dist = torch.cdist(points, centers).min(dim=1).values ** 2
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full((n,), 1.0 / n)
        centers = torch.cat([centers, points[torch.multinomial(probs, 1, generator=gen)]])
    labels = torch.full((n,), -1, dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(points, centers).argmin(dim=1)
        for j in range(k):  # an empty cluster takes the point farthest from its own centre
            if not (new == j).any():
                far = torch.cdist(points, centers).gather(1, new[:, None]).squeeze(1)
                counts = torch.bincount(new, minlength=k)
                far[counts[new] <= 1] = -1.0  # never empty another cluster
                new[far.argmax()] = j
        if torch.equal(new, labels):
            break
        labels = new
        centers = torch.stack([points[labels == j].mean(dim=0) for j in range(k)])
    return labels


def facet_starts(loaded: LoadedModel, target: str | Target, images: Tensor, *, k: int = 4, seed: int = 0,
                 size: tuple[int, int] | None = None) -> Tensor:
    """Mean image of each of `k` activation clusters of `images` (`[n, 3, H, W]` in [0, 1], e.g. the
    target's top dataset images), resized to `size` (default: the model's input size); `[k, 3, H, W]`,
    largest cluster first.

    Example:
        >>> from dreamy.models import load
        >>> facet_starts(load("tiny:cnn"), "head:1", torch.rand(6, 3, 40, 40), k=2).shape
        torch.Size([2, 3, 32, 32])
    """
    target = parse(target)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"facet_starts needs [n, 3, H, W] images in [0, 1], got shape {tuple(images.shape)}")
    preprocess = loaded.preprocess
    size = size or (preprocess.size if preprocess else tuple(images.shape[-2:]))
    probe = Probe(loaded.model, [target])
    site = str(target.sites[0])
    with torch.no_grad():
        batch = images.to(loaded.device).float()
        acts = probe(preprocess.normalize(batch) if preprocess else batch, keep_activations=True).activations[site]
    features = acts.flatten(2).mean(dim=2) if acts.ndim == 4 else acts.flatten(1)
    labels = kmeans(features.cpu(), k, seed=seed)
    order = torch.bincount(labels, minlength=k).argsort(descending=True, stable=True)
    resized = F.interpolate(images.detach().cpu().float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return torch.stack([resized[labels == j].mean(dim=0) for j in order.tolist()])


def dream_facets(loaded: LoadedModel, target: str | Target, images: Tensor, config: DreamConfig | None = None, *,
                 k: int = 4, center: float = 1.0, progress: bool = True, **overrides: Any) -> DreamResult:
    """Multifaceted visualization: `k` dreams of `target`, each started from one facet's mean image
    and optimized with the centre bias (weight `center`) besides `config`'s regularizers; other keywords
    override `config` (`DreamConfig`) as in `render.dream`. The config's seed also seeds the facets.

    Example:
        >>> from dreamy.models import load
        >>> photos = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        >>> dream_facets(load("tiny:cnn"), "head:3", photos, k=2, steps=2, progress=False).images.shape
        torch.Size([2, 3, 32, 32])
    """
    config = DreamConfig.build(config, **overrides)
    starts = facet_starts(loaded, target, images, k=k, seed=config.seed)
    result = dream(loaded, [target], config, param=ImageParam(starts, device=loaded.device), n_per_target=k,
                   regularizers={"center": center, **config.regularizers}, progress=progress)
    result.settings["facets"] = k
    return result


__all__ = ["dream_facets", "facet_starts", "kmeans"]
