"""dreamy/targets/attention.py and head units: attention-pattern entries equal the eager weights whatever the
attention implementation; a head's output (a unit, a direction, its norm) equals a hand computation; errors say
what fits; EPO and GCG dream both."""

import types

import pytest
import torch

from dreamy.language import epo, gcg
from dreamy.targets import Probe, TargetError, check_targets
from dreamy.targets.attention import capture_patterns
from tests.fixtures import tiny_hf

IDS = torch.tensor([[3, 14, 15, 92, 65, 35, 8], [8, 9, 7, 9, 3, 2, 38]])
FAMILIES = ["llama", "gemma3", "gpt2", "gpt_neox"]
ATTENTION = {"llama": "model.layers.{}.self_attn", "gemma3": "model.layers.{}.self_attn", "gpt2": "transformer.h.{}.attn",
             "gpt_neox": "gpt_neox.layers.{}.attention"}


def _eager_attentions(family, **kwargs):
    with torch.no_grad():
        return tiny_hf(family, "eager")(input_ids=IDS, output_attentions=True, **kwargs).attentions


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", FAMILIES)
def test_pattern_entries_are_the_eager_attention_weights(family, attention):
    model = tiny_hf(family, attention)
    expected = _eager_attentions(family)
    for layer in (0, 1):  # Gemma-3's block 0 attends through a sliding window of 4 (shorter than the 7 tokens)
        heads = expected[layer].shape[1]
        specs = [f"blocks.{layer}.attn.hook_pattern:head={h},key={k}/pos={q}" for h in range(heads) for q in range(7)
                 for k in range(7)]
        scores = Probe(model, specs)(input_ids=IDS).scores.reshape(2, heads, 7, 7)
        assert torch.allclose(scores, expected[layer], atol=1e-6), float((scores - expected[layer]).abs().max())
    if family == "gemma3":
        assert float(expected[0][0, 0, 6, :3].abs().max()) == 0 and float(expected[1][0, 0, 6, :3].min()) > 0


def test_a_padded_batch_uses_the_models_own_mask():
    model = tiny_hf("llama", "sdpa")
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    expected = _eager_attentions("llama", attention_mask=mask)[1]
    specs = [f"blocks.1.attn.hook_pattern:head=2,key={k}" for k in range(7)]  # the last query position by default
    scores = Probe(model, specs, sequence_reduce="pos=-1")(input_ids=IDS, attention_mask=mask).scores
    assert torch.allclose(scores, expected[:, 2, -1], atol=1e-6) and float(scores[0, :2].abs().max()) == 0


def test_the_forward_is_unchanged_and_the_model_restored_even_when_it_fails():
    model = tiny_hf("gpt2", "sdpa")
    attention = model.transformer.h[1].attn
    own = attention.config
    with torch.no_grad():
        clean = model(input_ids=IDS).logits
        probed = Probe(model, ["blocks.1.attn.hook_pattern:head=0,key=0", "logits:3"])(input_ids=IDS, need_output=True)
    assert torch.equal(probed.output.logits, clean) and attention.config is own

    def fail(module, args, output):
        raise RuntimeError("boom")

    handle = model.transformer.h[2].register_forward_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            Probe(model, ["blocks.1.attn.hook_pattern:head=0,key=0", "logits:3"])(input_ids=IDS)
    finally:
        handle.remove()
    assert attention.config is own


def test_unsupported_attention_implementations_are_refused_by_name():
    module = torch.nn.Module()
    module.config = types.SimpleNamespace(_attn_implementation="flash_attention_2")
    with pytest.raises(TargetError, match="read from models run with eager or sdpa attention; .* 'flash_attention_2'"):
        capture_patterns(module)


