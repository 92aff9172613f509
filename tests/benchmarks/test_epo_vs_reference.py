"""benchmarks/epo_vs_reference.py: both sides on tiny:lm (the real reference when fetched, else a stand-in), the
rescoring, the over-seeds tables, and EPO settings given with --set."""

import os
from pathlib import Path

import pytest

from benchmarks import epo_vs_reference

REFERENCE = os.environ.get("DREAMY_REFERENCE_SRC", "/tmp/dreamy-ref")
KEYS = ["4.5", "5.0", "6.0", "7.0", "max"]


def _check_figures(figures, rows):
    assert len(figures["rows"]) == rows and figures["s_per_iter"]["ratio"] > 0
    assert figures["s_per_iter"]["ours"]["seeds"] == figures["s_per_iter"]["reference"]["seeds"] == f"{rows}/{rows}"
    assert [line["against"] for line in figures["headline"]] == list(epo_vs_reference.COLUMNS)
    assert all(set(line) == {"against", "<=4.5", "<=5.0", "<=6.0", "<=7.0", "max"} for line in figures["headline"])
    assert all(line["max"].endswith("/4") for line in figures["headline"])
    for row in figures["rows"]:
        assert set(row["ours"]) == set(KEYS) and row["reference"]["max"] is not None
        for cut in KEYS:  # each column's prompts are some of the last's: never a higher best
            allowed, text, every = row["reference_allowed"][cut], row["reference_text"][cut], row["reference"][cut]
            assert text is None or (every is not None and text <= every)
            assert allowed is None or (text is not None and allowed <= text)


@pytest.mark.skipif(not (Path(REFERENCE) / "dreamy" / "epo.py").exists(),
                    reason="no reference EPO (fetch Confirm-Solutions/dreamy to /tmp/dreamy-ref or set DREAMY_REFERENCE_SRC)")
def test_epo_vs_reference_runs_both_sides_small(run_script):
    record = run_script("epo_vs_reference", "--reference-src", REFERENCE, "--model", "tiny:lm", "--set", "iters=2",
                        "--set", "children=4")
    _check_figures(record["figures"], 4)
    assert record["settings"]["epo"]["children"] == 4 and record["settings"]["seeds"] == [0]


def test_set_values_reach_both_sides_and_every_seed(run_script, fake_reference, monkeypatch):
    seen = []

    def epo(loaded, target, config, **kwargs):
        seen.append(config)
        return real_epo(loaded, target, config, **kwargs)

    real_epo = epo_vs_reference.epo
    monkeypatch.setattr(epo_vs_reference, "epo", epo)
    monkeypatch.setattr(epo_vs_reference, "load_reference", lambda src: fake_reference)
    record = run_script("epo_vs_reference", "--reference-src", "stand-in", "--model", "tiny:lm", "--seeds", "0,1",
                        "--set", "iters=2", "--set", "children=4", "--set", "topk=7", "--set", "fluency_weight_range=0.3,30")
    assert [c.seed for c in seen] == [0] * 4 + [1] * 4
    assert {(c.iters, c.children, c.topk, c.fluency_weight_range) for c in seen} == {(2, 4, 7, (0.3, 30.0))}
    assert [(c["iters"], c["explore_per_pop"], c["seed"]) for c in fake_reference.calls] == [(2, 4, 0)] * 4 + [(2, 4, 1)] * 4
    assert record["settings"]["epo"]["topk"] == 7 and record["settings"]["seeds"] == [0, 1]
    _check_figures(record["figures"], 8)
    assert all(line["ours seeds"].endswith("/2") for line in record["figures"]["over_seeds"]["reference"])


@pytest.mark.parametrize("pair, message", [("topc=64", "did you mean 'topk'"),
                                           ("lambda_range=0.1,30", "it is called 'fluency_weight_range' now"),
                                           ("topk=0", "topk"), ("topk", "give KEY=VALUE"),
                                           ("seed=3", "seeds come from --seeds")])
def test_set_refuses_a_typo_an_old_name_a_bad_value_or_a_fixed_setting(pair, message, tmp_path):
    with pytest.raises(SystemExit, match=message):  # before any model or reference work
        epo_vs_reference.main(["--reference-src", str(tmp_path / "absent"), "--set", pair, "--results-dir", str(tmp_path)])


