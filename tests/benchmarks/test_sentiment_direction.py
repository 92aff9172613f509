"""benchmarks/sentiment_direction.py runs on tiny:lm and its figures follow from each other and from its files."""

import json

import pytest
import torch

from dreamy.directions.ablation import share_lost


def test_sentiment_direction_runs_on_the_tiny_lm(run_script, tmp_path):
    out = tmp_path / "mood.pt"
    record = run_script("sentiment_direction", "--model", "tiny:lm", "--answers", " the", " a", "--iters", "2",
                        "--tokens", "3", "--dream-minutes", "0.05", "--random-directions", "1", "--out", str(out))
    figures = record["figures"]
    assert figures["site"] == "model.layers.1" and figures["reduce"] == "mean"
    assert figures["counts"]["fitted_positive"] == 64 and figures["counts"]["heldout_positive"] == 32
    saved = torch.load(out)
    assert sorted(saved) == ["logistic", "mean_diff", "pca"]
    for pair, cosine in figures["cosines"].items():
        a, b = pair.split("/")
        assert cosine == pytest.approx(float(saved[a] @ saved[b]), abs=1e-5)
    sidecar = json.loads((tmp_path / "mood.pt.json").read_text())
    assert sidecar["methods"]["pca"]["heldout_accuracy"] == figures["heldout_accuracy"]["pca"]
    for where in ("site", "site_and_later_blocks"):
        check = figures["ablation"][where]
        assert check["n_pairs"] == 32 and len(check["accuracy_random"]) == 1
        assert check["share_lost"] == share_lost(check["accuracy_clean"], check["accuracy_ablated"])
    assert figures["ablation"]["site"]["site"] == "model.layers.1"
    assert figures["ablation"]["site_and_later_blocks"]["site"] == "model.layers.1"  # the last block: no later ones
    assert figures["ablation"]["site"]["accuracy_clean"] == figures["ablation"]["site_and_later_blocks"]["accuracy_clean"]
    dream = figures["dream"]
    assert dream["spec"].replace("'", "").endswith("mood.pt#mean_diff/mean") and dream["frontier"]
    assert dream["frontier"][0]["activation"] == max(p["activation"] for p in dream["frontier"])
    assert figures["seconds"]["total"] >= figures["seconds"]["learn"] + figures["seconds"]["dream"]
    assert figures["under_5_minutes"] == (figures["seconds"]["total"] < 300)