def test_pattern_entries_give_gradients():
    model = tiny_hf("llama", "sdpa")
    embeds = model.get_input_embeddings()(IDS).detach().requires_grad_(True)
    Probe(model, ["blocks.1.attn.hook_pattern:head=1,key=2"], sequence_reduce="pos=-1")(inputs_embeds=embeds).scores.sum().backward()
    assert embeds.grad is not None and float(embeds.grad[:, :3].abs().sum()) > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_head_units_read_one_heads_output(family, tmp_path):
    model = tiny_hf(family, "sdpa")
    z = Probe(model, ["blocks.1.attn.hook_z"])(input_ids=IDS, keep_activations=True).activations["blocks.1.attn.hook_z"]
    heads = model.config.num_attention_heads if hasattr(model.config, "num_attention_heads") else model.config.n_head
    d_head = z.shape[-1] // heads
    head = z[..., 2 * d_head:3 * d_head]  # head 2, head-major
    direction = torch.randn(d_head, generator=torch.Generator().manual_seed(0))
    torch.save({"v": direction}, tmp_path / "v.pt")
    native = ATTENTION[family].format(1) + {"llama": ".o_proj", "gemma3": ".o_proj", "gpt2": ".c_proj", "gpt_neox": ".dense"}[family]
    specs = ["blocks.1.attn.hook_z:head=2,1/pos=3", "blocks.1.attn.hook_z:head=2,norm/pos=3",
             f"blocks.1.attn.hook_z:head=2,dir={tmp_path}/v.pt#v/pos=3", "blocks.1.attn.hook_z:head=2/pos=3",
             f"{native}@in:head=2,norm/pos=3"]
    scores = Probe(model, specs)(input_ids=IDS).scores
    one = head[:, 3]
    expected = torch.stack([one[:, 1], one.norm(dim=-1), one @ direction, one.mean(dim=-1), one.norm(dim=-1)], dim=1)
    assert torch.allclose(scores, expected, atol=1e-5)


def test_head_unit_errors_say_what_fits():
    model = tiny_hf("llama", "sdpa")
    specs = ["blocks.1.attn.hook_z:head=4,0", "blocks.1.hook_resid_post:head=0,norm", "blocks.1.attn.hook_z:head=0,key=1",
             "blocks.1.attn.hook_pattern:head=0,norm", "blocks.1.attn.hook_pattern:head=0,key=9",
             "blocks.1.attn.hook_z:head=0,8", "blocks.1.attn.hook_pattern:head=1,key=-7"]
    errors = dict(check_targets(model, specs, IDS))
    assert list(errors) == specs[:-1]
    assert "head 4 out of range for site 'blocks.1.attn.hook_z' with 4 heads (0..3)" in errors[specs[0]]
    assert "not a per-head site; use blocks.L.attn.hook_z" in errors[specs[1]]
    assert "use head=H,I, head=H,norm or head=H,dir=FILE" in errors[specs[2]]
    assert "use head=H,key=J" in errors[specs[3]]
    assert "key position 9 out of range for site 'blocks.1.attn.hook_pattern' with 7 positions (-7..6)" in errors[specs[4]]
    assert "unit 8 out of range for site 'blocks.1.attn.hook_z head 0' with 8 features" in errors[specs[5]]


def test_epo_and_gcg_dream_attention_targets(tiny_lm):
    """The searches raise an attention-pattern entry and a head's norm; what they report is what a plain probe reads."""
    pattern, norm = "blocks.1.attn.hook_pattern:head=1,key=1", "blocks.0.attn.hook_z:head=3,norm"
    dreamed = epo(tiny_lm, pattern, n_tokens=4, iters=4, population=2, children=8, seed=0, progress=False)
    climbed = gcg(tiny_lm, norm, n_tokens=4, iters=4, children=16, seed=0, progress=False)
    for result, spec in ((dreamed, pattern), (climbed, norm)):
        first = max(r["activation"] for r in result.history if r["iteration"] == 0)
        assert result.best.activation >= first
        ids = torch.tensor([[0] + list(result.best.token_ids)])  # the start token, then the span
        again = Probe(tiny_lm.model, [spec], sequence_reduce="pos=-1")(input_ids=ids).scores[0, 0]
        assert float(again) == pytest.approx(result.best.activation, abs=1e-4)
    assert 0 <= dreamed.best.activation <= 1


def test_a_pattern_site_read_without_head_and_key_is_refused(tmp_path):
    """`hook_pattern:5` read head 0, key 5 of the flattened weights (and the bare site a constant 1/positions)."""
    model = tiny_hf("llama", "sdpa")
    torch.save(torch.ones(4 * 7), tmp_path / "v.pt")
    specs = ["blocks.1.attn.hook_pattern:5", "blocks.1.attn.hook_pattern", f"blocks.1.attn.hook_pattern:dir={tmp_path}/v.pt",
             "blocks.1.attn.hook_pattern:head=0,key=5"]
    errors = dict(check_targets(model, specs, IDS))
    assert list(errors) == specs[:3]
    assert all("use head=H,key=J" in error and "\n" not in error for error in errors.values())
    assert "unit 5 does not fit site 'blocks.1.attn.hook_pattern'" in errors[specs[0]]
    with pytest.raises(TargetError, match="use head=H,key=J"):
        Probe(model, specs[:1])(input_ids=IDS)
