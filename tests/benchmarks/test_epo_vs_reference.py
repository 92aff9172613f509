"""benchmarks/epo_vs_reference.py runs on tiny:lm (2 iterations, 4 children) when the reference EPO is present."""

import os
from pathlib import Path

import pytest

REFERENCE = os.environ.get("DREAMY_REFERENCE_SRC", "/tmp/dreamy-ref")


@pytest.mark.skipif(not (Path(REFERENCE) / "dreamy" / "epo.py").exists(),
                    reason="no reference EPO (fetch Confirm-Solutions/dreamy to /tmp/dreamy-ref or set DREAMY_REFERENCE_SRC)")
def test_epo_vs_reference_runs_small(run_script):
    figures = run_script("epo_vs_reference", "--reference-src", REFERENCE, "--model", "tiny:lm", "--iters", "2",
                         "--children", "4", "--reference-cache", "none")["figures"]  # never the user's cache
    assert len(figures["rows"]) == 4 and figures["ours_s_per_iter"] > 0 and figures["reference_s_per_iter"] > 0
    row = figures["rows"][0]
    assert set(row["ours"]) >= {"4.5", "5.0", "6.0", "7.0", "max"} and row["reference"]["max"] is not None
    assert set(figures["summary"]) == set(figures["summary_text"]) == set(figures["summary_allowed"]) \
        == {"4.5", "5.0", "6.0", "7.0", "max"}
    for cut in ("4.5", "5.0", "6.0", "7.0", "max"):  # each column's prompts are some of the last's: never a higher best
        allowed, text, every = row["reference_allowed"][cut], row["reference_text"][cut], row["reference"][cut]
        assert text is None or (every is not None and text <= every)
        assert allowed is None or (text is not None and allowed <= text)
    assert figures["over_seeds_text"][-1]["ours >= reference (all)"].endswith("/4")
    assert figures["over_seeds_allowed"][-1]["ours >= reference (all)"].endswith("/4")


def test_only_prompts_that_are_the_tokens_of_their_own_text_count_as_text(tiny_lm):
    from benchmarks.epo_vs_reference import text_prompts

    tok = tiny_lm.tokenizer
    cat = tuple(tok("the cat")["input_ids"])
    split = tuple(tok.convert_tokens_to_ids(list("the")))  # "t", "h", "e" re-encode as one token
    assert text_prompts(tok, {cat: (1.0, 2.0), split: (9.0, 3.0)}) == {cat: (1.0, 2.0)}
    assert text_prompts(tok, {}) == {}


def test_allowed_prompts_use_only_the_tokens_our_search_may_use(tiny_lm):
    from benchmarks.epo_vs_reference import allowed_prompts
    from dreamy.language.search import SearchSetup

    setup = SearchSetup.build(tiny_lm, "logits:3", n_tokens=2)
    cat = tuple(tiny_lm.tokenizer("the cat")["input_ids"])
    special = (tiny_lm.tokenizer.eos_token_id, cat[0])  # a special token: never one of ours
    assert setup.allowed[list(cat)].all() and not setup.allowed[special[0]]
    assert allowed_prompts(setup, {cat: (1.0, 2.0), special: (9.0, 3.0)}) == {cat: (1.0, 2.0)}


@pytest.mark.skipif(not (Path(REFERENCE) / "dreamy" / "epo.py").exists(), reason="no reference EPO")
def test_epo_vs_reference_timing_only_runs_on_a_tiny_shape(run_script):
    # the GPU timing runs, on the CPU: random-init Llama, every scoring strategy, launch counts
    figures = run_script("epo_vs_reference", "--reference-src", REFERENCE, "--model", "tiny:lm", "--timing-only",
                         "--shapes", "llama-tiny-shape", "--scoring", "packed,full", "--timing-iters", "1",
                         "--children", "4", "--profile-launches", result="epo_vs_reference_timing")["figures"]
    assert [row["scoring"] for row in figures["timing"]] == ["packed", "full"]
    assert all(row["ours_s_per_iter"] > 0 and row["reference_s_per_iter"] > 0 for row in figures["timing"])
    assert "rows" not in figures and figures["timing"][0]["syncs_per_iter"] <= 4 * 8


def test_epo_vs_reference_skips_without_the_reference(monkeypatch, capsys, tmp_path):
    import sys

    from benchmarks import epo_vs_reference

    monkeypatch.delenv("DREAMY_REFERENCE_SRC", raising=False)
    monkeypatch.setattr(sys, "argv", ["benchmarks/epo_vs_reference.py", "--results-dir", str(tmp_path)])
    epo_vs_reference.main()
    assert "skipped" in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_neurons_are_drawn_one_per_depth_range(tiny_lm):
    from benchmarks.epo_vs_reference import pick_neurons

    picks = pick_neurons(tiny_lm, 4, 0)
    assert picks == pick_neurons(tiny_lm, 4, 0) and len(picks) == 4
    assert [layer for layer, _ in picks] == sorted(layer for layer, _ in picks)


