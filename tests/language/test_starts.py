"""Where a prompt search starts, and that it never stalls in silence: every start passes the token filters its
children must pass, a search blocked by them starts afresh or stops naming why, and the result says how many
iterations moved its population. Also the refusals of inputs that used to be coerced or crash deep inside."""

import sys

import pytest
import torch

from dreamy.core.config import ConfigError
from dreamy.core.stepping import make_generator
from dreamy.language import EPOConfig, GCGConfig, epo, gcg
from dreamy.language.search import STALL_ITERS
from dreamy.language.tokens import allowed_tokens, survives_retokenization

TARGET = "model.layers.1.mlp.down_proj:3"
epo_module = sys.modules["dreamy.language.epo"]
gcg_module = sys.modules["dreamy.language.gcg"]


def _split_the(tokenizer) -> list[int]:
    """'t', 'h', 'e' as three tokens: their text 'the' re-encodes as one token, so the span fails retokenization."""
    ids = tokenizer.convert_tokens_to_ids(list("the"))
    assert not survives_retokenization(tokenizer, [ids]).item()
    return ids


def test_a_random_start_that_does_not_retokenize_to_itself_is_redrawn(tiny_lm):
    tok = tiny_lm.tokenizer
    pool = allowed_tokens(tok).nonzero().flatten()
    plain = pool[torch.randint(len(pool), (4, 8), generator=make_generator(0))]  # the draw seed 0 makes first
    assert survives_retokenization(tok, plain).tolist() == [False, True, True, True]
    for search, kwargs in ((epo, dict(population=4)), (gcg, {})):
        result = search(tiny_lm, TARGET, n_tokens=8, iters=2, children=8, seed=0, progress=False, **kwargs)
        starts = [r["token_ids"] for r in result.history if r["iteration"] == 0]
        assert survives_retokenization(tok, starts).all()
        assert starts[0] != plain[0].tolist()  # redrawn; the members that passed are kept as drawn
        assert starts[1:] == plain[1:len(starts)].tolist()
    loose = epo(tiny_lm, TARGET, n_tokens=8, iters=1, population=4, children=8, seed=0, retokenize=False,
                progress=False)
    assert [r["token_ids"] for r in loose.history if r["iteration"] == 0] == plain.tolist()


def test_a_start_the_filters_refuse_is_refused_in_one_line_and_a_window_that_fails_is_skipped(tiny_lm):
    split = _split_the(tiny_lm.tokenizer)
    for search in (epo, gcg):
        with pytest.raises(ValueError, match=r"init=\(85, 73, 70, 5\) cannot start a search of n_tokens=4: its text "
                                             r"'the\$' re-encodes to other tokens; .*retokenize=False"):
            search(tiny_lm, TARGET, n_tokens=4, iters=1, children=4, init=split + [5], progress=False)
    ran = gcg(tiny_lm, TARGET, n_tokens=4, iters=1, children=4, init=split + [5], retokenize=False, progress=False)
    assert ran.history[0]["token_ids"] == split + [5]
    with pytest.raises(ValueError, match=r"token 0 \('<\|endoftext\|>'\) is not one the search may use"):
        epo(tiny_lm, TARGET, n_tokens=4, iters=1, children=4, init=[0, 5, 6, 7], progress=False)
    windows = [split + [5], [9, 10, 11, 12]]
    result = epo(tiny_lm, TARGET, n_tokens=4, iters=1, population=2, children=4, init="maxima",
                 starts={TARGET: windows}, progress=False)
    first = [r for r in result.history if r["iteration"] == 0]
    assert first[0]["token_ids"] == [9, 10, 11, 12] and [r["origin"] for r in first] == ["window 1", "random"]
    assert survives_retokenization(tiny_lm.tokenizer, [r["token_ids"] for r in first]).all()


def _blocking(filter_candidates, blocked_iterations):
    """A `filter_candidates` that lets no child through on the calls (iterations) in `blocked_iterations`."""
    calls = []

    def patched(tokenizer, groups, **kwargs):
        calls.append(1)
        kept = filter_candidates(tokenizer, groups, **kwargs)
        return [[] for _ in kept] if len(calls) in blocked_iterations else kept
    return patched


