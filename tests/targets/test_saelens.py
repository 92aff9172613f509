"""`sae=DIR#i` in target specs: a feature of an SAELens folder scores what the SAE's encoder gives."""

import pytest
import torch

from dreamy.sae import save
from dreamy.targets import Probe, TargetError
from tests.sae.helpers import small_sae


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())


@pytest.mark.parametrize("architecture, shift, normalize", [
    ("relu", True, "none"), ("relu", False, "none"), ("jumprelu", True, "none"), ("gated", True, "none"),
    ("relu", True, "layer_norm"), ("jumprelu", False, "constant_norm_rescale")])
def test_folder_feature_scores_what_encode_gives(tmp_path, architecture, shift, normalize):
    sae = small_sae(architecture, apply_b_dec_to_input=shift, normalize_activations=normalize)
    save(sae, tmp_path / "sae")
    net = _net()
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    scores = Probe(net, [f"0:sae={tmp_path}/sae#{i}" for i in range(6)])(x).scores
    assert torch.allclose(scores, sae.encode(net[0](x)), atol=1e-5)


@pytest.mark.parametrize("architecture", ["topk", "abstopk"])
def test_topk_feature_scores_what_encode_gives_zero_outside_the_top_k(tmp_path, architecture):
    sae = small_sae(architecture)
    save(sae, tmp_path / "sae")
    net = _net()
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(2))
    scores = Probe(net, [f"0:sae={tmp_path}/sae#{i}" for i in range(6)])(x).scores
    z = sae.encode(net[0](x))
    assert torch.allclose(scores, z, atol=1e-5)
    assert bool(((z == 0) & (sae.pre_activation(net[0](x)) > 0)).any())  # a positive latent left out of the top k reads 0
    assert torch.equal((scores != 0).sum(dim=1), (z != 0).sum(dim=1))
    for asked in ([5, 1, 3, 0], [4]):  # some of the latents (many of them, or few of them, against k)
        some = Probe(net, [f"0:sae={tmp_path}/sae#{i}" for i in asked])(x).scores
        assert torch.allclose(some, z[:, asked], atol=1e-5)


def test_topk_k1_feature_fires_where_encode_does_not_on_its_surrogate(tmp_path):
    """The issue's case: k=1 of 16 features; feature 3 is non-zero exactly where the SAE's encode makes it so."""
    sae = small_sae("topk", d_in=3, d_sae=16, seed=5)
    sae.k = 1
    save(sae, tmp_path / "sae")
    net = torch.nn.Sequential(torch.nn.Identity())
    x = torch.randn(200, 3, generator=torch.Generator().manual_seed(6))
    scores = Probe(net, [f"0:sae={tmp_path}/sae#3"])(x).scores[:, 0]
    z = sae.encode(x)[:, 3]
    assert torch.equal(scores != 0, z != 0) and torch.allclose(scores, z, atol=1e-6)
    assert int((sae.pre_activation(x)[:, 3] > 0).sum()) > 2 * int((z != 0).sum())  # the ReLU surrogate read far more


@pytest.mark.parametrize("architecture", ["topk", "jumprelu", "gated"])
def test_folder_feature_gradient_is_its_pre_activations_straight_through(tmp_path, architecture):
    sae = small_sae(architecture)
    save(sae, tmp_path / "sae")
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(7), requires_grad=True)
    net = torch.nn.Sequential(torch.nn.Identity())
    Probe(net, [f"0:sae={tmp_path}/sae#{i}" for i in range(6)])(x).scores.sum().backward()
    reference = x.detach().clone().requires_grad_(True)
    sae.pre_activation(reference).sum().backward()
    assert torch.allclose(x.grad, reference.grad, atol=1e-5)  # every latent passes its pre-activation's gradient, off or on


def test_site_width_must_match_d_in(tmp_path):
    save(small_sae("relu", d_in=5), tmp_path / "sae")
    with pytest.raises(TargetError, match=r"reads d_in=5 features but site '0' has 4") as caught:
        Probe(_net(), [f"0:sae={tmp_path}/sae#0"])(torch.zeros(1, 3))
    assert "\n" not in str(caught.value)


def test_feature_index_out_of_range(tmp_path):
    save(small_sae("relu"), tmp_path / "sae")
    with pytest.raises(TargetError, match=r"out of range .* with 6 features; valid 0..5"):
        Probe(_net(), [f"0:sae={tmp_path}/sae#6"])


def test_folder_feature_gives_gradients(tmp_path):
    save(small_sae("topk"), tmp_path / "sae")
    x = torch.randn(2, 3, requires_grad=True)
    Probe(_net(), [f"0:sae={tmp_path}/sae#1"])(x).scores.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_check_targets_reports_folder_problems_before_a_run(tmp_path):
    from dreamy.targets import check_targets

    save(small_sae("relu"), tmp_path / "sae")
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 5))
    specs = [f"0:sae={tmp_path}/sae#2", f"0:sae={tmp_path}/sae#9", f"2:sae={tmp_path}/sae#0", f"0:sae={tmp_path}/none#0"]
    errors = dict(check_targets(net, specs, torch.zeros(2, 3)))
    assert list(errors) == specs[1:]
    assert "valid 0..5" in errors[specs[1]] and "d_in=4" in errors[specs[2]] and "does not exist" in errors[specs[3]]


