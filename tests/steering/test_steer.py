"""dreamy.steering on tiny:lm: steering along a token's unembedding makes the model say it, alpha 0 changes
nothing, the input score counts planted windows, hooks never outlive a generation, unsteerable targets are refused."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from dreamy.core.config import ConfigError
from dreamy.steering import (SteerConfig, continuation_xentropy, generate, input_score, promoted_tokens,
                             rank_output_score, site_norm, steer, steer_many, steering_direction)
from dreamy.targets import TargetError

TOKEN = 7
SITE = "model.layers.1"


@pytest.fixture
def token_dir(tiny_lm, tmp_path):
    """A dir= target at the last block whose logit lens reads as token 7 (the final norm's gain divided out)."""
    vector = tiny_lm.model.lm_head.weight[TOKEN].detach() / tiny_lm.model.model.norm.weight.detach()
    path = tmp_path / "token7.pt"
    torch.save(vector.clone(), path)
    return f"{SITE}:dir={path}"


def test_steering_along_a_tokens_unembedding_makes_the_model_say_it(tiny_lm, token_dir):
    result = steer(tiny_lm, token_dir, prompts=("The cat", "A dog ran"), new_tokens=6, scale=20.0, top_k=5)
    assert result.promoted[0][1] == TOKEN
    assert result.alpha == pytest.approx(20.0 * site_norm(tiny_lm, SITE, ("The cat", "A dog ran")))
    assert result.promoted_share == 1.0 and result.promoted_share_unsteered < 0.5
    assert result.output_min_rank == 0 and result.output_max_prob > 0.9
    assert result.output_score > 0.9 > result.output_score_unsteered
    assert result.promoted_rise > 0.5
    weak = steer(tiny_lm, token_dir, prompts=("The cat", "A dog ran"), new_tokens=6, scale=0.01, top_k=5)
    assert weak.output_score < result.output_score and weak.promoted_rise < result.promoted_rise
    record = result.to_records()[0]
    assert record["kind"] == "steering" and record["fluency_cost"] == result.xent_steered - result.xent_unsteered
    assert all(TOKEN in tiny_lm.tokenizer(c["steered"], add_special_tokens=False)["input_ids"] or c["steered"]
               for c in record["continuations"])


def test_the_output_score_is_the_papers_rank_times_probability():
    probs = torch.tensor([0.1, 0.4, 0.2, 0.3])
    score, rank, prob = rank_output_score(probs, [2, 3])  # token 3 (0.3) ranks 1, below token 1
    assert (rank, prob) == (1, pytest.approx(0.3)) and score == pytest.approx((1 - 1 / 4) * 0.3)
    assert rank_output_score(probs, [1])[0] == pytest.approx(0.4)


def test_alpha_zero_reproduces_the_unsteered_generation_exactly(tiny_lm, token_dir):
    result = steer(tiny_lm, token_dir, prompts=("The cat", "Once"), new_tokens=8, alpha=0.0)
    assert all(c["steered"] == c["unsteered"] for c in result.continuations)
    assert result.promoted_rise == 0.0 and result.fluency_cost == 0.0
    assert result.output_score == result.output_score_unsteered
    plain = generate(tiny_lm, "The cat", 8)
    site, unit = steering_direction(tiny_lm, token_dir)
    for positions in ("last", "all"):
        zero = generate(tiny_lm, "The cat", 8, site=site, vector=0.0 * unit, positions=positions)
        assert zero.token_ids == plain.token_ids and zero.logprobs == plain.logprobs
        assert torch.equal(zero.first_probs, plain.first_probs)


def test_positions_last_leaves_the_earlier_prompt_tokens_alone(tiny_lm, token_dir):
    site, unit = steering_direction(tiny_lm, token_dir)
    seen = []

    def spy(module, args):
        seen.append(args[0].detach().clone())

    handle = tiny_lm.model.model.norm.register_forward_pre_hook(spy)  # what the steered last block hands on
    try:
        plain = generate(tiny_lm, "The cat", 1)
        clean = seen.pop()
        generate(tiny_lm, "The cat", 1, site=site, vector=3.0 * unit, positions="last")
        last = seen.pop()
        generate(tiny_lm, "The cat", 1, site=site, vector=3.0 * unit, positions="all")
        every = seen.pop()
    finally:
        handle.remove()
    assert plain.token_ids
    assert torch.equal(last[:, :-1], clean[:, :-1]) and torch.allclose(last[:, -1] - clean[:, -1], 3.0 * unit, atol=1e-5)
    assert torch.equal(every[:, 0], clean[:, 0]) and torch.allclose(every[:, 1:] - clean[:, 1:], (3.0 * unit).expand_as(every[:, 1:]), atol=1e-5)


def test_the_input_score_counts_windows_whose_top_token_is_promoted(tiny_lm, token_dir):
    promoted = [t[1] for t in promoted_tokens(tiny_lm, steering_direction(tiny_lm, token_dir)[1], k=3)]
    other = next(i for i in range(3, 300) if i not in promoted)
    hit = {"token_ids": [other, TOKEN, other], "token_activations": [0.1, 5.0, 0.2]}
    miss = {"token_ids": [TOKEN, other], "token_activations": [0.1, 5.0]}  # the token is there, but not on top
    result = steer(tiny_lm, token_dir, windows=[hit, hit, hit, miss], prompts=("A",), new_tokens=1, top_k=3)
    assert result.input_score == 0.75 and result.n_windows == 4
    assert steer(tiny_lm, token_dir, windows=[hit, miss] * 3, max_windows=2, prompts=("A",), new_tokens=1).input_score == 0.5
    assert steer(tiny_lm, token_dir, prompts=("A",), new_tokens=1).input_score is None
    assert input_score([TOKEN], [{"token_ids": [1, TOKEN]}]) == 1.0  # no activations: the last token


def test_hooks_are_removed_even_when_generation_raises(tiny_lm, token_dir, monkeypatch):
    site, unit = steering_direction(tiny_lm, token_dir)
    module = tiny_lm.model.model.layers[1]
    before = (dict(module._forward_hooks), dict(module._forward_pre_hooks))
    calls = {"n": 0}
    real = tiny_lm.model.lm_head.forward

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom mid-generation")
        return real(x)

    monkeypatch.setattr(tiny_lm.model.lm_head, "forward", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        generate(tiny_lm, "The cat", 5, site=site, vector=50.0 * unit)
    monkeypatch.undo()
    assert (dict(module._forward_hooks), dict(module._forward_pre_hooks)) == before
    assert generate(tiny_lm, "The cat", 5).token_ids == generate(tiny_lm, "The cat", 5).token_ids


def test_sampling_is_reproducible_from_the_seed(tiny_lm):
    a = steer_many(tiny_lm, ["model.layers.0:4"], prompts=("The cat",), new_tokens=10, temperature=1.5, seed=3)[0]
    b = steer_many(tiny_lm, ["model.layers.0:4"], prompts=("The cat",), new_tokens=10, temperature=1.5, seed=3)[0]
    c = steer_many(tiny_lm, ["model.layers.0:4"], prompts=("The cat",), new_tokens=10, temperature=1.5, seed=4)[0]
    assert a.continuations == b.continuations and a.continuations != c.continuations


def test_the_fluency_cost_is_measured_under_the_unsteered_model(tiny_lm, token_dir):
    result = steer(tiny_lm, token_dir, prompts=("The cat",), new_tokens=5, scale=20.0)
    plain = generate(tiny_lm, "The cat", 5)
    assert result.xent_unsteered == pytest.approx(-sum(plain.logprobs) / 5, abs=1e-4)
    steered_ids = tiny_lm.tokenizer(result.continuations[0]["steered"], add_special_tokens=False)["input_ids"]
    assert result.xent_steered == pytest.approx(continuation_xentropy(tiny_lm, "The cat", steered_ids), abs=1e-4)
    assert result.fluency_cost > 0  # forcing one token costs the unsteered model cross-entropy


def test_directions_of_each_kind_and_refusals(tiny_lm, tmp_path):
    site, unit = steering_direction(tiny_lm, "model.layers.1.mlp.down_proj@in:5")
    column = tiny_lm.model.model.layers[1].mlp.down_proj.weight[:, 5].detach()
    assert site == "model.layers.1.mlp.down_proj" and torch.allclose(unit, column / column.norm())
    folder = tmp_path / "sae"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"d_in": 64, "d_sae": 4, "architecture": "relu", "hook_name": SITE}))
    w_dec = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    save_file({"W_enc": torch.randn(64, 4), "b_enc": torch.zeros(4), "W_dec": w_dec, "b_dec": torch.zeros(64)},
              str(folder / "sae_weights.safetensors"))
    site, unit = steering_direction(tiny_lm, f"{SITE}:sae={folder}#2")
    assert site == SITE and torch.allclose(unit, w_dec[2] / w_dec[2].norm())
    for bad, why in (("logits:3", "one term at a hidden site"), ("model.layers.0:1+model.layers.1:2", "one term"),
                     ("model.layers.1", "no unit")):
        with pytest.raises(TargetError, match=f"cannot steer target '{re.escape(bad)}'.*{why}"):
            steer_many(tiny_lm, ["model.layers.1:3", bad], new_tokens=1)


