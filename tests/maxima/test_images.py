"""Tests for dreamy.maxima.images: top-k images per target from one streamed, early-exiting pass."""

import pytest
import torch

from dreamy.datasets import open_images
from dreamy.maxima import image_maxima, load_cached_maxima


def _count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *args: calls.append(1))
    return calls, handle


def test_top_images_match_a_brute_force_scan(tiny_cnn, tmp_path):
    photos = open_images("photos", limit=30)
    found = image_maxima(tiny_cnn, ["conv2:1", "head:3"], photos, k=4, batch_size=7, cache_dir=tmp_path, progress=False)
    images = tiny_cnn.preprocess.normalize(photos.tensor(range(30), (32, 32)))
    with torch.no_grad():
        channel = tiny_cnn.model.conv2(tiny_cnn.model.conv1(images))[:, 1].mean(dim=(1, 2))
        logit = tiny_cnn.model(images)[:, 3]
    for key, manual in (("conv2:1", channel), ("head:3", logit)):
        maxima = found[key]
        assert [e.index for e in maxima.examples] == manual.topk(4).indices.tolist()
        assert [e.activation for e in maxima.examples] == pytest.approx(manual.topk(4).values.tolist(), rel=1e-4, abs=1e-6)
        assert maxima.stats["activation"]["count"] == 30
        assert maxima.stats["activation"]["max"] == pytest.approx(manual.max().item(), rel=1e-4, abs=1e-6)
        assert maxima.examples[0].source == photos.source(maxima.examples[0].index)
    conv = found["conv2:1"]
    assert conv.maps.shape == (4, 16, 16)
    assert conv.maps.mean(axis=(1, 2)) == pytest.approx([e.activation for e in conv.examples], rel=1e-4, abs=1e-6)
    assert found["head:3"].maps is None and found["head:3"].images.shape == (4, 32, 32, 3)


def test_the_scan_stops_after_the_deepest_hooked_site(tiny_cnn):
    calls, handle = _count_calls(tiny_cnn.model.head)
    try:
        image_maxima(tiny_cnn, ["conv1:0"], "photos", k=2, limit=10, cache_dir=None, progress=False)
    finally:
        handle.remove()
    assert calls == []


def test_cached_entries_are_reused_until_refresh_or_a_larger_k(tiny_cnn, tmp_path):
    kwargs = dict(limit=12, cache_dir=tmp_path, progress=False)
    first = image_maxima(tiny_cnn, ["conv3:2"], "photos", k=3, **kwargs)
    assert load_cached_maxima(tmp_path, "tiny:cnn", "conv3:2", "photos[:12]").examples == first["conv3:2"].examples
    calls, handle = _count_calls(tiny_cnn.model.conv1)
    try:
        again = image_maxima(tiny_cnn, ["conv3:2"], "photos", k=2, **kwargs)
        assert calls == [] and again["conv3:2"].examples == first["conv3:2"].examples
        image_maxima(tiny_cnn, ["conv3:2"], "photos", k=2, refresh=True, **kwargs)
        assert calls
        calls.clear()
        bigger = image_maxima(tiny_cnn, ["conv3:2"], "photos", k=5, **kwargs)
        assert calls and len(bigger["conv3:2"].examples) == 5
    finally:
        handle.remove()
    assert not list(tmp_path.rglob(".scan-*"))  # the checkpoint is gone after a finished scan


def test_a_language_model_is_refused_with_a_clear_error(tiny_lm):
    with pytest.raises(ValueError, match="vision model"):
        image_maxima(tiny_lm, ["model.layers.0.mlp.down_proj:1"], "photos", cache_dir=None)


def test_maxima_items_of_the_photos_carry_their_classes_for_an_imagenet_classifier_only(tiny_cnn, tmp_path):
    import dataclasses

    from dreamy.runs.enrich import MaximaStep, maxima_of

    imagenet_like = dataclasses.replace(tiny_cnn, class_names=[f"c{i}" for i in range(1000)])
    step = MaximaStep("photos", {"k": 12, "cache_dir": tmp_path / "cache"})
    records = [{"kind": "image", "target": "head:3"}]
    items = maxima_of(imagenet_like, records, step, tmp_path / "a", {"kind": "image"}, progress=False)[0]["maxima"]
    assert all(isinstance(item["classes"], list) for item in items)
    assert all((285 in item["classes"]) == item["label"].startswith("skimage chelsea ") for item in items)
    plain = maxima_of(tiny_cnn, records, step, tmp_path / "b", {"kind": "image"}, progress=False)[0]["maxima"]
    assert not any("classes" in item for item in plain)  # a 10-class model's classes are not ImageNet's
