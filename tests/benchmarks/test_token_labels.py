"""benchmarks/token_labels.py runs on tiny:lm (two targets, 2 steps) and writes its table."""


def test_token_labels_runs_on_the_tiny_lm(run_script):
    figures = run_script("token_labels", "--model", "tiny:lm", "--targets", "model.layers.1:3", "logits:4",
                         "--corpus", "fortunes", "--max-words", "3000", "--windows", "128", "--window-tokens", "8",
                         "--steps", "2", "--answers", " the", " a")["figures"]
    assert [row["target"] for row in figures["rows"]] == ["model.layers.1:3", "logits:4"]
    assert all(0.0 <= row["label acc"] <= 1.0 and 0.0 <= row["baseline rule acc"] <= 1.0 for row in figures["rows"])
    assert figures["summary"]["labelled"] == 2 and len(figures["labels"]) == 2
