"""benchmarks/dataset_scan.py runs on the tiny models."""

import pytest

from pathlib import Path

from dreamy import datasets


def test_dataset_scan_runs_on_tiny_models(run_script, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat and the dog ran in the park. " * 200)
    if not (Path(datasets.FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian dataset-fashion-mnist is not installed")
    rows = run_script("dataset_scan", "--vision-model", "tiny:cnn", "--lm-model", "tiny:lm", "--corpus", str(corpus))["figures"]["rows"]
    assert [r["scan"] for r in rows] == ["images", "images", "text"]
    for row in rows:
        assert 0 < row["scan s"] <= row["total s"] and row["GFLOP/item"] > 0
        assert row["items/s"] == pytest.approx(row["items"] / row["scan s"])
        assert row["GFLOP/s"] == pytest.approx(row["items/s"] * row["GFLOP/item"])
