"""Multifaceted feature visualization (Nguyen et al., 2016): one dream per facet of a target.

A unit often responds to several kinds of input (a "car" logit: fronts, sides, interiors). We cluster
the target site's activations on its top dataset images with k-means, start one dream from the mean
image of each cluster, and optimize from there (`render.dream(param=ImageParam(starts))`).

Example:
    >>> from dreamy.models import load
    >>> images = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> starts = facet_starts(load("tiny:cnn"), "conv3:0", images, k=3, seed=0)
    >>> starts.shape
    torch.Size([3, 3, 32, 32])
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamy.loop import make_generator
from dreamy.models import LoadedModel
from dreamy.targets import Probe, Target, parse


def kmeans(points: Tensor, k: int, *, seed: int = 0, iters: int = 50) -> Tensor:
    """Cluster `[n, d]` points into `k` groups (k-means++ start); returns labels `[n]`.

    Example:
        >>> pts = torch.cat([torch.zeros(5, 2), torch.ones(5, 2) * 10])
        >>> labels = kmeans(pts, 2)
        >>> len(set(labels[:5].tolist())), len(set(labels[5:].tolist())), labels[0] != labels[5]
        (1, 1, tensor(True))
    """
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the number of points), got {k}")
    gen = make_generator(seed)
    centers = points[torch.randint(n, (1,), generator=gen)]
    while centers.shape[0] < k:
        dist = torch.cdist(points, centers).min(dim=1).values ** 2
        probs = dist / dist.sum() if dist.sum() > 0 else torch.full((n,), 1.0 / n)
        centers = torch.cat([centers, points[torch.multinomial(probs, 1, generator=gen)]])
    labels = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(points, centers).argmin(dim=1)
        if torch.equal(new, labels) and _ > 0:
            break
        labels = new
        for j in range(k):
            members = points[labels == j]
            if len(members):
                centers[j] = members.mean(dim=0)
    return labels


def facet_starts(loaded: LoadedModel, target: str | Target, images: Tensor, *, k: int = 4, seed: int = 0,
                 size: tuple[int, int] | None = None) -> Tensor:
    """Mean image of each of `k` activation clusters of `images` (`[n, 3, H, W]` in [0, 1], e.g. the
    target's top dataset images), resized to `size` (default: the model's input size); `[k, 3, H, W]`."""
    target = parse(target)
    preprocess = loaded.preprocess
    size = size or (preprocess.size if preprocess else tuple(images.shape[-2:]))
    probe = Probe(loaded.model, [target])
    site = str(target.sites[0])
    with torch.no_grad():
        model_input = preprocess.normalize(images.to(loaded.device)) if preprocess else images.to(loaded.device)
        acts = probe(model_input, keep_activations=True).activations[site]
    features = acts.flatten(2).mean(dim=2) if acts.ndim == 4 else acts.flatten(1)
    labels = kmeans(features.cpu().float(), k, seed=seed)
    resized = torch.nn.functional.interpolate(images.cpu(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return torch.stack([resized[labels == j].mean(dim=0) for j in range(k)])
