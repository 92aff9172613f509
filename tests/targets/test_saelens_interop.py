"""dreamy/targets/saelens.py against the real SAELens 6: SAEs that SAELens's own classes build and save are read
here and score what SAELens's `encode` gives (tiny random inputs, then SmolLM2's real activations); what it
cannot read is refused by name. Skips with the reason when sae-lens cannot be imported (`make venv` installs it)."""

import json

import pytest
import torch

from dreamy.sae import load
from dreamy.targets import Probe, TargetError
from tests.fixtures import SMOLLM2_TEXT, cached, sae_lens, smollm2_layer9_activations

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:sae_lens.*")
D_IN, D_SAE = 16, 32
NORMALIZATIONS = ["none", "layer_norm", "constant_norm_rescale"]


def _randomize(sae, seed, d_in):
    """Random weights of a useful scale (SAELens initialises some biases and thresholds at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sae.named_parameters():
            values = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if name == "W_enc":
                values /= d_in ** 0.5
            elif name == "W_dec":  # rows of unequal norms, so decoder-norm rescaling matters
                values *= torch.rand(param.shape[0], 1, generator=gen) * 2 + 0.5
            elif name == "threshold":
                values = values.abs() * 0.3
            else:
                values *= 0.2
            param.copy_(values.to(param.dtype))
    return sae


def _metadata(hook="blocks.3.hook_resid_post", **more):
    from sae_lens.saes.sae import SAEMetadata

    return SAEMetadata(model_name="gpt2-small", hook_name=hook, hook_head_index=None, prepend_bos=True, context_size=128,
                       model_from_pretrained_kwargs={"center_writing_weights": False}, **more)


def build(kind, *, normalize="none", apply_b_dec=True, d_in=D_IN, d_sae=D_SAE, seed=0, hook="blocks.3.hook_resid_post",
          **more):
    """An SAELens SAE of `kind` with random weights, built with SAELens's own classes."""
    from sae_lens import saes

    common = dict(d_in=d_in, d_sae=d_sae, normalize_activations=normalize, metadata=_metadata(hook), **more)
    classes = {
        "standard": (saes.StandardSAE, saes.StandardSAEConfig, {}),
        "jumprelu": (saes.JumpReLUSAE, saes.JumpReLUSAEConfig, {}),
        "topk": (saes.TopKSAE, saes.TopKSAEConfig, {"k": 5}),
        "topk_rescaled": (saes.TopKSAE, saes.TopKSAEConfig, {"k": 5, "rescale_acts_by_decoder_norm": True}),
        "abstopk": (saes.AbsTopKSAE, saes.AbsTopKSAEConfig, {"k": 5}),
        "gated": (saes.GatedSAE, saes.GatedSAEConfig, {}),
        "transcoder": (saes.Transcoder, saes.TranscoderConfig, {"d_out": 8}),
        "skip_transcoder": (saes.SkipTranscoder, saes.SkipTranscoderConfig, {"d_out": 8}),
        "jumprelu_transcoder": (saes.JumpReLUTranscoder, saes.JumpReLUTranscoderConfig, {"d_out": 8}),
        "jumprelu_skip_transcoder": (saes.JumpReLUSkipTranscoder, saes.JumpReLUSkipTranscoderConfig, {"d_out": 8}),
    }
    cls, config, extra = classes[kind]
    if "transcoder" in kind:
        apply_b_dec = False
    return _randomize(cls(config(apply_b_dec_to_input=apply_b_dec, **common, **extra)), seed, d_in).eval()


def _saved(sae, folder, inference=False):
    (sae.save_inference_model if inference else sae.save_model)(str(folder))
    return folder


def _ours(folder, x):
    """What dreamy scores for every latent of the folder on activations `x [N, d_in]` (an identity 'model')."""
    d_sae = json.loads((folder / "cfg.json").read_text())["d_sae"]
    net = torch.nn.Sequential(torch.nn.Identity())
    return Probe(net, [f"0:sae={folder}#{i}" for i in range(d_sae)])(x).scores


def _x(n=24, d_in=D_IN, seed=1):
    return 2.0 * torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed)) + 0.5


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("kind, apply_b_dec", [("standard", True), ("standard", False), ("jumprelu", True),
                                              ("gated", True), ("jumprelu", False)])
def test_elementwise_saes_saved_by_saelens_score_its_encode(tmp_path, kind, apply_b_dec, normalize):
    sae_lens()
    sae = build(kind, normalize=normalize, apply_b_dec=apply_b_dec)
    folder = _saved(sae, tmp_path / "sae")
    x = _x()
    with torch.no_grad():
        expected = sae.encode(x)
    assert torch.allclose(_ours(folder, x), expected, atol=1e-5)
    assert torch.allclose(load(folder).encode(x), expected, atol=1e-5)
    assert bool((expected > 0).any()) and bool((expected == 0).any())