def test_config_refuses_bad_values():
    with pytest.raises(ConfigError, match="SteerConfig.prompts"):
        SteerConfig(prompts=("",))
    with pytest.raises(ConfigError, match="SteerConfig.new_tokens must be >= 1"):
        SteerConfig(new_tokens=0)
    with pytest.raises(ConfigError, match="unknown SteerConfig setting 'alhpa'"):
        SteerConfig.build(alhpa=1.0)
    assert SteerConfig(prompts="Hello").prompts == ("Hello",)


def test_an_sae_naming_its_site_in_transformerlens_terms_steers_that_module(tiny_lm, tmp_path):
    """`sae=DIR#i` with no site and a cfg hook name `blocks.1.hook_resid_post` steers model.layers.1's output, the
    same continuations as the spec naming the Hugging Face site."""
    folder = tmp_path / "sae"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"d_in": 64, "d_sae": 4, "architecture": "relu",
                                                 "hook_name": "blocks.1.hook_resid_post"}))
    w_dec = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    save_file({"W_enc": torch.randn(64, 4), "b_enc": torch.zeros(4), "W_dec": w_dec, "b_dec": torch.zeros(64)},
              str(folder / "sae_weights.safetensors"))
    settings = dict(prompts=("A dog",), new_tokens=4, alpha=6.0)
    named = steer(tiny_lm, f"model.layers.1:sae={folder}#2", **settings).to_records()[0]
    from_cfg = steer(tiny_lm, f"sae={folder}#2", **settings).to_records()[0]
    assert from_cfg["continuations"] == named["continuations"]
    assert from_cfg["output_score"] == pytest.approx(named["output_score"])
    plain = steer(tiny_lm, f"model.layers.1:sae={folder}#2", **dict(settings, alpha=0.0)).to_records()[0]
    assert named["continuations"][0]["steered"] != plain["continuations"][0]["steered"]
