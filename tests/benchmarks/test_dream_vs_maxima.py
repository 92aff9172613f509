"""benchmarks/dream_vs_maxima.py runs on the tiny models."""


def test_dream_vs_maxima_runs_on_tiny_models(run_script, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Paris is the capital of France. The sun is hot and the moon is bright at night. " * 100)
    figures = run_script("dream_vs_maxima", "--vision-model", "tiny:cnn", "--lm-model", "tiny:lm", "--corpus", str(corpus),
                         "--images", "photos", "--epo-iters", "2", "--steps", "8", "--cache-dir", str(tmp_path / "cache"))["figures"]
    vision, text = figures["vision"], figures["text"]
    assert len(vision["rows"]) == 8 and 0 <= vision["share_beating_max"] <= 1
    assert all(r["beats"] == (r["dream"] > r["dataset max"]) for r in vision["rows"])
    assert all("EPO start" in r for r in text["rows"])
    assert len(text["rows"]) == 2 and 0 <= text["share_beating_at_matched_fluency"] <= text["share_beating_max"] <= 1
    for detail in text["details"]:
        best = detail["best_window"]
        assert all(p["xentropy"] <= best["xentropy"] and p["activation"] > best["activation"]
                   for p in detail["matched_fluency_points"])
    assert list((tmp_path / "cache").rglob("maxima.json"))  # the maxima went to the cache the gallery reads
