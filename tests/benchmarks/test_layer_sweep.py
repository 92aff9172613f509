"""benchmarks/layer_sweep.py runs on the tiny models, with and without a random-init SmolLM2-shaped model."""

import pytest


def test_layer_sweep_packs_prompts_and_images_on_tiny_models(run_script):
    record = run_script("layer_sweep", "--lm", "tiny:lm", "--lm-site", "model.layers.1.mlp.down_proj", "--packs", "1,3",
                        "--iters", "1", "--model", "tiny:cnn", "--image-packs", "1,2", "--steps", "1", "--size", "32")
    prompt, image = record["figures"]["prompt"], record["figures"]["image"]
    one, three = prompt["rows"]
    assert (one["pack"], three["pack"]) == (1, 3) and one["per_target_cost_vs_pack_1"] == pytest.approx(1.0)
    assert three["first_target_same_as_alone"] and three["last_target_same_as_alone"]  # each target as alone
    assert three["neuron_iterations_per_s"] == pytest.approx(3 / three["seconds"])
    assert three["per_target_cost_vs_pack_1"] == pytest.approx(three["s_per_neuron_iteration"] / one["s_per_neuron_iteration"])
    assert [row["pack"] for row in image["rows"]] == [1, 2]
    assert image["rows"][1]["target_steps_per_s"] == pytest.approx(2 / image["rows"][1]["seconds"])
    assert image["first_target_vs_alone"]["same"]
    assert record["settings"]["budget"] == {"n_tokens": 12, "population": 2, "children": 8}


def test_layer_sweep_times_a_random_init_llama_of_the_smollm2_shape(run_script, monkeypatch):
    from benchmarks import common
    from tests.fixtures import cached

    # the real shape is too slow for a smoke test: a two-layer Llama of tiny width, with the tiny LM's tokenizer
    monkeypatch.setitem(common.LLAMA_SHAPES, "llama-135m-shape", dict(hidden_size=32, intermediate_size=64,
                        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
    monkeypatch.setattr(common, "load_tokenizer", lambda folder: cached("tiny:lm").tokenizer)
    record = run_script("layer_sweep", "--kind", "prompt", "--timing-only", "--lm-site", "model.layers.1.mlp.down_proj@in",
                        "--packs", "1,2", "--iters", "1", result="layer_sweep_timing")
    rows = record["figures"]["prompt"]["rows"]
    assert record["figures"]["prompt"]["settings"]["model"] == "random-init llama-135m-shape"
    assert [row["pack"] for row in rows] == [1, 2] and rows[1]["first_target_same_as_alone"]
