"""GCG and EPO on the tiny LM: they improve, reproduce, restart correctly and report a frontier."""

import json
import sys

import pytest
import torch

from dreamy.core.config import ConfigError
from dreamy.language import epo, epo_many, gcg, gcg_many
from dreamy.language.epo import fluency_weights, restart_fluency_weight
from tests.language.test_frontier import dominates

TARGET = "model.layers.1.mlp.down_proj:3"
search_module = sys.modules["dreamy.language.search"]
SMALL = dict(n_tokens=5, iters=6, population=3, children=12, progress=False)


def test_epo_improves_and_reports_the_frontier(tiny_lm):
    result = epo(tiny_lm, TARGET, seed=0, restart_every=None, **SMALL)
    first = max(r["activation"] for r in result.history if r["iteration"] == 0)
    assert result.best.activation > first
    points = [(r["activation"], r["xentropy"]) for r in result.history]
    front = [(p.activation, p.xentropy) for p in result.frontier]
    assert all(not any(dominates(q, f) for q in points) for f in front)
    assert all(len(p.token_attribution) == 5 and len(p.tokens) == 5 for p in result.frontier)
    json.dumps(result.to_record(include_history=True))


def test_epo_is_reproducible(tiny_lm):
    a = epo(tiny_lm, TARGET, seed=3, **SMALL)
    torch.randn(10)
    b = epo(tiny_lm, TARGET, seed=3, **SMALL)
    c = epo(tiny_lm, TARGET, seed=4, **SMALL)
    assert [r["token_ids"] for r in a.history] == [r["token_ids"] for r in b.history]
    assert [r["token_ids"] for r in a.history] != [r["token_ids"] for r in c.history]


def test_restarts_draw_random_fluency_weights_and_collapse_the_population(tiny_lm, monkeypatch):
    seen = []
    original = search_module.token_gradients

    def spy(model, probe, layout, spans, weights, **kwargs):
        seen.append((spans.clone(), weights.clone()))
        return original(model, probe, layout, spans, weights, **kwargs)

    monkeypatch.setattr(search_module, "token_gradients", spy)
    result = epo(tiny_lm, TARGET, seed=1, restart_every=2, **{**SMALL, "iters": 7})
    restarts = result.settings["restarts"]
    assert [r["iteration"] for r in restarts] == [2, 4, 6]  # and none in the last iteration
    assert [r["iteration"] for r in epo(tiny_lm, TARGET, seed=1, restart_every=2, **SMALL).settings["restarts"]] == [2, 4]
    assert len({round(r["fluency_weight"], 6) for r in restarts}) == 3  # a fresh random draw each time
    weights = torch.tensor(result.settings["fluency_weights"])
    # right after a restart every slot holds the same prompt, and each gets its gradient under its own fluency weight
    collapsed = [(s, w) for s, w in seen if len(s) == 3 and (s == s[0]).all()]
    assert collapsed and all(torch.allclose(w, weights) for _, w in collapsed)


def test_the_restart_fluency_weight_is_log_uniform_in_range():
    gen = torch.Generator().manual_seed(0)
    draws = [restart_fluency_weight((0.1, 10.0), gen) for _ in range(400)]
    assert min(draws) >= 0.1 and max(draws) <= 10.0
    below_one = sum(d < 1.0 for d in draws) / len(draws)
    assert 0.4 < below_one < 0.6  # log-uniform: half the mass below the geometric middle
    assert fluency_weights(5, (0.1, 10.0))[2].item() == pytest.approx(1.0)


def test_gcg_with_prefix_and_suffix(tiny_lm):
    result = gcg(tiny_lm, "logits:9", n_tokens=4, iters=5, children=16, prefix="The cat", suffix=" sat",
                 progress=False, seed=0)
    assert result.settings["prefix"].endswith("The cat") and result.settings["suffix"] == " sat"
    start = result.history[0]["activation"]
    assert result.best.activation > start
    assert result.method == "gcg"


def test_gcg_reaches_the_top_token_on_the_tiny_lm(tiny_lm):
    token = 42
    result = gcg(tiny_lm, f"logits:{token}-logits", n_tokens=4, iters=15, children=32, progress=False, seed=0)
    ids = torch.tensor([[tiny_lm.tokenizer.bos_token_id] + result.best.token_ids])
    assert tiny_lm.model(ids).logits[0, -1].argmax().item() == token


def test_language_search_needs_a_tokenizer(tiny_cnn):
    with pytest.raises(ValueError, match="no tokenizer"):
        epo(tiny_cnn, "head:1", n_tokens=2, iters=1, progress=False)


