"""benchmarks/steering_scores.py runs on tiny:lm with a small random SAE and its figures follow from its results."""

import json

import pytest
import torch
from safetensors.torch import save_file

from benchmarks.steering_scores import spearman


@pytest.fixture
def tiny_sae(tmp_path):
    folder = tmp_path / "sae"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"d_in": 64, "d_sae": 32, "architecture": "topk", "k": 4,
                                                 "hook_name": "model.layers.1"}))
    g = torch.Generator().manual_seed(0)
    w_dec = torch.randn(32, 64, generator=g)
    save_file({"W_enc": torch.randn(64, 32, generator=g), "b_enc": torch.zeros(32),
               "W_dec": w_dec / w_dec.norm(dim=1, keepdim=True), "b_dec": torch.zeros(64)},
              str(folder / "sae_weights.safetensors"))
    return folder


def test_steering_scores_runs_on_the_tiny_lm(run_script, tiny_sae, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat. A dog ran in the park and the bird sang. " * 20)
    record = run_script("steering_scores", "--model", "tiny:lm", "--sae", str(tiny_sae), "--features", "3",
                        "--candidates", "6", "--corpus", str(corpus), "--max-words", "300", "--windows", "4",
                        "--window", "8", "--prompts", "2", "--new-tokens", "3")
    figures = record["figures"]
    assert figures["site"] == "model.layers.1" and len(figures["features"]) == 3 == len(figures["results"])
    assert sum(figures["cooccurrence"].values()) == 3
    for row, result in zip(figures["features"], figures["results"]):
        assert result["target"].endswith(f"#{row['feature']}") and 1 <= result["n_windows"] <= 4
        assert row["output_score"] == result["output_score"] and row["input_score"] == result["input_score"]
        assert 0.0 <= row["output_score"] <= 1.0 and (row["input_score"] * result["n_windows"]) % 1 == pytest.approx(0)
        assert result["alpha"] == pytest.approx(figures["alpha"])
    high = [(r["input_score"] >= 0.5, r["output_score"] >= 0.1) for r in figures["features"]]
    assert figures["cooccurrence"]["high_input_high_output"] == sum(a and b for a, b in high)
    assert figures["strength"]["paper_alpha"] == pytest.approx(10 * figures["strength"]["max_sae_activation"])


def test_spearman_matches_hand_computed_values():
    assert spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]) == 1.0
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == -1.0
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
