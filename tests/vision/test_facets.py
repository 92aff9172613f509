"""Facets start from clusters of the target's top images."""

import pytest
import torch

from dreamy.vision.facets import dream_facets, facet_starts, kmeans
from dreamy.vision.param import ImageParam
from dreamy.vision.render import dream
from dreamy.vision.regularizers import center_bias


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


def test_kmeans_never_leaves_a_cluster_empty():
    points = torch.cat([torch.zeros(8, 2), torch.ones(1, 2)])  # many duplicates
    labels = kmeans(points, 3, seed=0)
    assert sorted(set(labels.tolist())) == [0, 1, 2]
    with pytest.raises(ValueError, match="k must be in 1..9"):
        kmeans(points, 10)


def test_dream_facets_gives_one_centred_dream_per_facet(tiny_cnn):
    photos = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = dream_facets(tiny_cnn, "head:3", photos, k=3, steps=10, progress=False)
    assert result.images.shape == (3, 3, 32, 32) and result.row_targets == [0, 0, 0]
    assert result.settings["facets"] == 3 and result.settings["regularizers"] == {"center": 1.0}
    assert (result.history[-1] > result.history[0]).all()
    free = dream_facets(tiny_cnn, "head:3", photos, k=3, steps=10, center=0.0, progress=False)
    assert free.settings["regularizers"] == {"center": 0.0}
    # same starts, seeds and steps: only the centre bias differs, and it pulls every facet's energy inward
    assert (center_bias(result.images) < center_bias(free.images)).all()
