"""dreamy/runs/plan.py: what is refused before a run dreams anything."""

import dataclasses

import pytest

from dreamy.language import EPOConfig
from dreamy.models import Preprocess
from dreamy.runs import dream_targets
from dreamy.runs.plan import check_model, unusable_targets
from dreamy.vision import DreamConfig


def test_a_parametrization_that_cannot_make_the_model_size_is_refused(tiny_cnn):
    odd = dataclasses.replace(tiny_cnn, preprocess=Preprocess((0.5,) * 3, (0.5,) * 3, (30, 30)))
    with pytest.raises(ValueError, match=r'param="decoder" needs an image size divisible by 8, got 30x30.*model input'):
        check_model(odd, DreamConfig(param="decoder"))
    check_model(odd, DreamConfig(param="decoder", image_size=(32, 32)))
    check_model(odd, DreamConfig(param="fourier"))
    with pytest.raises(ValueError, match="divisible by 8"):
        unusable_targets(odd, ["head:1"], DreamConfig(param="decoder"))


def test_prompt_targets_a_search_never_runs_are_unusable(tiny_lm, tmp_path):
    specs = ["model.embed_tokens:3", "logits:1", "model.layers.0@in:2", "model.embed_tokens:4+logits:2"]
    bad = unusable_targets(tiny_lm, specs, EPOConfig(n_tokens=3))
    assert [spec for spec, _ in bad] == ["model.embed_tokens:3", "model.embed_tokens:4+logits:2"]
    assert all("never runs in a prompt search" in error and "model.layers.0@in" in error for _, error in bad)
    # from Python the run goes on: the unusable target is an error record, never dreamed
    records = dream_targets(tiny_lm, ["model.embed_tokens:3", "logits:1"], EPOConfig(n_tokens=3, iters=1, population=2,
                            children=4), out_dir=tmp_path, progress=False)
    by_target = {r["target"]: r for r in records}
    assert "never runs in a prompt search" in by_target["model.embed_tokens:3"]["error"]
    assert "error" not in by_target["logits:1"]


def test_a_prompt_longer_than_the_model_context_is_refused_before_any_forward(tiny_lm, monkeypatch):
    import dreamy.targets.check as check

    monkeypatch.setattr(check, "capture_raw", lambda *a, **k: pytest.fail("a forward ran"))
    with pytest.raises(ValueError, match=r"a prompt of 301 tokens .* longer than the 256 positions 'tiny:lm'.*--tokens"):
        unusable_targets(tiny_lm, ["logits:1"], EPOConfig(n_tokens=300))
    with pytest.raises(ValueError, match="longer than the 256 positions"):
        unusable_targets(tiny_lm, ["logits:1"], EPOConfig(n_tokens=250, prefix="the cat sat on the mat " * 4))
