"""dreamy/descriptions.py: which prompt records get an output-side description, and what it holds."""

import torch

from dreamy.runs.describe import describe_record, has_output_direction
from dreamy.sae import output_direction, save, token_change, vocab_projection
from dreamy.sae.model import SAE


def pairs(tokens):
    return [[t.token, t.value] for t in tokens]


def sae_folder(tmp_path):
    save(SAE.initialized(64, 8, 4, generator=torch.Generator().manual_seed(0)), tmp_path / "sae")
    return tmp_path / "sae"


def test_targets_with_an_output_direction_are_told_apart(tiny_lm, tmp_path):
    torch.save({"w": torch.ones(64)}, tmp_path / "d.pt")
    described = [f"model.layers.1:sae={sae_folder(tmp_path)}#3", "model.layers.0.mlp.down_proj@in:7",
                 "model.layers.1:5", f"model.layers.0:dir={tmp_path}/d.pt#w", "model.layers.0.mlp.down_proj:2",
                 "model.layers.0.self_attn.o_proj@in:4"]
    plain = ["logits:5", "model.layers.0.self_attn.q_proj:2", "model.layers.0.self_attn.o_proj:1",
             "model.layers.0.mlp.act_fn@in:3", "model.layers.1", "model.layers.1:2+model.layers.0:1",
             "model.layers.0.self_attn.q_proj@in:2", "model.layers.0.mlp.up_proj@in:2"]  # they write no residual
    assert all(has_output_direction(tiny_lm, s) for s in described)
    assert not any(has_output_direction(tiny_lm, s) for s in plain)
    for spec in plain:
        record = {"target": spec, "frontier": [{"token_ids": [5, 6], "activation": 1.0}]}
        assert describe_record(tiny_lm, record) == record


def test_a_description_equals_vocab_proj_and_token_change_over_the_frontier(tiny_lm, tmp_path):
    spec = f"model.layers.1:sae={sae_folder(tmp_path)}#3"
    frontier = [{"token_ids": [5, 6, 7], "activation": 1.0}, {"token_ids": [8, 9, 10], "activation": 2.0}]
    description = describe_record(tiny_lm, {"target": spec, "frontier": frontier})["description"]
    site, vector = output_direction(tiny_lm, spec)
    vocab = vocab_projection(tiny_lm, vector, k=10)
    change = token_change(tiny_lm, site, vector, torch.tensor([[8, 9, 10], [5, 6, 7]]), k=10)
    assert description["site"] == "model.layers.1"
    assert description["vocab_proj"] == {"promoted": pairs(vocab.promoted), "suppressed": pairs(vocab.suppressed)}
    tc = description["token_change"]
    assert (tc["promoted"], tc["suppressed"]) == (pairs(change.promoted), pairs(change.suppressed))
    assert (tc["contexts"], tc["n_contexts"]) == ("frontier", 2)
    assert len(tc["promoted"]) == len(tc["suppressed"]) == 10


def test_token_change_uses_the_dataset_windows_when_the_record_has_them(tiny_lm):
    spec = "model.layers.0.mlp.down_proj@in:7"
    windows = [{"text": f"window number {i} of the corpus.", "activation": float(i)} for i in range(20)]
    record = {"target": spec, "frontier": [{"token_ids": [5, 6], "activation": 1.0}], "maxima": windows}
    tc = describe_record(tiny_lm, record, k=3)["description"]["token_change"]
    site, vector = output_direction(tiny_lm, spec)
    change = token_change(tiny_lm, site, vector, [w["text"] for w in windows[:16]], k=3)
    assert (tc["contexts"], tc["n_contexts"]) == ("maxima", 16)
    assert tc["promoted"] == pairs(change.promoted)


def test_a_failed_description_is_recorded_not_raised(tiny_lm, tmp_path):
    torch.save({"w": torch.ones(10)}, tmp_path / "short.pt")  # wrong width for the residual stream
    record = describe_record(tiny_lm, {"target": f"model.layers.0:dir={tmp_path}/short.pt#w",
                                       "frontier": [{"token_ids": [5], "activation": 1.0}]})
    assert "description" not in record and record["description_error"].startswith("ValueError")
    error_record = {"target": "model.layers.1:5", "error": "boom"}
    assert describe_record(tiny_lm, error_record) == error_record
