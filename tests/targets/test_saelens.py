"""`sae=DIR#i` in target specs: a feature of an SAELens folder scores what the SAE's encoder gives."""

import pytest
import torch

from dreamy.sae import save
from dreamy.targets import Probe, TargetError
from tests.sae.helpers import small_sae


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())


@pytest.mark.parametrize("architecture, shift", [("relu", True), ("relu", False), ("jumprelu", True)])
def test_folder_feature_scores_what_encode_gives(tmp_path, architecture, shift):
    sae = small_sae(architecture, apply_b_dec_to_input=shift)
    save(sae, tmp_path / "sae")
    net = _net()
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    scores = Probe(net, [f"0:sae={tmp_path}/sae#{i}" for i in range(6)])(x).scores
    assert torch.allclose(scores, sae.encode(net[0](x)), atol=1e-5)


def test_topk_feature_scores_its_pre_activation_after_relu(tmp_path):
    sae = small_sae("topk")
    save(sae, tmp_path / "sae")
    net = _net()
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(2))
    scores = Probe(net, [f"0:sae={tmp_path}/sae#{i}" for i in range(6)])(x).scores
    pre = sae.pre_activation(net[0](x))
    assert torch.allclose(scores, pre.clamp(min=0), atol=1e-5)
    z = sae.encode(net[0](x))
    assert torch.allclose(scores[z != 0], z[z != 0], atol=1e-5)  # where top-k keeps a feature, the two agree


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
