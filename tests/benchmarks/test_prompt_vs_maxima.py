"""benchmarks/prompt_vs_maxima.py runs the CLI end to end on the tiny LM and scores every run with the verdict."""


def test_prompt_vs_maxima_runs_on_the_tiny_lm(run_script, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Paris is the capital of France. The sun is hot and the moon is bright at night. " * 100)
    figures = run_script("prompt_vs_maxima", "--model", "tiny:lm", "--site", "model.layers.1", "--corpus", str(corpus),
                         "--sae", str(tmp_path / "sae"), "--features", "2", "--neurons", "2",
                         "--sae-train", "features=16,k=4,tokens=1024,batch_tokens=256,window=16,heldout_tokens=64",
                         "--budget", "iters=2,tokens=4,population=2,children=4")["figures"]
    assert [row["init"] for row in figures["rows"]] == ["random", "mixed"]
    for row, run in zip(figures["rows"], figures["runs"]):
        assert row["targets"] == 4 and row["exit"] == 0 and row["no verdict"] == 0
        beaten = [t for t in run["targets"] if t["verdict"]["beats"]]
        assert row["beats"] == len(beaten) == row["features beaten"] + row["neurons beaten"]
        assert row["winners not near copies"] == sum(t["verdict"]["beats_without_copying"] for t in beaten)
        assert all(t["verdict"]["n_tokens"] == 4 for t in run["targets"])
    assert (tmp_path / "sae" / "cfg.json").exists()  # trained by `dream sae-train` inside the benchmark
