"""benchmarks/dream_vs_maxima.py runs on the tiny models."""

import pytest


def point(text):
    """`"0.438 @ 6.58"` (activation @ cross-entropy, as the table prints it) -> (0.438, 6.58)."""
    activation, xentropy = text.split(" @ ")
    return float(activation), float(xentropy)


def test_dream_vs_maxima_runs_on_tiny_models(run_script, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Paris is the capital of France. The sun is hot and the moon is bright at night. " * 100)
    figures = run_script("dream_vs_maxima", "--vision-model", "tiny:cnn", "--lm-model", "tiny:lm", "--corpus", str(corpus),
                         "--images", "photos", "--epo-iters", "2", "--steps", "8", "--cache-dir", str(tmp_path / "cache"))["figures"]
    vision, text = figures["vision"], figures["text"]
    assert len(vision["rows"]) == 8
    for row in vision["rows"]:
        assert row["beats"] == (row["dream"] > row["dataset max"])
        assert row["dream / max"] == (pytest.approx(row["dream"] / row["dataset max"]) if row["dataset max"] > 0 else None)
    assert vision["share_beating_max"] == pytest.approx(sum(r["beats"] for r in vision["rows"]) / 8)
    assert len(text["rows"]) == len(text["details"]) == 2
    for row, detail in zip(text["rows"], text["details"]):
        best = detail["best_window"]
        # EPO starts from the best window itself, so its first score is the window's, printed as '%.3g @ %.2f'
        # (rounding moves the activation by < 5e-3 of itself and the cross-entropy by <= 5e-3)
        start_activation, start_xentropy = point(row["EPO start"])
        assert start_activation == pytest.approx(best["activation"], rel=6e-3, abs=1e-9)
        assert start_xentropy == pytest.approx(best["xentropy"], rel=0, abs=6e-3)
        assert detail["epo_frontier"]
        matched = [p for p in detail["epo_frontier"] if p["xentropy"] <= best["xentropy"] and p["activation"] > best["activation"]]
        assert detail["matched_fluency_points"] == matched and row["beats at matched fluency"] == bool(matched)
    shares = [bool(d["matched_fluency_points"]) for d in text["details"]], [r["beats max"] for r in text["rows"]]
    assert text["share_beating_at_matched_fluency"] == pytest.approx(sum(shares[0]) / 2)
    assert text["share_beating_max"] == pytest.approx(sum(shares[1]) / 2)
    assert text["share_beating_max"] >= text["share_beating_at_matched_fluency"]
    assert list((tmp_path / "cache").rglob("maxima.json"))  # the maxima went to the cache the gallery reads
