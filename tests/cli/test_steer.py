"""`dream prompt --steer`: steered continuations and the three scores on each card, scores in the index."""

import json

import pytest

from dreamy.cli import main
from dreamy.steering import input_score, site_norm


def test_steer_writes_continuations_and_scores_onto_records_and_cards(tmp_path, tiny_lm):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat. A dog ran in the park. Rain fell on the quiet town all night.\n" * 4)
    out = tmp_path / "out"
    assert main(["prompt", "--model", "tiny:lm", "--target", "model.layers.0.mlp.down_proj@in:3", "--target",
                 "model.layers.1:7", "--target", "logits:5", "--iters", "1", "--tokens", "3", "--population", "2",
                 "--children", "4", "--maxima", str(corpus), "--steer", "--steer-prompts", "2", "--steer-tokens", "4",
                 "--steer-scale", "2", "--out", str(out), "--quiet"]) == 0
    by_target = {r["target"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    assert list(by_target) == ["model.layers.0.mlp.down_proj@in:3", "model.layers.1:7", "logits:5"]  # order kept
    neuron = by_target["model.layers.0.mlp.down_proj@in:3"]["steering"]
    assert len(neuron["continuations"]) == 2 and neuron["settings"]["new_tokens"] == 4
    assert neuron["alpha"] == pytest.approx(2 * site_norm(tiny_lm, "model.layers.0.mlp.down_proj",
                                                          ("From my experience,", "I think that")))
    windows = by_target["model.layers.0.mlp.down_proj@in:3"]["maxima"]
    assert neuron["input_score"] == input_score([t[1] for t in neuron["promoted"]], windows)
    assert neuron["fluency_cost"] == pytest.approx(neuron["xent_steered"] - neuron["xent_unsteered"])
    assert "steering" in by_target["model.layers.1:7"]
    assert by_target["logits:5"]["steering_error"].startswith("cannot steer target 'logits:5'")
    page = (out / "index.html").read_text()
    assert page.count("steering check (Arad et al. 2025)") == 2 and "no steering check: cannot steer" in page
    assert "dreamySort('input')" in page and f'data-score-output="{neuron["output_score"]}"' in page


def test_bad_steer_settings_are_refused_before_the_model_loads(tmp_path, capsys):
    code = main(["prompt", "--model", "tiny:lm", "--target", "model.layers.1:3", "--steer", "--steer-alpha", "nan",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "--steer: SteerConfig.alpha must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()