def test_the_reference_best_at_a_cut_off_is_the_best_of_every_batch_it_scored():
    from types import SimpleNamespace

    import torch

    from benchmarks.epo_vs_reference import reference_bests

    # 130 prompts in reference order (highest activation first); our rescoring puts the best passing one in the
    # first batch of 64 and a worse one in the second, which must not replace it
    prompts = {(i,): (10.0 - i * 0.001, 4.0) for i in range(130)}
    ours = {(i,): (10.0 - i * 0.001, 4.0 if i in (63, 64) else 9.0) for i in range(130)}

    def score(ids):
        rows = [ours[tuple(r)] for r in ids.tolist()]
        return SimpleNamespace(activation=torch.tensor([a for a, _ in rows]), xentropy=torch.tensor([x for _, x in rows]))

    setup = SimpleNamespace(layout=SimpleNamespace(n_tokens=12, prefix=torch.zeros(1)), score=score)
    assert reference_bests(setup, prompts)["5.0"] == pytest.approx(10.0 - 63 * 0.001)


def _results_file(path, seeds, ours=None, cpu="cpu A"):
    import json

    from benchmarks.epo_vs_reference import BUDGET

    cut = {"4.5": None, "5.0": 1.0, "6.0": 2.0, "7.0": 3.0, "max": 4.0}
    row = {"target": "model.layers.1.mlp.down_proj@in:3", "ours": cut, "reference": dict(cut, max=5.0),
           "reference_text": cut, "reference_allowed": cut, "ours_s_per_iter": 1.0, "reference_s_per_iter": 2.0}
    record = {"command": f"run of {seeds}", "machine": {"cpu_model": cpu}, "settings": {**BUDGET, "ours": ours or {}},
              "figures": {"seeds": {str(seed): {"rows": [row]} for seed in seeds}}}
    path.write_text(json.dumps(record))
    return path


def test_merge_joins_the_seeds_of_files_of_one_setting_and_keeps_where_each_came_from(tmp_path):
    from benchmarks.epo_vs_reference import merged, over_seeds

    per_seed, budget, ours = merged([_results_file(tmp_path / "a.json", [0, 1]),
                                     _results_file(tmp_path / "b.json", [2], cpu="cpu B")])
    assert sorted(per_seed) == [0, 1, 2] and ours == {} and budget["iters"] == 30
    assert per_seed[2]["measured_on"] == "cpu B" and per_seed[0]["measured_by"] == "run of [0, 1]"
    spread = {row["cut-off"]: row for row in over_seeds(per_seed, "summary")}
    assert spread["7.0"]["ours >= reference (all)"] == "3/3" and spread["max"]["ours >= reference (all)"] == "0/3"


def test_a_speed_ratio_is_given_only_when_both_sides_ran_on_one_cpu(tmp_path):
    import json

    from benchmarks.epo_vs_reference import merged

    reference = _results_file(tmp_path / "reference.json", [0, 1], cpu="cpu R")
    ours = _results_file(tmp_path / "ours.json", [0, 1], cpu="cpu R")
    record = json.loads(ours.read_text())
    record["figures"]["seeds"]["0"]["reference_from"] = str(reference)
    record["figures"]["seeds"]["1"].update(reference_from=str(reference), measured_on="cpu O")
    ours.write_text(json.dumps(record))
    per_seed, _, _ = merged([ours])
    assert per_seed[0]["speed_ratio"] == 0.5 and "speed_ratio_refused" not in per_seed[0]  # both on cpu R
    assert per_seed[1]["speed_ratio"] is None
    assert per_seed[1]["speed_ratio_refused"] == ("the reference's s/iter was measured on cpu R, ours on cpu O: "
                                                  "no ratio across machines")


def test_merge_refuses_files_of_other_settings_or_a_seed_twice(tmp_path):
    from benchmarks.epo_vs_reference import merged

    a = _results_file(tmp_path / "a.json", [0])
    with pytest.raises(SystemExit, match="b.json has budget"):
        merged([a, _results_file(tmp_path / "b.json", [1], ours={"activation_slots": 2})])
    with pytest.raises(SystemExit, match="seed 0 is in"):
        merged([a, _results_file(tmp_path / "c.json", [0])])


def _stored_reference_file(path, targets, seeds, **budget):
    import json

    from benchmarks.epo_vs_reference import BUDGET

    def row(k, target, seed):
        side = {"4.5": None, "5.0": None, "6.0": None, "7.0": float(k), "max": 100.0 + 10 * seed + k}
        return {"target": target, "ours": dict(side), "reference": side, "reference_text": side, "reference_allowed": side,
                "ours_s_per_iter": 1.0, "reference_s_per_iter": 7.0}

    record = {"command": "stored", "machine": {"cpu_model": "cpu A"}, "settings": {**BUDGET, **budget, "ours": {}},
              "figures": {"seeds": {str(seed): {"rows": [row(k, t, seed) for k, t in enumerate(targets)]} for seed in seeds}}}
    path.write_text(json.dumps(record))
    return path


