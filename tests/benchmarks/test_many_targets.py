"""benchmarks/many_targets.py runs on the tiny models."""


def test_many_targets_runs_on_tiny_cnn(run_script):
    record = run_script("many_targets", "--kind", "image", "--model", "tiny:cnn", "--site", "conv3", "--targets", "2",
                        "--steps", "2", "--size", "32")
    assert record["figures"]["image"]["speedup"] > 0 and "prompt" not in record["figures"]


def test_many_targets_packs_prompts_on_tiny_lm(run_script):
    record = run_script("many_targets", "--kind", "prompt", "--lm", "tiny:lm", "--lm-site", "model.layers.1.mlp.down_proj",
                        "--lm-targets", "2", "--iters", "1")
    prompt = record["figures"]["prompt"]
    assert prompt["same_prompts"] == 2  # packed and one-at-a-time find the same prompts
    assert [row["targets"] for row in prompt["rows"]] == [2, 2]
