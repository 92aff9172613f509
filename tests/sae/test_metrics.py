"""dreamy/sae/metrics.py: held-out FVE, L0 and loss recovered."""

import pytest
import torch

from dreamy.sae.metrics import dead_fraction, evaluate, loss_recovered
from dreamy.sae.model import SAE
from dreamy.targets.saelens import SAEWeights


def _exact_sae(d):
    """relu(x) - relu(-x) = x: a ReLU SAE with features e_i and -e_i reconstructs every input exactly."""
    eye = torch.eye(d)
    return SAE(SAEWeights("relu", W_enc=torch.cat([eye, -eye], dim=1), b_enc=torch.zeros(2 * d),
                          W_dec=torch.cat([eye, -eye]), b_dec=torch.zeros(d), apply_b_dec_to_input=False))


def test_an_exact_sae_explains_everything_and_loses_nothing(tiny_lm):
    windows = torch.randint(2, 300, (5, 12), generator=torch.Generator().manual_seed(0))
    figures = evaluate(tiny_lm, "model.layers.0", _exact_sae(64), windows, batch_windows=2)
    assert figures["fve"] == pytest.approx(1.0, abs=1e-5)
    assert figures["xentropy_spliced"] == pytest.approx(figures["xentropy_clean"], abs=1e-4)
    assert figures["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert figures["heldout_tokens"] == 60 and 0 < figures["l0"] <= 64


def test_a_zero_sae_is_zero_ablation(tiny_lm):
    zero = SAE(SAEWeights("relu", W_enc=torch.zeros(64, 8), b_enc=torch.zeros(8), W_dec=torch.zeros(8, 64), b_dec=torch.zeros(64)))
    figures = evaluate(tiny_lm, "model.layers.1", zero, torch.randint(2, 300, (3, 10), generator=torch.Generator().manual_seed(1)))
    assert figures["xentropy_spliced"] == pytest.approx(figures["xentropy_zero"], abs=1e-5)
    assert figures["loss_recovered"] == pytest.approx(0.0, abs=1e-4) and figures["l0"] == 0


def test_loss_recovered_and_dead_fraction():
    assert loss_recovered(2.0, 2.0, 6.0) == 1.0 and loss_recovered(2.0, 6.0, 6.0) == 0.0
    assert dead_fraction(torch.tensor([0, 199_999, 200_000, 10**7]), tokens_trained=10**7) == 0.5
    assert dead_fraction(torch.tensor([0, 5000]), tokens_trained=5000) == 0.5


def test_a_model_in_train_mode_is_measured_in_eval_mode_and_left_as_found():
    from dreamy.models import load
    from dreamy.sae.describe import output_direction, token_change
    from dreamy.sae.model import SAE

    lm = load("tiny:lm")
    for layer in lm.model.model.layers:
        layer.self_attn.attention_dropout = 0.9  # in train mode every forward would differ
    sae = SAE.initialized(64, 32, 4, generator=torch.Generator().manual_seed(0))
    windows = torch.randint(2, 300, (3, 8), generator=torch.Generator().manual_seed(1))
    site, vector = output_direction(lm, "model.layers.1.mlp.down_proj@in:5")
    before = evaluate(lm, "model.layers.0", sae, windows), token_change(lm, site, vector, ["The cat sat."], k=3)
    lm.model.train()
    after = evaluate(lm, "model.layers.0", sae, windows), token_change(lm, site, vector, ["The cat sat."], k=3)
    assert after == before and lm.model.training and lm.model.model.layers[0].self_attn.training
