"""Packs sized to the device (`batch_targets="auto"`) and out-of-memory packs dreamed in halves, losing nothing."""

import pytest
import torch

import dreamy.runs.batch as batches
import dreamy.runs.sizing as sizing
from dreamy.language import EPOConfig, GCGConfig
from dreamy.runs import dream_targets
from dreamy.runs.batch import PackLimit, dream_batch
from dreamy.vision import DreamConfig
from tests.fixtures import cached

PROMPT = EPOConfig(n_tokens=3, iters=2, population=2, children=4)
NEURONS = [f"model.layers.1.mlp.down_proj:{i}" for i in range(6)]


def fake_oom_above(monkeypatch, largest):
    """Make every packed run of more than `largest` targets fail as the CUDA allocator does; returns the packs tried."""
    tried = []
    real = batches._method_function

    def method(config):
        dream = real(config)

        def packed(loaded, specs, **kwargs):
            tried.append(len(specs))
            if len(specs) > largest:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return dream(loaded, specs, **kwargs)
        return packed

    monkeypatch.setattr(batches, "_method_function", method)
    return tried


def comparable(records):
    """Records without the pack they ran in (the point of halving), keyed by target."""
    return {r["target"]: {k: v for k, v in r.items() if k not in ("pack", "evaluated")} for r in records}


def test_an_out_of_memory_pack_is_halved_and_gives_the_records_of_a_run_that_fit(monkeypatch):
    whole = dream_targets(cached("tiny:lm"), NEURONS, PROMPT, batch_targets=6, progress=False, describe=False)
    assert {r["pack"] for r in whole} == {6}
    tried = fake_oom_above(monkeypatch, 2)
    halved = dream_targets(cached("tiny:lm"), NEURONS, PROMPT, batch_targets=6, progress=False, describe=False)
    assert tried == [6, 3, 2, 1, 2, 1]  # 6 -> 3 + 3; 3 -> 2 + 1, and the second 3 is cut to 2 + 1 before it runs
    assert [r["target"] for r in halved] == NEURONS and not any("error" in r for r in halved)
    assert {r["pack"] for r in halved} == {1, 2}
    a, b = comparable(whole), comparable(halved)
    for target in NEURONS:  # each target has its own generator: the same search, whatever its pack
        mine, theirs = a[target], b[target]
        assert [f["token_ids"] for f in mine["frontier"]] == [f["token_ids"] for f in theirs["frontier"]]
        assert mine["activation"] == pytest.approx(theirs["activation"], rel=1e-4, abs=1e-6)
        timeless = [{k: v for k, v in r["settings"].items() if not k.endswith("seconds")} for r in (mine, theirs)]
        assert timeless[0] == timeless[1] and mine["seed"] == theirs["seed"]


def test_later_batches_are_cut_to_the_pack_that_fit(monkeypatch):
    tried = fake_oom_above(monkeypatch, 2)
    records = dream_targets(cached("tiny:lm"), NEURONS[:4] + ["logits:1", "logits:2", "logits:3", "logits:4"],
                            GCGConfig(n_tokens=3, iters=1, children=4), batch_targets=4, progress=False, describe=False)
    assert tried == [4, 2, 2, 2, 2]  # the first batch ran out at 4; the second is cut to 2 before it runs
    assert len(records) == 8 and not any("error" in r for r in records)


def test_one_target_out_of_memory_alone_is_an_error_record_and_the_others_are_kept(monkeypatch):
    fake_oom_above(monkeypatch, 0)
    output = dream_batch(cached("tiny:cnn"), ["head:1", "head:2"], DreamConfig(steps=2), limit=PackLimit())
    assert [r["target"] for r in output.records] == ["head:1", "head:2"]
    assert all("out of memory" in r["error"] for r in output.records)


def test_an_image_pack_out_of_memory_keeps_every_target(monkeypatch, tmp_path):
    fake_oom_above(monkeypatch, 1)
    records = dream_targets(cached("tiny:cnn"), ["head:0-2"], DreamConfig(steps=2), out_dir=tmp_path,
                            batch_targets=3, progress=False)
    assert sorted(r["target"] for r in records) == ["head:0", "head:1", "head:2"]
    assert all("error" not in r and r["pack"] == 1 and (tmp_path / r["images"][0]).exists() for r in records)


def test_other_errors_still_retry_target_by_target(monkeypatch):
    output = dream_batch(cached("tiny:cnn"), ["head:1", "head:99"], DreamConfig(steps=2))
    by_target = {r["target"]: r for r in output.records}
    assert "error" in by_target["head:99"] and by_target["head:1"]["pack"] == 1


def test_the_auto_pack_fills_the_free_memory_at_the_measured_footprint(monkeypatch):
    measured = []
    real = sizing.measure_footprint
    monkeypatch.setattr(sizing, "measure_footprint", lambda *a: measured.append(real(*a)) or (1000, 5000, "test"))
    choice = sizing.auto_pack(cached("tiny:lm"), NEURONS, PROMPT, free=10_000)
    assert choice.pack == 3 and choice.per_target == 1000 and choice.fixed == 5000  # (0.8 * 10000 - 5000) // 1000
    assert measured[0][0] > 0 and measured[0][2] == "cpu peak rss"  # the real measurement ran
    assert sizing.auto_pack(cached("tiny:lm"), NEURONS, PROMPT, free=1).pack == 1  # never below one
    assert sizing.auto_pack(cached("tiny:lm"), NEURONS, PROMPT, free=10**12).pack == len(NEURONS)
    assert "packs of 3 targets" in choice.summary()


def test_the_measured_footprint_grows_with_the_prompt_and_counts_one_step():
    short, _, how = sizing.measure_footprint(cached("tiny:lm"), NEURONS, EPOConfig(n_tokens=3, children=4))
    assert how == "cpu peak rss" and short > 0
    assert sizing.one_step(PROMPT).iters == 1 and sizing.one_step(DreamConfig(steps=9)).steps == 1


def test_a_run_with_auto_packs_shows_its_choice_and_records_its_pack(monkeypatch):
    monkeypatch.setattr(sizing, "measure_footprint", lambda *a: (10, 0, "test"))
    monkeypatch.setattr(sizing, "available_bytes", lambda device: 10 * 4 / sizing.HEADROOM)
    calls = []
    real = batches.dream_batch
    monkeypatch.setattr(batches, "dream_batch", lambda loaded, specs, *a, **k: calls.append(len(specs)) or real(loaded, specs, *a, **k))
    records = dream_targets(cached("tiny:lm"), NEURONS, PROMPT, batch_targets="auto", progress=False, describe=False)
    assert calls == [4, 2] and [r["pack"] for r in records] == [4] * 4 + [2] * 2
    with pytest.raises(ValueError, match="'auto'"):
        dream_targets(cached("tiny:lm"), NEURONS, PROMPT, batch_targets="all", progress=False)


def test_a_probe_pack_out_of_memory_charges_a_target_a_whole_step_and_one_target_that_cannot_fit_is_refused(monkeypatch):
    fake_oom_above(monkeypatch, 1)
    per_target, fixed, _ = sizing.measure_footprint(cached("tiny:lm"), NEURONS, PROMPT)
    assert per_target >= 1 and fixed == 0
    fake_oom_above(monkeypatch, 0)
    with pytest.raises(ValueError, match="one target of this run does not fit"):
        sizing.measure_footprint(cached("tiny:lm"), NEURONS, PROMPT)
