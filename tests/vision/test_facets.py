"""Facets start from clusters of the target's top images."""

import torch

from dreamy.vision.facets import facet_starts, kmeans
from dreamy.vision.param import ImageParam
from dreamy.vision.render import dream


def test_kmeans_separates_clear_clusters():
    gen = torch.Generator().manual_seed(0)
    pts = torch.cat([torch.randn(10, 3, generator=gen), torch.randn(10, 3, generator=gen) + 20])
    labels = kmeans(pts, 2, seed=1)
    assert len(set(labels[:10].tolist())) == 1 and len(set(labels[10:].tolist())) == 1 and labels[0] != labels[10]


def test_facets_are_cluster_means_and_dream_on(tiny_cnn):
    dark = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.2
    bright = 0.8 + torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 0.2
    starts = facet_starts(tiny_cnn, "conv1:0", torch.cat([dark, bright]), k=2, seed=0)
    means = sorted(starts.mean(dim=(1, 2, 3)).tolist())
    assert means[0] < 0.2 and means[1] > 0.8
    result = dream(tiny_cnn, ["conv1:0"], param=ImageParam(starts), n_per_target=2, steps=5, progress=False)
    assert result.images.shape == (2, 3, 32, 32)