def test_reference_from_runs_ours_alone_against_the_stored_reference_figures(run_script, tiny_lm, tmp_path, monkeypatch):
    from benchmarks import epo_vs_reference

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference ran")

    monkeypatch.setattr(epo_vs_reference, "run_reference", no_reference)
    monkeypatch.delenv("DREAMY_REFERENCE_SRC", raising=False)  # not needed: the reference's code never runs
    targets = [f"model.layers.{layer}.mlp.down_proj@in:{neuron}"
               for layer, neuron in epo_vs_reference.pick_neurons(tiny_lm, 4, 0)]
    stored = _stored_reference_file(tmp_path / "stored.json", targets, [0, 1], iters=2, children=4)
    figures = run_script("epo_vs_reference", "--model", "tiny:lm", "--iters", "2", "--children", "4", "--seeds", "0,1",
                         "--reference-from", str(stored), "--reference-cache", "none")["figures"]
    for seed in ("0", "1"):
        rows = figures["seeds"][seed]["rows"]
        assert [r["target"] for r in rows] == targets and figures["seeds"][seed]["reference_from"] == str(stored)
        assert [r["reference"]["max"] for r in rows] == [100.0 + 10 * int(seed) + k for k in range(4)]  # that seed's
        assert all(r["reference_s_per_iter"] == 7.0 and r["ours"]["max"] < 100 for r in rows)  # ours really ran
    assert [row["max"] for row in figures["per_neuron"]] == ["0/2"] * 4 and figures["per_neuron"][0]["seeds"] == 2
    assert figures["per_neuron"][1]["reference max (mean)"] == 106.0
    means = {(m["neuron"], m["cut-off"]): m for m in figures["per_neuron_means"]}
    assert len(means) == 4 * 5 and means[(targets[1].replace(".mlp.down_proj@in", ""), "max")]["reference mean"] == 106.0
    assert figures["speed_ratio"] is None and "measured on cpu A" in figures["speed_ratio_refused"]  # another CPU's


def test_reference_from_refuses_another_budget_or_a_missing_seed(run_script, tiny_lm, tmp_path):
    from benchmarks import epo_vs_reference

    targets = [f"model.layers.{layer}.mlp.down_proj@in:{neuron}"
               for layer, neuron in epo_vs_reference.pick_neurons(tiny_lm, 4, 0)]
    with pytest.raises(SystemExit, match="was run with budget"):
        epo_vs_reference.stored_reference(_stored_reference_file(tmp_path / "a.json", targets, [0]),
                                          dict(epo_vs_reference.BUDGET, iters=2))
    stored = _stored_reference_file(tmp_path / "b.json", targets, [0], iters=2, children=4)
    with pytest.raises(SystemExit, match="no reference figures for .* at seed 3"):
        run_script("epo_vs_reference", "--model", "tiny:lm", "--iters", "2", "--children", "4", "--seeds", "3",
                   "--reference-from", str(stored), "--reference-cache", "none")


def test_per_neuron_means_count_seeds_without_a_prompt_against_a_side():
    from benchmarks.epo_vs_reference import per_neuron_means

    def seed(ours, reference):
        keys = ["4.5", "5.0", "6.0", "7.0", "max"]
        return {"rows": [{"target": "model.layers.3.mlp.down_proj@in:7", "ours": dict(zip(keys, ours)),
                          "reference_allowed": dict(zip(keys, reference))}]}

    per_seed = {0: seed([None, 5.0, 5.0, 5.0, 9.0], [None, None, 1.0, 2.0, 3.0]),
                1: seed([None, None, 0.5, 0.5, 1.0], [None, 1.0, 2.0, 2.0, 4.0])}
    table = {m["cut-off"]: m for m in per_neuron_means(per_seed, "reference_allowed")}
    assert table["<=4.5"]["ours >= reference"] and table["<=4.5"]["ours mean"] is None  # neither side has a prompt
    assert table["<=5.0"]["ours >= reference"]  # one seed each, 5.0 against 1.0
    assert table["<=6.0"]["ours mean"] == 2.75 and table["<=6.0"]["reference mean"] == 1.5
    assert table["<=6.0"]["ours min..max"] == "0.5..5" and table["<=6.0"]["reference seeds"] == "2/2"
    assert table["max"]["ours >= reference"] and table["max"]["neuron"] == "model.layers.3:7"
    fewer = {0: seed([None, None, None, 9.0, 9.0], [None, None, 1.0, 1.0, 1.0]),
             1: seed([None, None, 9.0, 9.0, 9.0], [None, None, 1.0, 1.0, 1.0])}
    assert not {m["cut-off"]: m for m in per_neuron_means(fewer, "reference_allowed")}["<=6.0"]["ours >= reference"]
