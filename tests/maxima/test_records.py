"""Tests for dreamy.maxima.records: the maxima cache the gallery reads."""

import json
import os
import time
from pathlib import Path

import numpy as np

from dreamy.core.files import safe_name as slug
from dreamy.maxima.records import Example, Maxima, entry_dir, list_cached_maxima, load_cached_maxima, save_maxima


def _maxima(target="conv2:1", dataset="photos", activation=2.0, k=3):
    examples = [Example(r, 10 + r, activation - r, f"img {r}") for r in range(k)]
    images = np.random.default_rng(0).integers(0, 255, (k, 8, 8, 3), dtype=np.uint8)
    maps = np.random.default_rng(1).standard_normal((k, 4, 4)).astype(np.float32)
    return Maxima("tiny:cnn", target, dataset, "image", examples, {"activation": {"max": activation}}, {"k": k}, images, maps)


def test_round_trip_keeps_examples_arrays_and_writes_pngs(tmp_path):
    original = _maxima()
    folder = save_maxima(original, tmp_path)
    loaded = load_cached_maxima(tmp_path, "tiny:cnn", "conv2:1", "photos")
    assert loaded.examples == original.examples and loaded.stats == original.stats
    assert np.array_equal(loaded.images, original.images) and np.array_equal(loaded.maps, original.maps)
    assert sorted(p.name for p in folder.iterdir()) == ["arrays.npz", "example_00.png", "example_01.png",
                                                        "example_02.png", "maxima.json"]
    assert json.loads((folder / "maxima.json").read_text())["best_activation"] == 2.0
    assert loaded.image_tensor().shape == (3, 3, 8, 8)


def test_without_a_dataset_the_most_recent_entry_wins(tmp_path):
    save_maxima(_maxima(dataset="photos", activation=1.0), tmp_path)
    old = entry_dir(tmp_path, "tiny:cnn", "photos", "conv2:1") / "maxima.json"
    os.utime(old, (time.time() - 100, time.time() - 100))
    save_maxima(_maxima(dataset="fashion-mnist", activation=5.0), tmp_path)
    assert load_cached_maxima(tmp_path, "tiny:cnn", "conv2:1").dataset == "fashion-mnist"
    assert load_cached_maxima(tmp_path, "tiny:cnn", "conv2:1", "photos").best_activation == 1.0
    assert load_cached_maxima(tmp_path, "tiny:cnn", "conv2:2") is None
    assert [m.dataset for m in list_cached_maxima(tmp_path, "tiny:cnn")] == ["photos", "fashion-mnist"]


def test_spec_spelling_and_colliding_names_map_to_distinct_or_same_entries(tmp_path):
    save_maxima(_maxima(target="conv2:1+conv3:2"), tmp_path)
    assert load_cached_maxima(tmp_path, "tiny:cnn", "conv2:1 + conv3:2") is not None  # canonical spec
    assert slug("a:b") != slug("a_b")


def test_an_entry_without_its_record_is_incomplete(tmp_path):
    folder = save_maxima(_maxima(), tmp_path)
    (folder / "maxima.json").unlink()
    assert load_cached_maxima(tmp_path, "tiny:cnn", "conv2:1", "photos") is None
    assert not [p for p in folder.iterdir() if ".tmp" in p.name or p.name.startswith("maxima.json.")]


def test_best_below_picks_the_strongest_fluent_window():
    m = Maxima("m", "t", "d", "text", [Example(0, 1, 9.0, "", xentropy=6.0)], {}, {},
               frontier=[Example(0, 1, 9.0, "", xentropy=6.0), Example(1, 2, 4.0, "", xentropy=3.0)])
    assert m.best_below(5.0).activation == 4.0
    assert m.best_below(1.0) is None


def test_gallery_items_point_at_the_cached_pngs(tmp_path):
    save_maxima(_maxima(), tmp_path)
    items = load_cached_maxima(tmp_path, "tiny:cnn", "conv2:1").gallery_items()
    assert [i["activation"] for i in items] == [2.0, 1.0, 0.0]
    assert all(Path(i["image"]).is_file() and i["label"].startswith("img") for i in items)