def test_epo_vs_reference_skips_without_the_reference(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("DREAMY_REFERENCE_SRC", raising=False)
    epo_vs_reference.main(["--results-dir", str(tmp_path)])
    assert "skipped" in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_load_reference_finds_its_epo_py_or_says_what_to_fetch(tmp_path):
    (tmp_path / "dreamy").mkdir()
    (tmp_path / "dreamy" / "epo.py").write_text("VALUE = 3\n")
    assert epo_vs_reference.load_reference(tmp_path).VALUE == 3
    assert epo_vs_reference.load_reference(tmp_path / "dreamy" / "epo.py").__name__ == "reference_epo"
    with pytest.raises(SystemExit, match="fetch Confirm-Solutions/dreamy"):
        epo_vs_reference.load_reference(tmp_path / "nothing")


def test_only_prompts_that_are_the_tokens_of_their_own_text_count_as_text(tiny_lm):
    tok = tiny_lm.tokenizer
    cat = tuple(tok("the cat")["input_ids"])
    split = tuple(tok.convert_tokens_to_ids(list("the")))  # "t", "h", "e" re-encode as one token
    assert epo_vs_reference.text_prompts(tok, {cat: (1.0, 2.0), split: (9.0, 3.0)}) == {cat: (1.0, 2.0)}
    assert epo_vs_reference.text_prompts(tok, {}) == {}


def test_allowed_prompts_use_only_the_tokens_our_search_may_use(tiny_lm):
    from dreamy.language.search import SearchSetup

    setup = SearchSetup.build(tiny_lm, "logits:3", n_tokens=2)
    cat = tuple(tiny_lm.tokenizer("the cat")["input_ids"])
    special = (tiny_lm.tokenizer.eos_token_id, cat[0])  # a special token: never one of ours
    assert setup.allowed[list(cat)].all() and not setup.allowed[special[0]]
    assert epo_vs_reference.allowed_prompts(setup, {cat: (1.0, 2.0), special: (9.0, 3.0)}) == {cat: (1.0, 2.0)}


def test_neurons_are_drawn_one_per_depth_range(tiny_lm):
    picks = epo_vs_reference.pick_neurons(tiny_lm, 4, 0)
    assert picks == epo_vs_reference.pick_neurons(tiny_lm, 4, 0) and len(picks) == 4
    assert [layer for layer, _ in picks] == sorted(layer for layer, _ in picks)


def test_the_reference_best_at_a_cut_off_is_the_best_of_every_batch_it_scored():
    from types import SimpleNamespace

    import torch

    # 130 prompts in reference order (highest activation first); our rescoring puts the best passing one in the
    # first batch of 64 and a worse one in the second, which must not replace it
    prompts = {(i,): (10.0 - i * 0.001, 4.0) for i in range(130)}
    ours = {(i,): (10.0 - i * 0.001, 4.0 if i in (63, 64) else 9.0) for i in range(130)}

    def score(ids):
        rows = [ours[tuple(r)] for r in ids.tolist()]
        return SimpleNamespace(activation=torch.tensor([a for a, _ in rows]), xentropy=torch.tensor([x for _, x in rows]))

    setup = SimpleNamespace(layout=SimpleNamespace(n_tokens=12, prefix=torch.zeros(1)), score=score)
    bests = epo_vs_reference.reference_bests(setup, prompts)
    assert bests["5.0"] == pytest.approx(10.0 - 63 * 0.001) and bests["max"] == pytest.approx(10.0)


def test_over_seeds_gives_each_sides_mean_and_spread_and_counts_missing_prompts_against_it():
    def row(ours, reference):
        return {"target": "model.layers.3.mlp.down_proj@in:7", "ours": dict(zip(KEYS, ours)),
                "reference_allowed": dict(zip(KEYS, reference))}

    rows = [row([None, 5.0, 5.0, 5.0, 9.0], [None, None, 1.0, 2.0, 3.0]),
            row([None, None, 0.5, 0.5, 1.0], [None, 1.0, 2.0, 2.0, 4.0])]
    table = {m["cut-off"]: m for m in epo_vs_reference.over_seeds(rows, "reference_allowed")}
    assert table["<=4.5"]["ours >= reference"] and table["<=4.5"]["ours mean"] is None  # neither side has a prompt
    assert table["<=5.0"]["ours >= reference"]  # one seed each, 5.0 against 1.0
    assert table["<=6.0"]["ours mean"] == 2.75 and table["<=6.0"]["reference mean"] == 1.5
    assert table["<=6.0"]["ours min..max"] == "0.5..5" and table["<=6.0"]["reference seeds"] == "2/2"
    assert table["max"]["ours >= reference"] and table["max"]["neuron"] == "model.layers.3:7"
    fewer = [row([None, None, None, 9.0, 9.0], [None, None, 1.0, 1.0, 1.0]),
             row([None, None, 9.0, 9.0, 9.0], [None, None, 1.0, 1.0, 1.0])]
    assert not {m["cut-off"]: m for m in epo_vs_reference.over_seeds(fewer, "reference_allowed")}["<=6.0"]["ours >= reference"]
    lines = epo_vs_reference.over_seeds(rows + fewer, "reference_allowed")
    assert epo_vs_reference.headline({"reference_allowed": lines}) == [
        {"against": "reference_allowed", "<=4.5": "1/1", "<=5.0": "1/1", "<=6.0": "0/1", "<=7.0": "1/1", "max": "1/1"}]
