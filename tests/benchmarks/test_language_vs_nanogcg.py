"""benchmarks/language_vs_nanogcg.py runs on tiny:lm (2 iterations, 16 candidates)."""

import importlib.util

import pytest


@pytest.mark.skipif(importlib.util.find_spec("nanogcg") is None, reason="nanoGCG is not installed (pip install --no-deps nanogcg)")
def test_language_vs_nanogcg_runs_small(run_script):
    figures = run_script("language_vs_nanogcg", "--model", "tiny:lm", "--word", "a", "--iters", "2", "--candidates", "16",
                         "--n-tokens", "3")["figures"]
    assert [r["method"] for r in figures["rows"]] == ["nanoGCG", "dreamy GCG", "dreamy EPO"]
    assert all(r["s/iter"] > 0 for r in figures["rows"])
    ours, epo = figures["rows"][1:]
    assert ours["logprob"] < 0 and ours["xent"] > 0 and figures["corpus_median_xent"] > 0
    assert epo["frontier"] and epo["logprob"] == max(p["logprob"] for p in epo["frontier"])  # the best is on the frontier
    if epo["best fluent logprob"] is not None:
        assert epo["best fluent logprob"] <= epo["logprob"]


def test_chat_layout_puts_the_span_where_the_template_has_it(tiny_lm):
    from benchmarks.language_vs_nanogcg import chat_layout

    assert chat_layout(tiny_lm.tokenizer, "Q: {optim_str} A:") == ("Q: ", " A:")