@pytest.mark.real
def test_bundled_epo_raises_an_mlp_neuron(smollm2):
    result = epo(smollm2, "model.layers.5.mlp.down_proj@in:100", n_tokens=6, iters=3, population=2,
                 children=16, progress=False)
    first = max(r["activation"] for r in result.history if r["iteration"] == 0)
    assert result.best.activation > first


PACK = ["model.layers.1.mlp.down_proj:3", "logits:9", "model.layers.0.mlp.down_proj@in:5"]


def test_packed_epo_gives_each_target_its_own_search(tiny_lm, monkeypatch):
    calls = []
    original = search_module.score_sequences
    monkeypatch.setattr(search_module, "score_sequences", lambda *a, **k: calls.append(a[2].shape[0]) or original(*a, **k))
    packed = epo_many(tiny_lm, PACK, seed=2, restart_every=3, **SMALL)
    assert len(calls) == SMALL["iters"] + 1  # one scoring call per iteration for all targets (+ the start)
    for spec, result in zip(PACK, packed):
        alone = epo(tiny_lm, spec, seed=2, restart_every=3, **SMALL)
        assert result.target == spec
        assert [r["token_ids"] for r in result.history] == [r["token_ids"] for r in alone.history]
        assert result.settings["restarts"] == alone.settings["restarts"]
        for mine, theirs in zip(result.history, alone.history):
            assert mine["activation"] == pytest.approx(theirs["activation"], rel=1e-4, abs=1e-5)
        flat = lambda r: [a for p in r.frontier for a in p.token_attribution]
        assert flat(result) == pytest.approx(flat(alone), rel=1e-3, abs=1e-5)  # attributed to its own target


def test_packed_gcg_gives_each_target_its_own_search(tiny_lm):
    settings = dict(n_tokens=4, iters=4, children=16, progress=False, seed=1, fluency_weight=0.1)
    packed = gcg_many(tiny_lm, PACK[:2], **settings)
    for spec, result in zip(PACK[:2], packed):
        alone = gcg(tiny_lm, spec, **settings)
        assert [r["token_ids"] for r in result.history] == [r["token_ids"] for r in alone.history]
        assert result.best.activation == pytest.approx(alone.best.activation, rel=1e-4, abs=1e-5)


LARGE_PACK = [f"logits:{i}" for i in range(40)] + [f"model.layers.{i % 2}.mlp.down_proj@in:{i}" for i in range(88)]


@pytest.mark.parametrize("search", ["epo", "gcg"])
def test_a_pack_of_128_targets_gives_each_target_the_search_it_gets_alone(tiny_lm, search):
    many, one = (epo_many, epo) if search == "epo" else (gcg_many, gcg)
    settings = dict(n_tokens=4, iters=3, children=6, progress=False, seed=5)
    if search == "epo":
        settings.update(population=2, restart_every=2)
    packed = many(tiny_lm, LARGE_PACK, **settings)
    assert len(packed) == len(LARGE_PACK)
    for k in (0, 39, 40, 77, 127):  # both ends of the pack, both kinds of target
        alone = one(tiny_lm, LARGE_PACK[k], **settings)
        assert packed[k].target == LARGE_PACK[k]
        assert [r["token_ids"] for r in packed[k].history] == [r["token_ids"] for r in alone.history]
        for mine, theirs in zip(packed[k].history, alone.history):
            assert mine["activation"] == pytest.approx(theirs["activation"], rel=1e-4, abs=1e-5)


def slot_0_follows_the_top(history: list[dict], iters: int, slot: int = 0, rank: int = 0) -> list[bool]:
    """Per iteration from the second: whether `slot`'s children are all one-token swaps of the highest
    activation seen before it (what a slot of fluency weight 0 must do without restarts), or with `rank` r of
    the r-th highest distinct prompt after it (the r-th of several such slots)."""
    follows = []
    for t in range(2, iters + 1):
        seen: dict[tuple, float] = {}
        for r in history:
            if r["iteration"] < t:
                seen[tuple(r["token_ids"])] = r["activation"]
        top = sorted(seen, key=seen.get, reverse=True)[rank]
        children = [r["token_ids"] for r in history if r["iteration"] == t and r["slot"] == slot]
        follows.append(bool(children) and all(sum(a != b for a, b in zip(c, top)) == 1 for c in children))
    return follows


FAINT = f"0.001*{TARGET}"  # activations small beside cross-entropy: a weight of 0.3 already trades them away