@pytest.mark.parametrize("normalize", NORMALIZATIONS)
@pytest.mark.parametrize("kind", ["topk", "topk_rescaled", "abstopk"])
def test_topk_saes_saved_by_saelens_encode_alike_and_score_its_encode(tmp_path, kind, normalize):
    sae_lens()
    sae = build(kind, normalize=normalize)
    folder = _saved(sae, tmp_path / "sae")
    x = _x()
    with torch.no_grad():
        expected = sae.encode(x)
        recon = sae(x)
    ours = load(folder)
    assert torch.allclose(ours.encode(x), expected, atol=1e-5)
    assert torch.allclose(ours(x), recon, atol=1e-4)  # and the reconstruction, normalization undone
    scores = _ours(folder, x)
    assert torch.allclose(scores, expected, atol=1e-5)  # a kept latent scores its value, any other 0
    assert torch.equal(scores != 0, expected != 0)


@pytest.mark.parametrize("kind", ["topk", "topk_rescaled", "jumprelu"])
def test_every_feature_has_the_density_of_saelens_encode(tmp_path, kind):
    """Per-token maps of all latents at once (what the scan and the Neuronpedia export read): the same values and
    the same share of firing tokens as SAELens's `encode` on the same activations."""
    sae_lens()
    sae = build(kind, seed=2)
    folder = _saved(sae, tmp_path / "sae")
    x = _x(n=6 * 20).reshape(6, 20, D_IN)  # [documents, tokens, d_in]
    with torch.no_grad():
        expected = sae.encode(x)
    probe = Probe(torch.nn.Sequential(torch.nn.Identity()), [f"0:sae={folder}#{i}" for i in range(D_SAE)])
    maps = probe.stacked_maps(probe(x, keep_activations=True).activations)
    assert torch.allclose(maps, expected, atol=1e-5)
    density = (maps != 0).float().mean(dim=(0, 1))
    assert torch.equal(density, (expected != 0).float().mean(dim=(0, 1)))
    assert bool((density > 0).any()) and bool((density < 1).any())  # neither all dead nor all firing


@pytest.mark.parametrize("kind", ["transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"])
def test_transcoders_encoder_side_scores_their_encode(tmp_path, kind):
    sae_lens()
    sae = build(kind, normalize="layer_norm" if kind == "transcoder" else "none")
    folder = _saved(sae, tmp_path / "sae")
    x = _x()
    with torch.no_grad():
        expected = sae.encode(x)
    assert torch.allclose(_ours(folder, x), expected, atol=1e-5)
    with pytest.raises(TargetError, match="writes another site"):
        load(folder)


@pytest.mark.parametrize("kind", ["batchtopk", "matryoshka_batchtopk"])
def test_batchtopk_checkpoints_and_inference_saves_read_as_saelens_inference_sae(tmp_path, kind):
    sl = sae_lens()
    from sae_lens import saes

    if kind == "batchtopk":
        sae = saes.BatchTopKTrainingSAE(saes.BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4.0, metadata=_metadata()))
    else:
        sae = saes.MatryoshkaBatchTopKTrainingSAE(saes.MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, k=4.0, matryoshka_widths=[8, 16, 32], metadata=_metadata()))
    _randomize(sae, 3, D_IN)
    sae.topk_threshold = torch.tensor(0.4, dtype=torch.double)
    checkpoint = _saved(sae, tmp_path / "checkpoint")
    inference = _saved(sae, tmp_path / "inference", inference=True)
    x = _x()
    with torch.no_grad():
        expected = sl.SAE.load_from_disk(str(inference)).encode(x)
    assert json.loads((checkpoint / "cfg.json").read_text())["architecture"] == kind
    for folder in (checkpoint, inference):
        assert torch.allclose(_ours(folder, x), expected, atol=1e-5)
        assert torch.allclose(load(folder).encode(x), expected, atol=1e-5)
    assert bool((expected > 0).any()) and bool((expected == 0).any())


def test_a_hook_z_sae_reads_the_flat_per_head_output(tmp_path):
    sae_lens()
    sae = build("standard", hook="blocks.3.attn.hook_z", reshape_activations="hook_z")
    folder = _saved(sae, tmp_path / "sae")
    z = _x().reshape(24, 4, 4)  # [tokens, heads, d_head], what TransformerLens's hook_z holds
    with torch.no_grad():
        expected = sae.encode(z)
    assert torch.allclose(_ours(folder, z.reshape(24, 16)), expected, atol=1e-5)  # flattened head-major


