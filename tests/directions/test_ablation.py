"""dreamy/directions/ablation.py: projecting a direction out of a site, the two-answer readout, the check."""

import pytest
import torch

from dreamy.directions.ablation import (ablated, ablation_check, answer_ids, answer_logit_difference, pair_accuracy,
                                        project_out, share_lost)
from dreamy.directions.examples import token_rows
from dreamy.targets import Probe


def test_project_out_removes_exactly_the_component():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(8, generator=gen)
    a = torch.randn(3, 5, 8, generator=gen)
    out = project_out(u)(a)
    assert torch.allclose(out @ (u / u.norm()), torch.zeros(3, 5), atol=1e-5)
    orthogonal = a - (a @ (u / u.norm()))[..., None] * (u / u.norm())
    assert torch.allclose(out, orthogonal)
    with pytest.raises(ValueError, match="zero direction"):
        project_out(torch.zeros(3))


def test_ablated_sites_lose_the_direction_after_the_start_token(tiny_lm):
    u = torch.randn(64, generator=torch.Generator().manual_seed(2))
    ids = torch.tensor([token_rows(tiny_lm, ["The cat sat on the mat."])[0]])
    probe = Probe(tiny_lm.model, ["model.layers.1"])
    with torch.no_grad():
        clean = probe(input_ids=ids, keep_activations=True).activations["model.layers.1"]
        with ablated(tiny_lm, ["model.layers.0", "model.layers.1"], u):
            edited = probe(input_ids=ids, keep_activations=True).activations["model.layers.1"]
    unit = u / u.norm()
    assert torch.allclose(edited[0, 1:] @ unit, torch.zeros(ids.shape[1] - 1), atol=1e-4)
    assert torch.allclose(edited[0, 0], clean[0, 0])  # the start token keeps its activation
    assert not torch.allclose(edited[0, 1:] @ unit, clean[0, 1:] @ unit)


def test_the_readout_is_a_logit_difference_at_the_last_token(tiny_lm):
    prompts = ["The cat sat", "A dog ran in the park"]
    first, second = answer_ids(tiny_lm, [" the", " a"])
    values = answer_logit_difference(tiny_lm, prompts, (" the", " a"))
    for value, row in zip(values, token_rows(tiny_lm, prompts)):
        with torch.no_grad():
            logits = tiny_lm.model(input_ids=torch.tensor([row])).logits[0, -1]
        assert float(value) == pytest.approx(float(logits[first] - logits[second]), abs=1e-5)
    with pytest.raises(ValueError, match="single-token answers"):
        answer_ids(tiny_lm, [" the cat sat"])


def test_accuracies_and_shares_by_hand():
    assert pair_accuracy(torch.tensor([1.0, 2.0, 0.0, 5.0]), torch.tensor([0.0, 3.0, 0.0, 4.0])) == 0.625
    assert share_lost(0.9, 0.5) == 1.0 and share_lost(0.8, 0.8) == 0.0 and share_lost(0.5, 0.4) is None


def test_the_check_reads_ablated_and_random_readouts(tiny_lm):
    pairs = [("The cat sat on the mat.", "The dog ran."), ("A bird sang.", "The sun is hot."),
             ("Paris is in France.", "Rome is in Italy.")]
    u = torch.randn(64, generator=torch.Generator().manual_seed(4))
    check = ablation_check(tiny_lm, "model.layers.1", u, pairs, template="Say: {text}", answers=(" the", " a"),
                           random_directions=2)
    prompts = [f"Say: {text}" for pair in pairs for text in pair]
    clean = answer_logit_difference(tiny_lm, prompts, (" the", " a"))
    with ablated(tiny_lm, "model.layers.1", u):
        edited = answer_logit_difference(tiny_lm, prompts, (" the", " a"))
    assert check.readouts["clean_positive"] == pytest.approx(clean[0::2].tolist())
    assert check.readouts["ablated_negative"] == pytest.approx(edited[1::2].tolist())
    assert check.pair_accuracy_ablated == pair_accuracy(edited[0::2], edited[1::2])
    expected = float(torch.cat([(clean[0::2] > 0).float(), (clean[1::2] <= 0).float()]).mean())
    assert check.accuracy_clean == pytest.approx(expected)
    assert check.gap_ablated == pytest.approx(float((edited[0::2] - edited[1::2]).mean()), abs=1e-5)
    assert len(check.accuracy_random) == len(check.gap_random) == 2
    record = check.to_records()[0]
    assert record["share_lost"] == share_lost(check.accuracy_clean, check.accuracy_ablated)
    with pytest.raises(ValueError, match="has no {text}"):
        ablation_check(tiny_lm, "model.layers.1", u, pairs, template="no slot")
