"""Tests for dreamy.sae.logit_tops: VocabProj of many SAE features in one product, equal to one at a time."""

import pytest
import torch

from dreamy.sae.describe import output_direction, vocab_projection
from dreamy.sae.files import save
from dreamy.sae.logit_tops import decoder_rows, logit_tops
from dreamy.sae.model import SAE


def _folder(tmp_path):
    return save(SAE.initialized(64, 12, 3, generator=torch.Generator().manual_seed(4),
                                cfg={"metadata": {"hook_name": "model.layers.0", "model_name": "tiny:lm"}}), tmp_path / "sae")


@pytest.mark.parametrize("max_elements", [2 ** 26, 700])  # one product, and blocks of two features
def test_logit_tops_of_every_feature_equal_vocab_projection_one_at_a_time(tiny_lm, tmp_path, max_elements):
    folder = _folder(tmp_path)
    features = [11, 0, 5, 7]
    tops = logit_tops(tiny_lm, folder, features, k=4, max_elements=max_elements)
    for feature, found in zip(features, tops):
        _, row = output_direction(tiny_lm, f"sae={folder}#{feature}")
        plain = vocab_projection(tiny_lm, row, k=4)
        assert [t.id for t in found.promoted] == [t.id for t in plain.promoted]
        assert [t.id for t in found.suppressed] == [t.id for t in plain.suppressed]
        assert [t.value for t in found.promoted] == pytest.approx([t.value for t in plain.promoted], rel=1e-5, abs=1e-5)
        assert [t.value for t in found.suppressed] == pytest.approx([t.value for t in plain.suppressed], rel=1e-5, abs=1e-5)
        assert [t.token for t in found.promoted] == [t.token for t in plain.promoted]
    assert len(logit_tops(tiny_lm, folder, k=1)) == 12  # every feature when none are named


def test_one_product_per_block_of_features(tiny_lm, tmp_path, monkeypatch):
    unembed = tiny_lm.model.get_output_embeddings()
    calls = []
    handle = unembed.register_forward_hook(lambda module, args, output: calls.append(tuple(args[0].shape)))
    try:
        logit_tops(tiny_lm, _folder(tmp_path), k=2)
    finally:
        handle.remove()
    assert calls == [(1, 12, 64)]


def test_bad_inputs_are_refused_by_name(tiny_lm, tmp_path):
    with pytest.raises(ValueError, match="out of range for an SAE with 12"):
        logit_tops(tiny_lm, _folder(tmp_path), [12])
    with pytest.raises(ValueError, match="reads 64"):
        logit_tops(tiny_lm, torch.zeros(3, 8))
    with pytest.raises(ValueError, match=r"\[d_sae, d_in\]"):
        decoder_rows(torch.zeros(3))
    torch.save({"decoder.weight": torch.arange(6.0).view(2, 3)}, tmp_path / "sae.pt")
    assert decoder_rows(str(tmp_path / "sae.pt")).tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
