"""dreamy/targets/dialects.py: TransformerLens hook names read the right tensor on tiny Llama, Gemma-3, GPT-2 and
GPT-NeoX models (each checked against hooks placed by hand and the identities that tie them together), SAEs find
their site in their cfg, and a processed TransformerLens model's re-centred residual is matched."""

import json

import pytest
import torch
from safetensors.torch import save_file

from dreamy.targets import Probe, TargetError, check_targets, parse
from dreamy.targets.dialects import complete_sites, family_of, reading, transformerlens_names
from tests.fixtures import TINY_FAMILIES, tiny_hf

IDS = torch.tensor([[3, 14, 15, 92, 65, 35, 8], [8, 9, 7, 9, 3, 2, 38]])
L = 1


def _probe_values(model, names):
    result = Probe(model, names)(input_ids=IDS, keep_activations=True)
    return {name: result.activations[name] for name in names}


class _Hand:
    """Hooks placed by hand on named modules: their outputs ('out') or first inputs ('in')."""

    def __init__(self, model, spec):
        self.model, self.spec, self.got = model, spec, {}

    def run(self, **kwargs):
        handles = []
        for label, (path, kind) in self.spec.items():
            module = self.model.get_submodule(path)
            if kind == "in":
                def pre_hook(m, args, kw, label=label):
                    self.got.setdefault(label, args[0] if args else next(iter(kw.values())))
                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:
                def hook(m, args, out, label=label):
                    self.got.setdefault(label, out[0] if isinstance(out, tuple) else out)
                handles.append(module.register_forward_hook(hook))
        try:
            with torch.no_grad():
                return self.model(input_ids=IDS, output_attentions=True, output_hidden_states=True, **kwargs)
        finally:
            for handle in handles:
                handle.remove()


def _layout(family):
    """(blocks path, module names by role) as each family's modeling code names them."""
    if family in ("llama", "gemma3"):
        names = dict(attn="self_attn", mlp="mlp", ln1="input_layernorm", final="model.norm", embed="model.embed_tokens")
        names.update(ln2="pre_feedforward_layernorm" if family == "gemma3" else "post_attention_layernorm")
        return "model.layers", names
    if family == "gpt2":
        return "transformer.h", dict(attn="attn", mlp="mlp", ln1="ln_1", ln2="ln_2", final="transformer.ln_f",
                                     embed="transformer.wte")
    return "gpt_neox.layers", dict(attn="attention", mlp="mlp", ln1="input_layernorm", ln2="post_attention_layernorm",
                                   final="gpt_neox.final_layer_norm", embed="gpt_neox.embed_in")


def _gain_removed(family, norm, output):
    """A norm's output without its gain (and bias): what TransformerLens calls hook_normalized."""
    if family == "gemma3":
        return output / (1 + norm.weight)
    if family == "llama":
        return output / norm.weight
    return (output - norm.bias) / norm.weight