def _folder(path, cfg, tensors):
    import json

    from safetensors.torch import save_file

    path.mkdir()
    (path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "sae_weights.safetensors"))
    return path


def test_topk_decoder_norm_rescaling_is_folded_into_the_scores(tmp_path):
    gen = torch.Generator().manual_seed(4)
    w_enc, b_enc, w_dec, b_dec = torch.randn(4, 6, generator=gen), torch.randn(6, generator=gen), 3 * torch.randn(6, 4, generator=gen), torch.randn(4, generator=gen)
    folder = _folder(tmp_path / "sae", {"architecture": "topk", "d_in": 4, "d_sae": 6, "k": 6, "rescale_acts_by_decoder_norm": True},
                     {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec})
    x = torch.randn(5, 4, generator=gen)
    net = torch.nn.Sequential(torch.nn.Identity())
    scores = Probe(net, [f"0:sae={folder}#{i}" for i in range(6)])(x).scores
    assert torch.allclose(scores, (((x - b_dec) @ w_enc + b_enc) * w_dec.norm(dim=1)).clamp(min=0), atol=1e-5)


def test_a_batchtopk_checkpoint_reads_as_its_jumprelu_with_one_threshold(tmp_path):
    gen = torch.Generator().manual_seed(5)
    w_enc, b_enc, w_dec, b_dec = torch.randn(4, 6, generator=gen), torch.randn(6, generator=gen), 2 * torch.randn(6, 4, generator=gen), torch.randn(4, generator=gen)
    folder = _folder(tmp_path / "sae", {"architecture": "batchtopk", "d_in": 4, "d_sae": 6, "k": 2.0, "rescale_acts_by_decoder_norm": True},
                     {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec, "topk_threshold": torch.tensor(0.7, dtype=torch.float64)})
    x = torch.randn(9, 4, generator=gen)
    pre = ((x - b_dec) @ w_enc + b_enc) * w_dec.norm(dim=1)
    net = torch.nn.Sequential(torch.nn.Identity())
    scores = Probe(net, [f"0:sae={folder}#{i}" for i in range(6)])(x).scores
    assert torch.allclose(scores, torch.where(pre > 0.7, pre, torch.zeros_like(pre)), atol=1e-5)
    assert bool((pre > 0.7).any()) and bool(((pre > 0) & (pre <= 0.7)).any())


def test_a_per_head_sae_reads_its_head_of_a_wider_site(tmp_path):
    gen = torch.Generator().manual_seed(6)
    w_enc, b_enc = torch.randn(2, 3, generator=gen), torch.randn(3, generator=gen)
    folder = _folder(tmp_path / "sae", {"architecture": "standard", "d_in": 2, "d_sae": 3, "apply_b_dec_to_input": False,
                                        "metadata": {"hook_name": "blocks.0.attn.hook_z", "hook_head_index": 1}},
                     {"W_enc": w_enc, "b_enc": b_enc, "W_dec": torch.zeros(3, 2), "b_dec": torch.zeros(2)})
    x = torch.randn(5, 6, generator=gen)  # 3 heads of 2
    net = torch.nn.Sequential(torch.nn.Identity())
    scores = Probe(net, [f"0:sae={folder}#{i}" for i in range(3)])(x).scores
    assert torch.allclose(scores, (x[:, 2:4] @ w_enc + b_enc).clamp(min=0), atol=1e-6)
    with pytest.raises(TargetError, match="reads head 1 .* site '0' has 5 features"):
        Probe(net, [f"0:sae={folder}#0"])(torch.zeros(1, 5))


def test_the_weights_file_of_a_folder_is_read_with_its_cfg(tmp_path):
    """`sae=DIR/sae_weights.safetensors#i` read the file bare, ignoring the cfg's layer_norm beside it."""
    sae = small_sae("relu", normalize_activations="layer_norm")
    save(sae, tmp_path / "sae")
    net = _net()
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(3))
    file = tmp_path / "sae" / "sae_weights.safetensors"
    through_file = Probe(net, [f"0:sae={file}#{i}" for i in range(6)])(x).scores
    assert torch.allclose(through_file, sae.encode(net[0](x)), atol=1e-5)
    assert torch.allclose(through_file, Probe(net, [f"0:sae={tmp_path}/sae#{i}" for i in range(6)])(x).scores)


def test_a_file_given_without_a_site_is_named_a_file(tmp_path):
    torch.save({"W_enc": torch.eye(4), "b_enc": torch.zeros(4)}, tmp_path / "sae.pt")
    with pytest.raises(TargetError, match=r"SAE '.*sae.pt' is a file, not an SAELens folder .* name the site: 'SITE:sae="):
        Probe(_net(), [f"sae={tmp_path}/sae.pt#1"])
