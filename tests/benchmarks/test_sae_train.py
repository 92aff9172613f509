"""benchmarks/sae_train.py runs on tiny:lm and its figures follow from each other."""

import pytest

TEXT = " ".join(f"The cat {i} sat on the mat and the dog ran in park {i % 7}." for i in range(150))


def test_sae_train_runs_on_the_tiny_lm(run_script, tmp_path):
    corpus = tmp_path / "toy.txt"
    corpus.write_text(TEXT)
    record = run_script("sae_train", "--model", "tiny:lm", "--corpus", str(corpus), "--tokens", "1024", "--features", "64",
                        "--k", "4", "--batch-tokens", "256", "--window", "16", "--heldout-tokens", "64")
    figures, settings = record["figures"], record["settings"]
    assert settings["site"] == "model.layers.0" and settings["tokens"] == 1024
    assert figures["train_tokens"] == 1024 and figures["heldout_tokens"] == 64
    assert figures["tokens_per_second"] == pytest.approx(figures["train_tokens"] / figures["train_seconds"])
    assert figures["minutes_per_million_tokens"] == pytest.approx(1e6 / figures["tokens_per_second"] / 60)
    assert figures["sae_gflop_per_token"] == pytest.approx((2 * 64 * 64 + 8 * 4 * 64) / 1e9)
    assert 0 < figures["lm_gflop_per_token"] < 1e-3
    per_token = figures["lm_gflop_per_token"] + figures["sae_gflop_per_token"]
    assert figures["achieved_gflops"] == pytest.approx(figures["tokens_per_second"] * per_token)
    assert figures["share_of_peak"] == pytest.approx(figures["achieved_gflops"] / figures["peak_gflops"])
    assert figures["peak_gflops"] == max(figures["peak"]["runs_gflops"])
    assert figures["meets_targets"]["fve"] == (figures["fve"] >= 0.7)
    assert figures["meets_targets"]["dead"] == (figures["dead_fraction"] < 0.1)
    assert figures["loss_recovered"] == pytest.approx((figures["xentropy_zero"] - figures["xentropy_spliced"])
                                                      / (figures["xentropy_zero"] - figures["xentropy_clean"]))