def test_an_activation_slot_has_fluency_weight_zero_and_holds_the_frontiers_high_end(tiny_lm):
    found = epo(tiny_lm, FAINT, restart_every=None, **SMALL)  # the default: one such slot
    weights = found.settings["fluency_weights"]
    assert weights[0] == 0.0 and weights[1:] == pytest.approx(fluency_weights(2, (0.1, 30.0)).tolist())
    assert all(slot_0_follows_the_top(found.history, SMALL["iters"]))
    with pytest.raises(ConfigError, match="activation_slots"):
        epo(tiny_lm, TARGET, activation_slots=3, **SMALL)  # every slot


def test_two_activation_slots_hold_the_two_highest_distinct_prompts(tiny_lm):
    found = epo(tiny_lm, FAINT, restart_every=None, activation_slots=2, **SMALL)
    assert found.settings["fluency_weights"][:2] == [0.0, 0.0]
    assert all(slot_0_follows_the_top(found.history, SMALL["iters"]))
    assert all(slot_0_follows_the_top(found.history, SMALL["iters"], slot=1, rank=1))  # not a second copy of slot 0


def test_without_an_activation_slot_the_lowest_weight_trades_a_faint_activation_for_fluency(tiny_lm):
    found = epo(tiny_lm, FAINT, restart_every=None, activation_slots=0, **SMALL)
    assert not all(slot_0_follows_the_top(found.history, SMALL["iters"]))


def test_packed_search_needs_targets(tiny_lm):
    with pytest.raises(ValueError, match="no targets"):
        epo_many(tiny_lm, [], n_tokens=2, iters=1, progress=False)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_searches_work_under_no_grad_and_inference_mode(tiny_lm, mode):
    with mode():
        a = epo(tiny_lm, TARGET, n_tokens=3, iters=2, population=2, children=4, progress=False)
        b = gcg(tiny_lm, TARGET, n_tokens=3, iters=2, children=8, progress=False)
        c = epo_many(tiny_lm, [TARGET, "logits:4"], n_tokens=3, iters=2, population=2, children=4, progress=False)
        d = gcg_many(tiny_lm, [TARGET, "logits:4"], n_tokens=3, iters=2, children=8, progress=False)
    plain = epo(tiny_lm, TARGET, n_tokens=3, iters=2, population=2, children=4, progress=False)
    assert [r["token_ids"] for r in a.history] == [r["token_ids"] for r in plain.history]
    assert all(max(row["iteration"] for row in r.history) == 2 and r.frontier for r in [a, b, *c, *d])  # both iterations ran


@pytest.mark.parametrize("iters", [0, -3])
def test_searches_of_no_iterations_are_refused(tiny_lm, iters):
    for search in (lambda: epo(tiny_lm, TARGET, iters=iters, progress=False),
                   lambda: gcg(tiny_lm, TARGET, iters=iters, progress=False),
                   lambda: epo_many(tiny_lm, [TARGET], iters=iters, progress=False),
                   lambda: gcg_many(tiny_lm, [TARGET], iters=iters, progress=False)):
        with pytest.raises(ValueError, match=f"iters must be >= 1.*got {iters}"):
            search()


def test_an_epo_iteration_synchronizes_the_host_a_few_times_not_per_element(tiny_lm):
    # host syncs (`.item()`, `int(tensor)`, ...) show as aten::item / aten::_local_scalar_dense; the
    # difference between a 3- and a 1-iteration run is what two iterations cost
    from torch.profiler import ProfilerActivity, profile

    population = 4

    def syncs(iters):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            epo(tiny_lm, TARGET, n_tokens=6, iters=iters, population=population, children=16,
                restart_every=None, progress=False)
        return sum(e.name in ("aten::item", "aten::_local_scalar_dense") for e in prof.events())

    per_iteration = (syncs(3) - syncs(1)) / 2
    assert per_iteration <= 4 * population, per_iteration


@pytest.mark.parametrize("strategy", ["packed", "grouped"])
def test_every_scoring_strategy_scores_like_plain_forwards(tiny_lm, monkeypatch, strategy):
    # packed (the default everywhere) and grouped reuse the parents' KV caches; full runs plain forwards
    from dreamy.language import scoring
    from dreamy.language.search import SearchSetup

    assert SearchSetup.build(tiny_lm, TARGET, n_tokens=6).scoring == "packed"  # auto
    setup = SearchSetup.build(tiny_lm, TARGET, n_tokens=6, scoring=strategy)
    parents = torch.randint(5, 200, (2, 6), generator=torch.Generator().manual_seed(0))
    kids = parents.repeat_interleave(8, dim=0)
    kids[torch.arange(16), torch.arange(16) % 6] = torch.arange(16) + 30
    kids[3] = parents[0]  # a child equal to its parent
    index = torch.arange(2).repeat_interleave(8)
    spied = []
    real = getattr(scoring, f"_{strategy}")
    monkeypatch.setattr(scoring, f"_{strategy}", lambda *a, **k: spied.append(1) or real(*a, **k))
    reused = setup.score(kids, parents=parents, parent_index=index)
    assert spied  # the strategy's own path ran
    setup.scoring = "full"
    spied.clear()
    plain = setup.score(kids, parents=parents, parent_index=index)
    assert not spied  # none with the plain strategy
    torch.testing.assert_close(plain.activation, reused.activation, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain.xentropy, reused.xentropy, rtol=1e-4, atol=1e-4)


