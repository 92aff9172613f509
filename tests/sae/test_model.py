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