@pytest.mark.parametrize("search,module", [(epo, epo_module), (gcg, gcg_module)])
def test_a_search_blocked_by_the_token_filters_starts_afresh_and_says_how_often_it_moved(tiny_lm, monkeypatch,
                                                                                        search, module):
    blocked = set(range(1, STALL_ITERS + 1))
    monkeypatch.setattr(module, "filter_candidates", _blocking(module.filter_candidates, blocked))
    kwargs = dict(population=3) if search is epo else {}
    result = search(tiny_lm, TARGET, n_tokens=5, iters=STALL_ITERS + 3, children=8, seed=2, progress=False, **kwargs)
    assert result.settings["fresh_starts"] == [STALL_ITERS]
    fresh = [r for r in result.history if r["iteration"] == STALL_ITERS]
    assert len(fresh) == (3 if search is epo else 1) and {r["origin"] for r in fresh} == {"random"}
    assert survives_retokenization(tiny_lm.tokenizer, [r["token_ids"] for r in fresh]).all()
    moved = result.settings["iterations_moved"]
    assert 1 <= moved <= 3  # only the three iterations after the fresh start could move it
    if search is gcg:  # GCG moves to the best child whenever one survives
        assert moved == 3


@pytest.mark.parametrize("search,module", [(epo, epo_module), (gcg, gcg_module)])
def test_a_search_the_token_filters_block_for_good_stops_naming_why(tiny_lm, monkeypatch, search, module):
    monkeypatch.setattr(module, "filter_candidates", _blocking(module.filter_candidates, set(range(1, 100))))
    with pytest.raises(RuntimeError, match=rf"{search.__name__} on '{TARGET}' is stuck: no child passed the token "
                                           rf"filters for {STALL_ITERS} iterations, even after a fresh random start at "
                                           rf"iteration {STALL_ITERS}; set retokenize=False"):
        search(tiny_lm, TARGET, n_tokens=5, iters=20, children=8, progress=False)


@pytest.mark.parametrize("search,module", [(epo, epo_module), (gcg, gcg_module)])
def test_a_converged_search_is_not_a_stalled_one(tiny_lm, monkeypatch, search, module):
    """Children that all equal their parent (nothing better to swap in) are no stall: no fresh start, no error."""
    monkeypatch.setattr(module, "swap_children", lambda spans, top, *, children, **_: spans.repeat_interleave(children, 0))
    kwargs = dict(population=2) if search is epo else {}
    still = search(tiny_lm, TARGET, n_tokens=3, iters=2 * STALL_ITERS + 2, children=4, progress=False, **kwargs)
    assert still.settings["fresh_starts"] == [] and still.settings["iterations_moved"] == 0
    assert still.settings["iterations_run"] == 2 * STALL_ITERS + 2


def test_iterations_moved_counts_the_iterations_that_changed_the_population(tiny_lm):
    result = gcg(tiny_lm, TARGET, n_tokens=5, iters=4, children=8, progress=False)
    assert result.settings["iterations_moved"] == 4 and result.settings["fresh_starts"] == []
    many = epo(tiny_lm, [TARGET, "logits:4"], n_tokens=5, iters=3, population=2, children=8, progress=False)
    for one in many:
        assert 0 <= one.settings["iterations_moved"] <= one.settings["iterations_run"] == 3


@pytest.mark.parametrize("config", [EPOConfig, GCGConfig])
def test_token_ids_must_be_whole_numbers_and_seeds_fit_64_bits(config):
    with pytest.raises(ConfigError, match=r"init must be None, a text or token ids \(whole numbers\), got \[3\.5"):
        config(init=[3.5, 4, 5, 6])
    assert config(init=[torch.tensor(3), 4]).init == (3, 4)
    with pytest.raises(ConfigError, match=r"seed must be in \[0, 2\*\*64\)"):
        config(seed=2 ** 64)
    assert config(seed=2 ** 64 - 1).seed == 2 ** 64 - 1


@pytest.mark.parametrize("ids", [[10 ** 7] * 4, [-1] * 4])
def test_a_token_id_outside_the_vocabulary_is_refused_in_one_line(tiny_lm, ids):
    for search in (epo, gcg):
        with pytest.raises(ValueError, match=rf"token id {ids[0]} is outside the model's vocabulary of 320 tokens "
                                             r"\(ids 0 to 319\)"):
            search(tiny_lm, TARGET, n_tokens=4, iters=1, children=4, init=ids, progress=False)


def test_a_missing_target_is_refused_in_one_line(tiny_lm):
    for search in (epo, gcg):
        with pytest.raises(TypeError, match="the target must be a spec such as .* got None"):
            search(tiny_lm, None, progress=False)
        with pytest.raises(TypeError, match="got 3"):
            search(tiny_lm, [TARGET, 3], progress=False)