def test_unknown_scoring_strategy_is_refused(tiny_lm):
    from dreamy.language.search import SearchSetup

    with pytest.raises(ValueError, match="scoring must be one of"):
        SearchSetup.build(tiny_lm, TARGET, n_tokens=6, scoring="fast")


@pytest.mark.parametrize("method", ["epo", "gcg"])
def test_searches_score_children_on_states_kept_from_the_gradient_pass(tiny_lm, monkeypatch, method):
    # the parents' KV caches and log-probabilities come from their gradient forward: no second parent forward
    from dreamy.language import scoring

    calls = []
    real = scoring.parent_states
    monkeypatch.setattr(scoring, "parent_states", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(search_module, "parent_states", scoring.parent_states)
    packed = []
    real_packed = scoring._packed
    monkeypatch.setattr(scoring, "_packed", lambda *a, **k: packed.append(a[-1] is not None) or real_packed(*a, **k))
    if method == "epo":
        epo(tiny_lm, TARGET, seed=0, restart_every=3, **SMALL)
    else:
        gcg(tiny_lm, TARGET, n_tokens=5, iters=4, children=16, progress=False)
    assert packed and all(packed)  # every packed scoring got states
    assert not calls


def test_states_kept_from_the_gradient_pass_equal_a_plain_parent_forward(tiny_lm):
    from dreamy.language.search import SearchSetup

    setup = SearchSetup.build(tiny_lm, TARGET, n_tokens=6)
    spans = torch.randint(5, 200, (3, 6), generator=torch.Generator().manual_seed(1))
    _, kept = setup.top_tokens_and_states(spans, torch.tensor([0.1, 1.0, 10.0]), 4)
    fresh = setup.states_of(spans)
    torch.testing.assert_close(kept.token_xent, fresh.token_xent, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(kept.logprobs, fresh.logprobs, rtol=1e-4, atol=1e-4)
    for (k1, v1), (k2, v2) in zip(kept.layers, fresh.layers):
        torch.testing.assert_close(k1, k2, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(v1, v2, rtol=1e-4, atol=1e-4)
    kids = spans.repeat_interleave(8, dim=0)
    kids[torch.arange(24), torch.arange(24) % 6] = torch.arange(24) + 30
    index = torch.arange(3).repeat_interleave(8)
    a = setup.score(kids, parents=spans, parent_index=index, parent_states=kept)
    b = setup.score(kids, parents=spans, parent_index=index)
    torch.testing.assert_close(a.activation, b.activation, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.xentropy, b.xentropy, rtol=1e-4, atol=1e-4)


def test_an_old_setting_name_fails_before_any_forward(tiny_lm, monkeypatch):
    from dreamy.core.config import ConfigError

    calls = []
    forward = tiny_lm.model.forward
    monkeypatch.setattr(tiny_lm.model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    with pytest.raises(ConfigError, match="'children_per_member': it is called 'children' now"):
        epo(tiny_lm, TARGET, n_tokens=3, iters=1, children_per_member=4, progress=False)
    with pytest.raises(ConfigError, match="'batch_size': it is called 'children' now"):
        gcg_many(tiny_lm, [TARGET], batch_size=4, progress=False)
    assert calls == []


def test_one_spec_gives_a_result_and_a_list_gives_results(tiny_lm):
    from dreamy.language import EPOConfig, PromptResult, PromptResults

    config = EPOConfig(n_tokens=3, iters=1, population=2, children=4)
    one = epo(tiny_lm, TARGET, config, progress=False)
    many = epo(tiny_lm, [TARGET], config, progress=False)
    assert isinstance(one, PromptResult) and isinstance(many, PromptResults)
    assert [r["frontier"] for r in many.to_records()] == [r["frontier"] for r in one.to_records()]
    assert one.settings["children"] == 4 and one.settings["fluency_weight_range"] == [0.1, 30.0]


def test_seeded_starts_put_one_window_per_member_and_frontier_points_say_where_they_came_from(tiny_lm):
    from dreamy.language import EPOConfig

    windows = [[5, 6, 7, 8], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
    config = EPOConfig(n_tokens=4, iters=3, population=4, children=8, init="maxima")
    result = epo(tiny_lm, TARGET, config, starts={TARGET: windows}, progress=False)
    first = [r for r in result.history if r["iteration"] == 0]
    assert [r["token_ids"] for r in first[:3]] == [windows[0], windows[2], windows[3]]  # distinct windows, best first
    assert [r["origin"] for r in first] == ["window 0", "window 2", "window 3", "random"]  # then random members
    assert {p.origin for p in result.frontier} <= {"window 0", "window 2", "window 3", "random"}
    assert all(r["origin"] for r in result.history)
    mixed = epo(tiny_lm, TARGET, EPOConfig.build(config, init="mixed"), starts={TARGET: windows}, progress=False)
    assert [r["origin"] for r in mixed.history if r["iteration"] == 0] == ["window 0", "window 2", "random", "random"]
    with pytest.raises(ValueError, match="pass starts="):
        epo(tiny_lm, TARGET, config, progress=False)
    with pytest.raises(ValueError, match="no starting windows for target 'logits:4'"):
        epo(tiny_lm, [TARGET, "logits:4"], config, starts={TARGET: windows}, progress=False)
    one = gcg(tiny_lm, TARGET, n_tokens=4, iters=1, children=4, init="maxima", starts={TARGET: windows}, progress=False)
    assert one.history[0]["token_ids"] == windows[0] and one.history[0]["origin"] == "window 0"


def test_a_search_stops_at_its_minutes_or_on_a_plateau_and_says_so(tiny_lm):
    quick = epo(tiny_lm, TARGET, n_tokens=3, iters=50, population=2, children=4, minutes=1e-9, progress=False)
    assert quick.settings["stopped"] == "minutes" and quick.settings["iterations_run"] == 1
    assert max(r["iteration"] for r in quick.history) == 1
    flat = gcg(tiny_lm, "logits:4", n_tokens=3, iters=60, children=4, topk=1, plateau=2, progress=False)
    assert flat.settings["stopped"] == "plateau" and flat.settings["iterations_run"] < 60
    done = epo(tiny_lm, TARGET, n_tokens=3, iters=2, population=2, children=4, progress=False)
    assert done.settings["stopped"] == "iters" and done.settings["iterations_run"] == 2


@pytest.mark.parametrize("search", ["epo", "gcg"])
def test_host_syncs_per_iteration_do_not_grow_with_the_number_of_targets(tiny_lm, search):
    from torch.profiler import ProfilerActivity, profile

    targets = [f"model.layers.1.mlp.down_proj:{i}" for i in range(32)]

    def syncs(n, iters):
        # 2 x 8 children per target: every batch takes the packed path (tiny ones run plain forwards)
        run = (lambda: epo(tiny_lm, targets[:n], n_tokens=4, iters=iters, population=2, children=8, restart_every=None,
                           progress=False)) if search == "epo" else \
              (lambda: gcg(tiny_lm, targets[:n], n_tokens=4, iters=iters, children=8, progress=False))
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
        return sum(e.name in ("aten::item", "aten::_local_scalar_dense") for e in prof.events())

    per_iteration = {n: syncs(n, 2) - syncs(n, 1) for n in (1, 8, 32)}
    assert per_iteration[32] == per_iteration[8] == per_iteration[1], per_iteration


def test_a_search_and_a_scan_leave_a_model_in_train_mode_as_they_found_it(tiny_lm):
    import copy

    from dreamy.datasets import TextCorpus
    from dreamy.maxima import text_maxima
    from dreamy.models import LoadedModel

    model = copy.deepcopy(tiny_lm.model).train().requires_grad_(True)
    loaded = LoadedModel("copy", "language", model, tokenizer=tiny_lm.tokenizer)
    seen = []
    handle = model.model.layers[0].register_forward_hook(lambda mod, args, out: seen.append(mod.training))
    try:
        epo(loaded, TARGET, n_tokens=3, iters=1, population=2, children=4, progress=False)
        gcg(loaded, TARGET, n_tokens=3, iters=1, children=4, progress=False)
        text_maxima(loaded, [TARGET], TextCorpus("t", "The cat sat on the mat. " * 20), k=1, window=8, xent_windows=2,
                    cache_dir=None, progress=False)
    finally:
        handle.remove()
    assert seen and not any(seen)  # every forward ran in eval mode
    assert model.training and all(p.requires_grad and p.grad is None for p in model.parameters())