def _values_v(family, block, ln1_out, n_heads):
    """The value vectors of every query head `[B, T, heads, d_head]` from the attention's normalized input."""
    b, t, _ = ln1_out.shape
    if family in ("llama", "gemma3"):
        attn = block.self_attn
        v = attn.v_proj(ln1_out).view(b, t, -1, attn.head_dim)
        return v.repeat_interleave(n_heads // v.shape[2], dim=2)
    if family == "gpt2":
        _, _, v = block.attn.c_attn(ln1_out).split(block.attn.split_size, dim=2)
        return v.view(b, t, n_heads, -1)
    qkv = block.attention.query_key_value(ln1_out).view(b, t, n_heads, -1)
    return qkv.chunk(3, dim=-1)[2]


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_transformerlens_names_read_what_hand_placed_hooks_read(family):
    model = tiny_hf(family)
    blocks, n = _layout(family)
    block_path, prev = f"{blocks}.{L}", f"{blocks}.{L - 1}"
    block = model.get_submodule(block_path)
    spec = {"prev_out": (prev, "out"), "block_out": (block_path, "out"), "attn": (f"{block_path}.{n['attn']}", "out"),
            "mlp": (f"{block_path}.{n['mlp']}", "out"), "ln1": (f"{block_path}.{n['ln1']}", "out"),
            "ln2": (f"{block_path}.{n['ln2']}", "out"), "final": (n["final"], "out"), "final_in": (n["final"], "in"),
            "embed": (n["embed"], "out")}
    if family == "gemma3":
        spec.update(attn_post=(f"{block_path}.post_attention_layernorm", "out"), mlp_post=(f"{block_path}.post_feedforward_layernorm", "out"))
    hand = _Hand(model, spec)
    out = hand.run()
    got = hand.got
    names = [f"blocks.{L}.{hook}" for hook in ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post",
                                               "ln1.hook_normalized", "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post",
                                               "attn.hook_z")]
    names += ["ln_final.hook_normalized", "hook_embed", "blocks.2.hook_resid_post"]
    parallel = family == "gpt_neox"
    if not parallel:
        names.append(f"blocks.{L}.hook_resid_mid")
    ours = _probe_values(model, names)

    def same(name, expected):
        assert ours[name].shape == expected.shape, name
        assert torch.allclose(ours[name], expected, atol=2e-5), (name, float((ours[name] - expected).abs().max()))

    attn_out = got["attn_post"] if family == "gemma3" else got["attn"]
    mlp_out = got["mlp_post"] if family == "gemma3" else got["mlp"]
    same(f"blocks.{L}.hook_resid_pre", got["prev_out"])
    same(f"blocks.{L}.hook_attn_out", attn_out)
    same(f"blocks.{L}.hook_mlp_out", mlp_out)
    same(f"blocks.{L}.hook_resid_post", got["block_out"])
    if parallel:  # attention and MLP read the same residual and both add to it
        same(f"blocks.{L}.hook_resid_post", got["prev_out"] + attn_out + mlp_out)
    else:
        same(f"blocks.{L}.hook_resid_mid", got["prev_out"] + attn_out)
        same(f"blocks.{L}.hook_resid_post", ours[f"blocks.{L}.hook_resid_mid"] + mlp_out)
    ln1, ln2 = block.get_submodule(n["ln1"]), block.get_submodule(n["ln2"])
    same(f"blocks.{L}.ln1.hook_normalized", _gain_removed(family, ln1, got["ln1"]))
    same(f"blocks.{L}.ln2.hook_normalized", _gain_removed(family, ln2, got["ln2"]))
    same("ln_final.hook_normalized", _gain_removed(family, model.get_submodule(n["final"]), got["final"]))
    same("hook_embed", got["embed"])
    same("blocks.2.hook_resid_post", got["final_in"])  # the last block: before the final norm
    assert not torch.allclose(ours["blocks.2.hook_resid_post"], out.hidden_states[-1], atol=1e-3)  # HF's is after it
    mlp = block.get_submodule(n["mlp"])
    down = {"gpt2": "c_proj", "gpt_neox": "dense_4h_to_h"}.get(family.split("_seq")[0], "down_proj")
    up = {"gpt2": "c_fc", "gpt_neox": "dense_h_to_4h"}.get(family.split("_seq")[0], "gate_proj")
    with torch.no_grad():
        same(f"blocks.{L}.mlp.hook_pre", getattr(mlp, up)(got["ln2"]))
        assert torch.allclose(getattr(mlp, down)(ours[f"blocks.{L}.mlp.hook_post"]), got["mlp"], atol=2e-5)
        heads = out.attentions[L].shape[1]
        v = _values_v(family.split("_seq")[0], block, got["ln1"], heads)  # [B, T, H, d_head]
        z = torch.einsum("bhqk,bkhd->bqhd", out.attentions[L], v)  # the attention-weighted values of each head
        same(f"blocks.{L}.attn.hook_z", z.reshape(z.shape[0], z.shape[1], -1))  # head-major, as SAELens flattens


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_listed_name_is_a_site(family):
    model = tiny_hf(family)
    names = transformerlens_names(model)
    assert ("blocks.0.hook_resid_mid" in names) == (family != "gpt_neox")
    assert ("hook_pos_embed" in names) == (family == "gpt2")
    units = {name: "head=0,key=0" if name.endswith("hook_pattern") else "0" for name in names}  # a bare index is refused there
    assert check_targets(model, [f"{name}:{units[name]}" for name in names if name != "hook_pos_embed"], IDS) == []


