"""benchmarks/many_targets.py runs on the tiny models."""

import pytest


def test_many_targets_runs_on_tiny_cnn(run_script):
    record = run_script("many_targets", "--kind", "image", "--model", "tiny:cnn", "--site", "conv3", "--targets", "2",
                        "--steps", "2", "--size", "32")
    image = record["figures"]["image"]
    packed, single = image["rows"]
    assert "prompt" not in record["figures"] and packed["targets"] == single["targets"] == 2
    assert image["speedup"] == pytest.approx(single["seconds"] / packed["seconds"])
    assert packed["s_per_target"] == pytest.approx(packed["seconds"] / 2)


def test_many_targets_packs_prompts_on_tiny_lm(run_script):
    record = run_script("many_targets", "--kind", "prompt", "--lm", "tiny:lm", "--lm-site", "model.layers.1.mlp.down_proj",
                        "--lm-targets", "2", "--iters", "1")
    prompt = record["figures"]["prompt"]
    assert prompt["same_prompts"] == 2  # packed and one-at-a-time find the same prompts
    assert [row["targets"] for row in prompt["rows"]] == [2, 2]
