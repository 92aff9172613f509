"""Targets checked against a model before any optimization."""

import torch

from dreamy.targets import check_targets


def test_every_kind_of_bad_target_is_named_and_good_ones_pass(tiny_cnn, tmp_path):
    torch.save(torch.ones(32), tmp_path / "good.pt")
    torch.save(torch.ones(7), tmp_path / "short.pt")
    specs = ["conv3:0", "conv3:31", "conv3:32", "nope:1", f"conv3:dir={tmp_path}/good.pt", f"conv3:dir={tmp_path}/short.pt",
             "0.5*conv3:1-head:2", "conv3:1/pos=999", "conv3:1/pos=3"]
    images = torch.zeros(2, 3, 32, 32)
    failures = dict(check_targets(tiny_cnn.model, specs, images))
    assert set(failures) == {"conv3:32", "nope:1", f"conv3:dir={tmp_path}/short.pt", "conv3:1/pos=999"}
    assert "valid units are 0..31" in failures["conv3:32"]
    assert "unknown site 'nope'" in failures["nope:1"]
    assert "has 7 values but site 'conv3' has 32" in failures[f"conv3:dir={tmp_path}/short.pt"]


def test_a_long_range_costs_one_forward(tiny_cnn, monkeypatch):
    calls = []
    forward = tiny_cnn.model.forward
    monkeypatch.setattr(tiny_cnn.model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    failures = check_targets(tiny_cnn.model, [f"conv1:{i}" for i in range(5000)], torch.zeros(2, 3, 32, 32))
    assert len(calls) == 1 and len(failures) == 5000 - 8 and failures[0][0] == "conv1:8"


def test_prompt_positions_are_checked_against_the_prompt_length(tiny_lm):
    ids = torch.zeros(2, 6, dtype=torch.long)
    failures = dict(check_targets(tiny_lm.model, ["model.layers.1.mlp.down_proj:3/pos=5",
                                                  "model.layers.1.mlp.down_proj:3/pos=6"], input_ids=ids,
                                  sequence_reduce="pos=-1"))
    assert list(failures) == ["model.layers.1.mlp.down_proj:3/pos=6"] and "pos=6 out of range" in failures[
        "model.layers.1.mlp.down_proj:3/pos=6"]


def test_the_features_of_one_sae_read_its_file_once(tmp_path, monkeypatch):
    import safetensors.torch

    from dreamy.sae import save
    from tests.sae.helpers import small_sae

    save(small_sae("topk", d_in=4, d_sae=64), tmp_path / "sae")
    reads = []
    load_file = safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file", lambda *a, **k: reads.append(a[0]) or load_file(*a, **k))
    net = torch.nn.Sequential(torch.nn.Linear(3, 4))
    specs = [f"0:sae={tmp_path}/sae#{i}" for i in range(65)] + [f"0:sae={tmp_path}/none#{i}" for i in range(3)]
    failures = check_targets(net, specs, torch.zeros(2, 3))
    assert len(reads) == 1  # was one per feature
    assert [spec for spec, _ in failures] == specs[64:]
    assert "SAE feature 64 out of range" in failures[0][1] and "valid 0..63" in failures[0][1]
    assert all("does not exist" in error for _, error in failures[1:])


def test_prompt_searches_refuse_reductions_before_the_span(tiny_lm):
    """The start token (and a prefix) is the same in every prompt: a target read only there scores all alike."""
    import pytest

    from dreamy.language import EPOConfig, epo
    from dreamy.runs import unusable_targets
    from dreamy.targets import TargetError

    fixed = ["logits:5/cls", "logits:5/pos=0", "model.layers.1.mlp.down_proj:3/cls",
             "blocks.1.attn.hook_pattern:head=0,key=0/cls", "logits:5/pos=-5", "logits:5/pos=-1 - logits:5/pos=0"]
    fine = ["logits:5", "logits:5/mean", "logits:5/pos=1", "blocks.1.attn.hook_pattern:head=0,key=0", "logits:5/pos=-4"]
    errors = dict(unusable_targets(tiny_lm, fixed + fine, EPOConfig(n_tokens=4)))
    assert list(errors) == fixed
    assert all("no prompt changes" in error and "\n" not in error for error in errors.values())
    assert "reads position 0 (cls), the start token" in errors["logits:5/cls"]
    prefixed = dict(unusable_targets(tiny_lm, ["logits:5/pos=1", "logits:5/pos=3"], EPOConfig(n_tokens=4, prefix="a b")))
    assert list(prefixed) == ["logits:5/pos=1"] and "a position of the prefix" in prefixed["logits:5/pos=1"]
    with pytest.raises(TargetError, match=r"'logits:5/pos=0' reads position 0 \(pos=0\), the start token"):
        epo(tiny_lm, "logits:5/pos=0", n_tokens=4, iters=1, progress=False)


def test_dream_prompt_refuses_a_start_token_target_up_front(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "o"
    done = subprocess.run([sys.executable, "-m", "dreamy", "prompt", "--model", "tiny:lm", "--iters", "1", "--tokens", "3",
                           "--quiet", "--target", "blocks.1.hook_resid_post:3/cls", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and "the start token, which no prompt changes" in err, err
    assert not out.exists()
