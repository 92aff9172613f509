"""dreamy/sae/describe.py: output directions of targets, VocabProj and TokenChange."""

import pytest
import torch

from dreamy.sae import output_direction, save, token_change, vocab_projection
from dreamy.sae.model import SAE
from dreamy.targets import TargetError


def test_vocab_projection_on_a_hand_made_direction(tiny_lm):
    model = tiny_lm.model
    unembed = model.lm_head.weight
    # a direction that, after the final RMSNorm, equals unembedding row 7 minus row 9 (scaled)
    wanted = unembed[7] - unembed[9]
    direction = wanted / model.model.norm.weight
    found = vocab_projection(tiny_lm, direction, k=3)
    logits = unembed @ model.model.norm(direction[None, None])[0, 0]
    assert [t.id for t in found.promoted] == logits.topk(3).indices.tolist()
    assert [t.id for t in found.suppressed] == (-logits).topk(3).indices.tolist()
    assert found.promoted[0].value == pytest.approx(float(logits.max()), rel=1e-5)
    assert found.suppressed[0].value == pytest.approx(float(logits.min()), rel=1e-5)
    assert found.promoted[0].token == tiny_lm.tokenizer.decode([found.promoted[0].id])
    assert found.to_record()["method"] == "vocab_proj"


def test_vocab_projection_is_scale_free_through_the_norm(tiny_lm):
    direction = torch.randn(64, generator=torch.Generator().manual_seed(0))
    a = vocab_projection(tiny_lm, direction, k=5)
    b = vocab_projection(tiny_lm, 10 * direction, k=5)
    assert [t.id for t in a.promoted] == [t.id for t in b.promoted]


def test_output_direction_of_each_unit_kind(tiny_lm, tmp_path):
    sae = SAE.initialized(64, 32, 4, generator=torch.Generator().manual_seed(0))
    save(sae, tmp_path / "sae")
    site, vector = output_direction(tiny_lm, f"model.layers.1:sae={tmp_path}/sae#5")
    assert site == "model.layers.1" and torch.equal(vector, sae.W_dec[5].detach())
    site, vector = output_direction(tiny_lm, "model.layers.0.mlp.down_proj@in:17")
    assert site == "model.layers.0.mlp.down_proj"
    assert torch.equal(vector, tiny_lm.model.model.layers[0].mlp.down_proj.weight[:, 17])
    torch.save({"w": torch.arange(64.0)}, tmp_path / "d.pt")
    site, vector = output_direction(tiny_lm, f"model.layers.1:dir={tmp_path}/d.pt#w")
    assert site == "model.layers.1" and torch.equal(vector, torch.arange(64.0))
    with pytest.raises(TargetError, match="out of range"):
        output_direction(tiny_lm, "model.layers.0.mlp.down_proj@in:128")


def test_token_change_promotes_the_tokens_the_direction_writes(tiny_lm):
    model = tiny_lm.model
    # added just before the final norm, a direction along unembedding row 11 raises token 11 most
    direction = model.lm_head.weight[11] / model.model.norm.weight
    found = token_change(tiny_lm, "model.layers.1", direction, ["The cat sat on the mat.", "Paris is in France."],
                         alpha=50.0, k=3)
    assert found.method == "token_change" and found.promoted[0].id == 11
    assert found.promoted[0].value > 0 > found.suppressed[0].value


def test_token_change_with_zero_alpha_changes_nothing(tiny_lm):
    found = token_change(tiny_lm, "model.layers.0", torch.ones(64), torch.tensor([[5, 6, 7, 8]]), alpha=0.0, k=2)
    assert all(t.value == 0 for t in found.promoted + found.suppressed)