def test_a_bfloat16_sae_reads_in_float32_close_to_saelens(tmp_path):
    sl = sae_lens()
    sae = build("standard", dtype="bfloat16")
    folder = _saved(sae, tmp_path / "sae")
    x = _x()
    with torch.no_grad():
        expected = sl.SAE.load_from_disk(str(folder)).encode(x).float()
        exact = build("standard").encode(x)  # the same (seeded) weights in float32
    ours = _ours(folder, x)
    assert json.loads((folder / "cfg.json").read_text())["dtype"] == "bfloat16"
    assert torch.allclose(ours, expected, atol=0.05, rtol=0.02)
    assert (ours - exact).abs().max() <= (expected - exact).abs().max() + 1e-6  # float32 arithmetic: no worse


def test_identity_normalization_reads_as_saelens_encodes_it(tmp_path, caplog):
    sae_lens()
    sae = build("standard", normalize="expected_average_only_in")
    folder = _saved(sae, tmp_path / "sae")
    x = _x()
    with caplog.at_level("WARNING"), torch.no_grad():
        assert torch.allclose(_ours(folder, x), sae.encode(x), atol=1e-5)
    assert any("expected_average_only_in" in r.getMessage() for r in caplog.records)


def test_matching_pursuit_is_refused_by_name(tmp_path):
    sae_lens()
    from sae_lens import saes

    sae = saes.MatchingPursuitSAE(saes.MatchingPursuitSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=_metadata()))
    folder = _saved(sae, tmp_path / "sae")
    with pytest.raises(TargetError, match="architecture 'matching_pursuit' is not read: a matching-pursuit SAE has no encoder"):
        _ours(folder, _x())


@pytest.fixture(scope="module")
def smollm2_layer9():
    return smollm2_layer9_activations()


@pytest.mark.real
@pytest.mark.parametrize("kind, normalize", [("standard", "layer_norm"), ("jumprelu", "none"), ("topk", "constant_norm_rescale"),
                                             ("gated", "layer_norm"), ("topk_rescaled", "none")])
def test_saelens_saes_score_their_encode_on_smollm2_activations(tmp_path, smollm2_layer9, kind, normalize):
    sae_lens()
    x = smollm2_layer9
    sae = build(kind, normalize=normalize, d_in=x.shape[1], d_sae=64, hook="blocks.9.hook_resid_post")
    folder = _saved(sae, tmp_path / "sae")
    with torch.no_grad():
        expected = sae.encode(x)
    ours = load(folder)
    assert torch.allclose(ours.encode(x), expected, atol=1e-4)
    scores = _ours(folder, x)
    assert torch.allclose(scores, expected, atol=1e-4)
    assert bool((expected > 0).any())


@pytest.mark.real
def test_a_layer_norm_sae_for_blocks_9_resid_post_scores_saelens_encode_through_its_folder_alone(tmp_path):
    """The issue's acceptance check: SAELens writes a layer_norm SAE of `blocks.9.hook_resid_post`; the target
    `sae=DIR#i` (no site) scores, on SmolLM2, SAELens's `encode` of the same activations within 1e-4."""
    sae_lens()
    from dreamy.language import EPOConfig
    from dreamy.runs.plan import unusable_targets

    lm = cached("bundled:smollm2-135m")
    sae = build("standard", normalize="layer_norm", d_in=576, d_sae=64, hook="blocks.9.hook_resid_post", seed=7)
    folder = _saved(sae, tmp_path / "sae")
    ids = lm.tokenizer(SMOLLM2_TEXT[:1], return_tensors="pt").input_ids
    features, positions = range(0, 64, 4), range(ids.shape[1])
    specs = [f"sae={folder}#{i}/pos={p}" for i in features for p in positions]
    assert unusable_targets(lm, specs[1:4], EPOConfig(n_tokens=4)) == []  # what `dream prompt --target` checks first (pos=0, the start token, is refused)
    with torch.no_grad():
        scores = Probe(lm.model, specs)(input_ids=ids).scores[0].reshape(len(features), len(positions))
        x = Probe(lm.model, ["model.layers.9"])(input_ids=ids, keep_activations=True).activations["model.layers.9"][0]
        expected = sae.encode(x).T[list(features)]
        unnormalized = build("standard", d_in=576, d_sae=64, seed=7).encode(x).T[list(features)]
    assert (scores - expected).abs().max() <= 1e-4
    assert bool((expected > 0).any()) and (unnormalized - expected).abs().max() > 0.5  # what ignoring layer_norm would give