def test_names_the_model_cannot_give_are_refused_with_the_fix():
    neox, llama = tiny_hf("gpt_neox"), tiny_hf("llama")
    with pytest.raises(TargetError, match="runs attention and MLP in parallel .* read hook_resid_pre or hook_resid_post"):
        reading(neox, parse("blocks.1.hook_resid_mid").terms[0].site)
    with pytest.raises(TargetError, match=r"block 7 out of range, the model has 3 blocks \(0..2\)"):
        reading(llama, parse("blocks.7.hook_resid_post").terms[0].site)
    with pytest.raises(TargetError, match="unknown TransformerLens site 'blocks.1.hook_resid_sideways'.*dream sites MODEL --names transformerlens"):
        reading(llama, parse("blocks.1.hook_resid_sideways").terms[0].site)
    with pytest.raises(TargetError, match="takes no '@in' or '\\[k\\]'"):
        reading(llama, parse("blocks.1.hook_resid_post@in").terms[0].site)
    with pytest.raises(TargetError, match="not a model whose TransformerLens names are known"):
        Probe(torch.nn.Sequential(torch.nn.Linear(2, 2)), ["blocks.0.hook_resid_post:1"])
    assert family_of(torch.nn.Sequential(torch.nn.Linear(2, 2))) is None


def _sae_folder(path, d_in, hook_name, *, d_sae=3, seed=0, kwargs=None):
    gen = torch.Generator().manual_seed(seed)
    path.mkdir()
    meta = {"hook_name": hook_name, "model_name": "tiny", "sae_lens_version": "6.54.12"}
    if kwargs is not None:
        meta["model_from_pretrained_kwargs"] = kwargs
    (path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
                                               "apply_b_dec_to_input": True, "metadata": meta}))
    tensors = {"W_enc": torch.randn(d_in, d_sae, generator=gen) / d_in ** 0.5, "b_enc": torch.zeros(d_sae),
               "W_dec": torch.randn(d_sae, d_in, generator=gen), "b_dec": 0.1 * torch.randn(d_in, generator=gen)}
    save_file(tensors, str(path / "sae_weights.safetensors"))
    return path, tensors


def test_an_sae_names_its_own_site(tmp_path):
    model = tiny_hf("llama")
    folder, t = _sae_folder(tmp_path / "sae", 32, "blocks.1.hook_resid_post")
    assert [str(s) for s in complete_sites(f"sae={folder}#2").sites] == ["blocks.1.hook_resid_post"]
    scores = Probe(model, [f"sae={folder}#{i}/pos=-1" for i in range(3)])(input_ids=IDS).scores
    x = _probe_values(model, ["model.layers.1"])["model.layers.1"][:, -1]
    assert torch.allclose(scores, ((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]).clamp(min=0), atol=1e-5)
    wrong, _ = _sae_folder(tmp_path / "wrong", 64, "blocks.1.hook_resid_post")  # an SAE of another width
    none, _ = _sae_folder(tmp_path / "none", 32, None)
    errors = dict(check_targets(model, [f"sae={folder}#0", f"sae={wrong}#0", f"sae={none}#0", "sae=/no/such#0"], IDS))
    assert list(errors) == [f"sae={wrong}#0", f"sae={none}#0", "sae=/no/such#0"]
    assert "d_in=64 features but site 'blocks.1.hook_resid_post' has 32" in errors[f"sae={wrong}#0"]
    assert "names no hook_name" in errors[f"sae={none}#0"] and "SITE:sae=DIR#i" in errors[f"sae={none}#0"]
    assert "does not exist" in errors["sae=/no/such#0"]


def test_an_hf_hook_name_wins_and_reads_module_inputs(tmp_path):
    model = tiny_hf("gemma3")
    folder, t = _sae_folder(tmp_path / "sae", 32, "blocks.1.attn.hook_z")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"]["hf_hook_name"] = "model.layers.1.self_attn.o_proj.input"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    assert [str(s) for s in complete_sites(f"sae={folder}#0").sites] == ["model.layers.1.self_attn.o_proj@in"]
    both = Probe(model, [f"sae={folder}#1/pos=2", f"blocks.1.attn.hook_z:sae={folder}#1/pos=2"])(input_ids=IDS).scores
    assert torch.allclose(both[:, 0], both[:, 1])


