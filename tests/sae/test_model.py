"""dreamy/sae/model.py: the encoder of each architecture equals a hand computation."""

import pytest
import torch

from dreamy.sae.model import SAE, topk_relu
from tests.sae.helpers import small_sae


def _hand_pre(sae, x, shift=True):
    out = []
    for row in x.tolist():
        values = []
        for j in range(sae.d_sae):
            total = float(sae.b_enc[j])
            for i in range(sae.d_in):
                xi = row[i] - (float(sae.b_dec[i]) if shift else 0.0)
                total += xi * float(sae.W_enc[i, j])
            values.append(total)
        out.append(values)
    return out


@pytest.mark.parametrize("shift", [True, False])
def test_relu_encoder_equals_hand_computation(shift):
    sae = small_sae("relu", apply_b_dec_to_input=shift)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    expected = [[max(0.0, v) for v in row] for row in _hand_pre(sae, x, shift)]
    assert torch.allclose(sae.encode(x), torch.tensor(expected), atol=1e-5)


def test_jumprelu_encoder_keeps_values_above_threshold_only():
    sae = small_sae("jumprelu")
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    pre = _hand_pre(sae, x)
    expected = [[v if v > float(sae.threshold[j]) else 0.0 for j, v in enumerate(row)] for row in pre]
    assert torch.allclose(sae.encode(x), torch.tensor(expected), atol=1e-5)
    assert any(0 < v <= float(t) for row in pre for v, t in zip(row, sae.threshold.tolist())), "no value fell in (0, threshold]"


def test_topk_encoder_keeps_the_k_largest_positive_values():
    sae = small_sae("topk")
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    z = sae.encode(x)
    for row_z, row_pre in zip(z.tolist(), _hand_pre(sae, x)):
        best = sorted(range(sae.d_sae), key=lambda j: -row_pre[j])[:2]
        expected = [max(0.0, row_pre[j]) if j in best else 0.0 for j in range(sae.d_sae)]
        assert row_z == pytest.approx(expected, abs=1e-5)


def test_decode_is_affine():
    sae = small_sae("relu")
    z = torch.zeros(1, sae.d_sae)
    z[0, 2] = 3.0
    assert torch.allclose(sae.decode(z)[0], 3.0 * sae.W_dec[2] + sae.b_dec)


def test_topk_relu_never_returns_negative_values():
    values, _ = topk_relu(torch.tensor([[-3.0, -1.0, -2.0]]), 2)
    assert values.tolist() == [[0.0, 0.0]]


def test_initialized_follows_gao_et_al():
    sae = SAE.initialized(16, 64, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert sae.architecture == "topk" and sae.k == 4


def test_topk_needs_a_valid_k():
    sae = SAE.initialized(4, 8, 2, generator=torch.Generator().manual_seed(0))
    weights = sae.weights()
    with pytest.raises(ValueError, match="k in 1..8"):
        SAE(type(weights)("topk", W_enc=weights.W_enc, b_enc=weights.b_enc, W_dec=weights.W_dec, b_dec=weights.b_dec, k=9))


def test_jumprelu_with_a_negative_threshold_still_applies_relu_as_saelens():
    sae = small_sae("jumprelu")
    sae.threshold.fill_(-10.0)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(4))
    expected = [[max(0.0, v) for v in row] for row in _hand_pre(sae, x)]
    assert torch.allclose(sae.encode(x), torch.tensor(expected), atol=1e-5)
    assert any(v < 0 for row in _hand_pre(sae, x) for v in row)


def test_abstopk_keeps_the_k_largest_magnitudes_with_their_sign():
    sae = small_sae("abstopk")
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))
    for row_z, row_pre in zip(sae.encode(x).tolist(), _hand_pre(sae, x)):
        best = sorted(range(sae.d_sae), key=lambda j: -abs(row_pre[j]))[:2]
        assert row_z == pytest.approx([row_pre[j] if j in best else 0.0 for j in range(sae.d_sae)], abs=1e-5)


def test_gated_encoder_equals_hand_computation():
    sae = small_sae("gated")
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(6))
    shifted = (x - sae.b_dec).tolist()
    for row_z, row in zip(sae.encode(x).tolist(), shifted):
        expected = []
        for j in range(sae.d_sae):
            gate = sum(row[i] * float(sae.W_enc[i, j]) for i in range(4)) + float(sae.b_gate[j])
            mag = sum(row[i] * float(sae.W_enc[i, j]) * float(torch.exp(sae.r_mag[j])) for i in range(4)) + float(sae.b_enc[j])
            expected.append(max(0.0, mag) if gate > 0 else 0.0)
        assert row_z == pytest.approx(expected, abs=1e-5)


def _hand_normalize(row, mode):
    n = len(row)
    if mode == "constant_norm_rescale":
        norm = sum(v * v for v in row) ** 0.5
        return [v * n ** 0.5 / norm for v in row]
    mean = sum(row) / n
    centred = [v - mean for v in row]
    std = (sum(v * v for v in centred) / (n - 1)) ** 0.5  # unbiased, eps added to the std
    return [v / (std + 1e-5) for v in centred]


@pytest.mark.parametrize("mode", ["constant_norm_rescale", "layer_norm"])
def test_normalized_input_and_reconstruction(mode):
    sae = small_sae("relu", normalize_activations=mode)
    plain = small_sae("relu")
    x = 3.0 * torch.randn(4, 4, generator=torch.Generator().manual_seed(7)) + 2.0
    normalized = torch.tensor([_hand_normalize(row, mode) for row in x.tolist()])
    assert torch.allclose(sae.encode(x), plain.encode(normalized), atol=1e-5)
    assert not torch.allclose(sae.encode(x), plain.encode(x), atol=1e-2)
    z, recon = sae.reconstruct(x)
    inner = plain.decode(z)  # the reconstruction in the normalized space, mapped back per row
    if mode == "constant_norm_rescale":
        back = inner * x.norm(dim=1, keepdim=True) / 2.0
    else:
        back = inner * x.std(dim=1, keepdim=True) + x.mean(dim=1, keepdim=True)
    assert torch.allclose(recon, back, atol=1e-5) and torch.equal(sae(x), recon)
