"""benchmarks/tcav_photos.py runs on tiny:cnn and its concepts come from the photos' sources."""

import pytest

from benchmarks.tcav_photos import splits
from dreamy.datasets import open_images


def test_the_concepts_split_the_photos_by_source():
    photos = open_images("photos")
    textures = splits(photos, "textures")
    assert textures["photos"] == ["brick", "grass", "gravel"] and len(textures["concept"]) == 30
    assert {photos.source(i).split()[1] for i in textures["class"]} == {"chelsea"}
    assert not set(textures["concept"]) & set(textures["pool"]) and not set(textures["class"]) & set(textures["pool"])
    grayscale = splits(photos, "grayscale")
    assert "camera" in grayscale["photos"] and "astronaut" not in grayscale["photos"]
    assert len(grayscale["concept"]) + len(grayscale["class"]) + len(grayscale["pool"]) == len(photos)


def test_tcav_photos_runs_on_the_tiny_cnn(run_script):
    record = run_script("tcav_photos", "--model", "tiny:cnn", "--target", "logits:1", "--site", "conv3",
                        "--concept", "textures", "--limit", "100")
    (row,), (detail,) = record["figures"]["rows"], record["figures"]["records"]
    assert (row["concept"], row["site"]) == ("textures", "conv3")
    assert detail["n_concept"] == 30 and detail["n_pool"] == 60 and detail["n_class_examples"] == 10
    assert row["tcav_score"] == pytest.approx(sum(detail["scores"]) / 10)
    assert row["random_score"] == pytest.approx(sum(detail["random_scores"]) / 10)
    assert 0 <= row["p_value"] <= 1 and 0 <= row["null_p_value"] <= 1
    assert detail["significant"] == (row["p_value"] < 0.05)