def test_centring_of_a_processed_layernorm_model_is_applied_and_not_on_rms_models(tmp_path, caplog):
    gpt2, llama = tiny_hf("gpt2"), tiny_hf("llama")
    centred, t = _sae_folder(tmp_path / "c", 32, "blocks.1.hook_resid_post", kwargs={"center_writing_weights": True})
    raw, _ = _sae_folder(tmp_path / "r", 32, "blocks.1.hook_resid_post", kwargs={"center_writing_weights": False})
    x = _probe_values(gpt2, ["transformer.h.1"])["transformer.h.1"][:, -1]
    expected = ((x - x.mean(dim=-1, keepdim=True) - t["b_dec"]) @ t["W_enc"]).clamp(min=0)
    scores = Probe(gpt2, [f"sae={centred}#{i}/pos=-1" for i in range(3)] + [f"sae={raw}#0/pos=-1"])(input_ids=IDS).scores
    assert torch.allclose(scores[:, :3], expected, atol=1e-5)
    assert torch.allclose(scores[:, 3], ((x - t["b_dec"]) @ t["W_enc"][:, 0]).clamp(min=0), atol=1e-5)
    # the same SAE on an RMSNorm model: TransformerLens does not centre there, and neither does dreamy
    y = _probe_values(llama, ["model.layers.1"])["model.layers.1"][:, -1]
    with caplog.at_level("WARNING"):
        on_llama = Probe(llama, [f"sae={centred}#0/pos=-1"])(input_ids=IDS).scores[:, 0]
        on_module = Probe(gpt2, [f"transformer.h.1.mlp.c_fc:sae={_sae_folder(tmp_path / 'm', 128, 'x', kwargs={'center_writing_weights': True})[0]}#0"])(input_ids=IDS)
    assert torch.allclose(on_llama, ((y - t["b_dec"]) @ t["W_enc"][:, 0]).clamp(min=0), atol=1e-5)
    warned = [r.getMessage() for r in caplog.records if "center_writing_weights" in r.getMessage()]
    assert len(warned) == 1 and "removes each residual vector's mean" in warned[0] and str(tmp_path / "m") in warned[0]
    assert on_module.scores.shape == (2, 1)


@pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated")
def test_centring_matches_transformerlens_processed_gpt2(tmp_path):
    """Against the real TransformerLens: a GPT-2 loaded with center_writing_weights=True, as an SAE trained on it saw."""
    pytest.importorskip("transformer_lens", reason="transformer-lens is installed with sae-lens by `make venv`")
    from tests.fixtures import sae_lens

    sae_lens()  # imports transformer_lens with the wandb stand-in when needed
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    hf = tiny_hf("gpt2")
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["n_ctx"] = config["n_positions"]  # TransformerLens 3.9 reads n_ctx, which transformers 5 no longer writes
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    cfg = loading.get_pretrained_model_config(str(tmp_path / "hf"), dtype=torch.float32, device="cpu", fold_ln=True)
    state = loading.get_pretrained_state_dict(str(tmp_path / "hf"), cfg, hf, dtype=torch.float32)
    cfg.tokenizer_name = None
    tl = HookedTransformer(cfg, move_to_device=False)
    tl.load_and_process_state_dict(state, fold_ln=True, center_writing_weights=True, center_unembed=False,
                                   fold_value_biases=False)
    with torch.no_grad():
        _, cache = tl.eval().run_with_cache(IDS)
    folder, t = _sae_folder(tmp_path / "sae", 32, "blocks.1.hook_resid_post",
                            kwargs={"fold_ln": True, "center_writing_weights": True})
    resid = cache["blocks.1.hook_resid_post"][:, -1]
    assert not torch.allclose(resid, _probe_values(hf, ["transformer.h.1"])["transformer.h.1"][:, -1], atol=1e-3)
    expected = ((resid - t["b_dec"]) @ t["W_enc"] + t["b_enc"]).clamp(min=0)
    scores = Probe(hf, [f"sae={folder}#{i}/pos=-1" for i in range(3)])(input_ids=IDS).scores
    assert torch.allclose(scores, expected, atol=1e-5)
