"""Many-target runs: batches are deterministic, Ray shards equal a local run, and a dead worker loses only its batch."""

import json

import numpy as np
import pytest
from PIL import Image

from dreamy.language import EPOConfig, GCGConfig
from dreamy.runs import dream_targets, plan_batches
from dreamy.vision import DreamConfig
from tests.fixtures import cached

IMAGE_SETTINGS = {"steps": 3}
PROMPT_SETTINGS = {"n_tokens": 3, "iters": 1, "population": 2, "children": 4}
IMAGE = DreamConfig(**IMAGE_SETTINGS)
PROMPT = EPOConfig(**PROMPT_SETTINGS)


def pixels(path):
    """The 8-bit pixels of a PNG as signed integers (so differences do not wrap)."""
    return np.asarray(Image.open(path), dtype=np.int16)


def records_by_target(out_dir):
    data = json.loads((out_dir / "results.json").read_text())["records"]
    return {r["target"]: r for r in data}


def test_batches_are_planned_the_same_way_every_time():
    assert plan_batches(["a:0-2", "b:1", "a:1"], 2) == [["a:0", "a:1"], ["a:2", "b:1"]]
    with pytest.raises(ValueError, match="batch_targets"):
        plan_batches(["a:1"], 0)


def test_local_run_writes_records_images_and_gallery(tmp_path):
    records = dream_targets(cached("tiny:cnn"), ["conv3:0-2", "head:1"], IMAGE, out_dir=tmp_path,
                            batch_targets=3, progress=False)
    assert len(records) == 4
    saved = records_by_target(tmp_path)
    assert set(saved) == {"conv3:0", "conv3:1", "conv3:2", "head:1"}
    assert all((tmp_path / image).exists() for r in saved.values() for image in r["images"])
    assert (tmp_path / "index.html").exists()
    for record in saved.values():  # every image card plots its objective per step
        assert len(record["history"]) == IMAGE_SETTINGS["steps"]
        assert record["plot"].endswith("_steps.png") and Image.open(tmp_path / record["plot"]).size == (480, 320)


def test_prompt_records_carry_their_description_and_frontier_plot(tmp_path):
    from dreamy.runs.describe import describe_record

    specs = ["model.layers.0.mlp.down_proj@in:3", "logits:5"]
    records = dream_targets(cached("tiny:lm"), specs, PROMPT, out_dir=tmp_path,
                            batch_targets=2, progress=False)
    saved = records_by_target(tmp_path)
    neuron, logits = saved[specs[0]], saved["logits:5"]
    assert neuron["description"]["token_change"]["contexts"] == "frontier"
    again = describe_record(cached("tiny:lm"), {key: v for key, v in neuron.items() if key != "description"})
    assert again["description"] == neuron["description"]
    assert "description" not in logits and "description_error" not in logits
    for record in (neuron, logits):
        assert len(record["evaluated"]["xentropy"]) == len(record["evaluated"]["activation"]) > 0
        Image.open(tmp_path / record["plot"]).load()
    page = (tmp_path / "index.html").read_text()
    assert 'class="target findex"' in page and f'<img class="plot" src="{neuron["plot"]}"' in page
    assert {r["target"] for r in records} == set(specs)


def test_describe_false_skips_descriptions_and_is_another_run(tmp_path):
    from dreamy.runs.store import OutDirError

    (record,) = dream_targets(cached("tiny:lm"), ["model.layers.1:4"], PROMPT, out_dir=tmp_path, describe=False,
                              progress=False)
    assert "description" not in record and record["plot"]
    with pytest.raises(OutDirError, match="describe"):
        dream_targets(cached("tiny:lm"), ["model.layers.1:5"], PROMPT, out_dir=tmp_path,
                      resume=True, progress=False)


def test_resume_skips_finished_targets(tmp_path):
    dream_targets(cached("tiny:cnn"), ["head:0-1"], IMAGE, out_dir=tmp_path, batch_targets=1, progress=False)
    again = dream_targets(cached("tiny:cnn"), ["head:0-3"], IMAGE, out_dir=tmp_path, batch_targets=1,
                          resume=True, progress=False)
    assert sorted(r["target"] for r in again) == ["head:2", "head:3"]
    assert len(json.loads((tmp_path / "results.json").read_text())["records"]) == 4


def test_a_failing_target_does_not_lose_the_others(tmp_path):
    records = dream_targets(cached("tiny:cnn"), ["head:1", "head:99"], IMAGE, out_dir=tmp_path,
                            batch_targets=2, progress=False)
    by_target = {r["target"]: r for r in records}
    assert "error" in by_target["head:99"] and "0..9" in by_target["head:99"]["error"]
    assert "error" not in by_target["head:1"]


def test_prompt_targets_of_a_batch_are_packed_and_equal_one_at_a_time(tmp_path, monkeypatch):
    import importlib

    epo = importlib.import_module("dreamy.language.epo")  # the module (dreamy.language.epo is also the function)

    calls = []
    original = epo.epo_many
    monkeypatch.setattr(epo, "epo_many", lambda loaded, specs, **k: calls.append(list(specs)) or original(loaded, specs, **k))
    packed = dream_targets(cached("tiny:lm"), ["model.layers.1.mlp.down_proj:1-3"], PROMPT,
                           batch_targets=3, progress=False)
    assert calls == [[f"model.layers.1.mlp.down_proj:{i}" for i in (1, 2, 3)]]
    alone = {spec: original(cached("tiny:lm"), [spec], seed=0, progress=False, **PROMPT_SETTINGS)[0].best.activation
             for spec in calls[0]}  # batch 0 runs with seed 0
    assert {r["target"]: r["activation"] for r in packed} == pytest.approx(alone, rel=1e-4, abs=1e-6)


def test_a_failing_prompt_target_does_not_lose_the_others():
    records = dream_targets(cached("tiny:lm"), ["logits:3", "logits:99999"], GCGConfig(n_tokens=3, iters=1, children=4),
                            batch_targets=2, progress=False)
    by_target = {r["target"]: r for r in records}
    assert "error" in by_target["logits:99999"] and "error" not in by_target["logits:3"]
    assert by_target["logits:3"]["method"] == "gcg"


def test_a_non_empty_out_needs_resume_or_overwrite(tmp_path):
    from dreamy.runs.store import OutDirError

    dream_targets(cached("tiny:cnn"), ["head:0"], IMAGE, out_dir=tmp_path, progress=False)
    with pytest.raises(OutDirError, match="not empty"):
        dream_targets(cached("tiny:cnn"), ["head:1"], IMAGE, out_dir=tmp_path, progress=False)
    with pytest.raises(OutDirError, match="steps: 3 there, 4 now"):
        dream_targets(cached("tiny:cnn"), ["head:1"], DreamConfig(steps=4), out_dir=tmp_path, resume=True, progress=False)
    dream_targets(cached("tiny:cnn"), ["head:1"], DreamConfig(steps=4), out_dir=tmp_path, overwrite=True, progress=False)
    assert set(records_by_target(tmp_path)) == {"head:1"}


def test_an_interrupted_batch_is_not_recorded(tmp_path, monkeypatch):
    import dreamy.vision.render as render

    real = render.dream

    def interrupted_second_batch(loaded, specs, **kwargs):
        result = real(loaded, specs, **kwargs)
        if specs == ["head:1"]:
            result.settings["interrupted"] = True  # what dream() returns after Ctrl-C
        return result

    monkeypatch.setattr(render, "dream", interrupted_second_batch)
    with pytest.raises(KeyboardInterrupt):
        dream_targets(cached("tiny:cnn"), ["head:0-2"], IMAGE, out_dir=tmp_path, batch_targets=1,
                      progress=False)
    assert set(records_by_target(tmp_path)) == {"head:0"}


def test_a_packed_batch_reruns_only_the_targets_that_failed(monkeypatch):
    import dreamy.runs.batch as batches
    import dreamy.vision.render as render

    runs = []
    real = render.dream
    monkeypatch.setattr(render, "dream", lambda loaded, specs, **k: runs.append(list(specs)) or real(loaded, specs, **k))
    real_output = batches._image_record

    def failing_output(loaded, record, result, t, spec):
        if spec == "head:2" and len(result.targets) > 1:
            raise OSError("disk hiccup")
        return real_output(loaded, record, result, t, spec)

    monkeypatch.setattr(batches, "_image_record", failing_output)
    output = batches.dream_batch(cached("tiny:cnn"), ["head:1", "head:2", "head:3"], IMAGE)
    assert runs == [["head:1", "head:2", "head:3"], ["head:2"]]
    assert [r["target"] for r in output.records] == ["head:1", "head:2", "head:3"]
    assert not any("error" in r for r in output.records) and len(output.files) == 6  # a dream and a plot each


def test_a_diverged_dream_is_an_error_record_with_null_activation(tmp_path, monkeypatch):
    import dreamy.vision.render as render

    real = render.dream

    def diverged(loaded, specs, **kwargs):
        result = real(loaded, specs, **kwargs)
        result.activation[0] = float("nan")
        return result

    monkeypatch.setattr(render, "dream", diverged)
    (record,) = dream_targets(cached("tiny:cnn"), ["head:1"], IMAGE, out_dir=tmp_path, progress=False)
    assert "not finite" in record["error"] and record["activation"] is None
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and json.loads(text)["records"][0]["activation"] is None


@pytest.fixture(scope="module")
def local_ray():
    """A two-CPU local Ray cluster; the Ray tests skip without Ray (the tests above run either way)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_run_equals_local_run(tmp_path, local_ray):
    specs = ["conv3:0-3"]
    assert len(dream_targets(cached("tiny:cnn"), specs, IMAGE, out_dir=tmp_path / "local", batch_targets=1,
                             progress=False)) == 4
    assert len(dream_targets(cached("tiny:cnn"), specs, IMAGE, out_dir=tmp_path / "ray", batch_targets=1,
                             use_ray=True, workers=2, progress=False)) == 4
    a, b = records_by_target(tmp_path / "local"), records_by_target(tmp_path / "ray")
    assert set(a) == set(b) == {f"conv3:{i}" for i in range(4)}
    for target in a:
        # workers run one thread each, the local run several: fp32 sums may round differently, so images
        # agree to one 8-bit level and activations to 1e-4 of their size
        assert a[target]["activation"] == pytest.approx(b[target]["activation"], rel=1e-4, abs=1e-6)
        local, ray = (pixels(tmp_path / run / r[target]["images"][0]) for run, r in (("local", a), ("ray", b)))
        assert local.shape == ray.shape and np.abs(local - ray).max() <= 1
    prompts = dream_targets(cached("tiny:lm"), ["model.layers.1.mlp.down_proj:1-2"], PROMPT,
                            batch_targets=1, use_ray=True, workers=2, progress=False)
    alone = dream_targets(cached("tiny:lm"), ["model.layers.1.mlp.down_proj:1-2"], PROMPT,
                          batch_targets=1, progress=False)
    assert {r["target"]: r["activation"] for r in prompts} == pytest.approx({r["target"]: r["activation"] for r in alone},
                                                                              rel=1e-4, abs=1e-6)


@pytest.mark.ray
def test_killed_worker_loses_only_its_batch_and_resume_completes(tmp_path, local_ray):
    specs = ["conv3:0-7"]
    killed = []

    def kill_second_worker(runner, k):
        if runner is not None and not killed:
            local_ray.kill(runner.workers[1])
            killed.append(k)

    first = dream_targets(cached("tiny:cnn"), specs, IMAGE, out_dir=tmp_path, batch_targets=1, use_ray=True,
                          workers=2, progress=False, on_batch=kill_second_worker)
    assert killed and 0 < len(first) < 8
    second = dream_targets(cached("tiny:cnn"), specs, IMAGE, out_dir=tmp_path, batch_targets=1, use_ray=True,
                           workers=2, resume=True, progress=False)
    saved = json.loads((tmp_path / "results.json").read_text())["records"]
    targets = [r["target"] for r in saved]
    assert sorted(targets) == sorted(f"conv3:{i}" for i in range(8)) and len(targets) == len(set(targets))
    assert len(first) + len(second) == 8


def test_the_gallery_is_rewritten_as_often_as_its_cost_allows_and_always_at_the_end(tmp_path, monkeypatch):
    import dreamy.runs.local as local

    class Clock:  # a gallery rewrite takes 5 s of this clock, dreaming takes none
        now = 0.0

        @classmethod
        def monotonic(cls):
            return cls.now

    calls = []
    real = local.write_index

    def slow(directory, records, title):
        calls.append(len(records))
        Clock.now += 5.0
        return real(directory, records, title)

    monkeypatch.setattr(local, "time", Clock)
    monkeypatch.setattr(local, "write_index", slow)
    dream_targets(cached("tiny:cnn"), ["head:0-5"], DreamConfig(steps=1), out_dir=tmp_path, batch_targets=1,
                  progress=False)
    assert calls == [1, 6]  # the first batch, then the end: not once per batch
    page = (tmp_path / "index.html").read_text()
    assert all(f"head:{i}" in page for i in range(6)) and "6 target(s)" in page


def test_an_interrupt_leaves_the_gallery_and_results_json_complete(tmp_path, monkeypatch):
    import dreamy.runs.batch as batches
    from dreamy.runs.store import LOG_NAME

    real = batches.dream_batch
    done = []

    def dream_batch(loaded, specs, config, **kwargs):
        if len(done) == 7:
            raise KeyboardInterrupt
        done.append(specs)
        return real(loaded, specs, config, **kwargs)

    monkeypatch.setattr(batches, "dream_batch", dream_batch)
    with pytest.raises(KeyboardInterrupt):
        dream_targets(cached("tiny:cnn"), ["head:0-9"], DreamConfig(steps=1), out_dir=tmp_path, batch_targets=1,
                      progress=False)
    assert sorted(records_by_target(tmp_path)) == sorted(f"head:{i}" for i in range(7))
    assert not (tmp_path / LOG_NAME).exists() and "7 target(s)" in (tmp_path / "index.html").read_text()


def test_a_prompt_run_reads_a_model_in_train_mode_in_eval_mode_and_leaves_it_as_found(tmp_path):
    from dreamy.models import load

    lm = load("tiny:lm")
    for layer in lm.model.model.layers:
        layer.self_attn.attention_dropout = 0.9  # in train mode every forward would differ
    eval_run = dream_targets(lm, ["model.layers.1:2"], PROMPT, out_dir=tmp_path / "eval", progress=False)
    lm.model.train()
    lm.model.lm_head.weight.requires_grad_(True)
    train_run = dream_targets(lm, ["model.layers.1:2"], PROMPT, out_dir=tmp_path / "train", progress=False)
    assert train_run[0]["frontier"] == eval_run[0]["frontier"]
    assert lm.model.training and lm.model.lm_head.weight.requires_grad and lm.model.lm_head.weight.grad is None


def test_a_prompt_search_whose_best_activation_is_not_finite_is_an_error_record(tmp_path, monkeypatch):
    import importlib

    epo = importlib.import_module("dreamy.language.epo")  # the module (dreamy.language.epo is also the function)
    real = epo.epo_many

    class NotFinite(list):
        def to_records(self):
            return [{**r, "activation": float("nan")} for r in self.results.to_records()]

    def broken(*args, **kwargs):
        results = real(*args, **kwargs)
        wrapped = NotFinite(results)
        wrapped.results = results
        return wrapped

    monkeypatch.setattr(epo, "epo_many", broken)
    (record,) = dream_targets(cached("tiny:lm"), ["logits:1"], PROMPT, out_dir=tmp_path, progress=False)
    assert "best activation is not finite (nan)" in record["error"] and record["activation"] is None
    assert json.loads((tmp_path / "results.json").read_text())["records"][0]["activation"] is None


def spy(monkeypatch, name, *modules):
    """Count the calls of function `name` wherever `modules` bind it (the same function under each name)."""
    calls = []
    real = getattr(modules[0], name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    for module in modules:
        monkeypatch.setattr(module, name, counted)
    return calls


def spy_on_checks(monkeypatch):
    """Spies on every up-front check of a run and on the folder lock (each time it is really taken)."""
    from contextlib import contextmanager

    import dreamy.core.folders as folders
    import dreamy.runs.batch as batches
    import dreamy.runs.local as local
    import dreamy.runs.plan as plan
    import dreamy.runs.sizing as sizing
    import dreamy.runs.store as store

    counts = {"check_model": spy(monkeypatch, "check_model", plan, local, batches),
              "unusable_targets": spy(monkeypatch, "unusable_targets", plan, local),
              "prepare_out_dir": spy(monkeypatch, "prepare_out_dir", store, local),
              "check_out_folder": spy(monkeypatch, "check_out_folder", folders, store),
              "check_image_memory": spy(monkeypatch, "check_image_memory", plan, local),
              "auto_pack": spy(monkeypatch, "auto_pack", sizing, local)}
    taken = []
    real_lock = store.folder_lock

    @contextmanager
    def lock(folder, command=""):
        with real_lock(folder, command) as outer:
            taken.append(outer)  # False: a re-entrant no-op
            yield outer

    monkeypatch.setattr(store, "folder_lock", lock)
    return counts, taken


@pytest.mark.parametrize("batch_targets", [2, "auto"])
def test_each_up_front_check_of_a_run_runs_once_and_the_lock_is_taken_once(tmp_path, monkeypatch, batch_targets):
    counts, taken = spy_on_checks(monkeypatch)
    records = dream_targets(cached("tiny:cnn"), ["head:0-3", "head:99"], DreamConfig(steps=1), out_dir=tmp_path,
                            batch_targets=batch_targets, progress=False)
    assert sorted(r["target"] for r in records if "error" not in r) == [f"head:{i}" for i in range(4)]
    assert "error" in {r["target"]: r for r in records}["head:99"]
    ran = {name: len(calls) for name, calls in counts.items()}
    auto = batch_targets == "auto"
    assert ran == {"check_model": 1, "unusable_targets": 1, "prepare_out_dir": 1, "check_out_folder": 1,
                   "check_image_memory": 0 if auto else 1, "auto_pack": 1 if auto else 0}
    assert counts["unusable_targets"][0][1] == [f"head:{i}" for i in range(4)] + ["head:99"]  # every target at once
    assert taken == [True]


def test_a_resumed_run_checks_only_the_targets_left(tmp_path, monkeypatch):
    dream_targets(cached("tiny:cnn"), ["head:0-1"], IMAGE, out_dir=tmp_path, batch_targets=1, progress=False)
    counts, taken = spy_on_checks(monkeypatch)
    again = dream_targets(cached("tiny:cnn"), ["head:0-2"], IMAGE, out_dir=tmp_path, batch_targets=1, resume=True,
                          progress=False)
    assert [r["target"] for r in again] == ["head:2"] and taken == [True]
    assert [calls[0][1] for calls in [counts["unusable_targets"]]] == [["head:2"]]
    assert len(counts["check_model"]) == len(counts["prepare_out_dir"]) == 1


def test_prepare_and_execute_are_the_run_in_two_steps(tmp_path):
    from dreamy.core.folders import LOCK_NAME
    from dreamy.runs import RunOptions, execute, prepare

    options = RunOptions(out_dir=tmp_path / "run", batch_targets=2, progress=False)
    prepared = prepare(cached("tiny:cnn"), ["head:0-2", "head:99"], IMAGE, options)
    assert (tmp_path / "run" / LOCK_NAME).exists()  # the folder is held from prepare on
    assert prepared.planned == [["head:0", "head:1"], ["head:2", "head:99"]]
    assert [spec for spec, _ in prepared.unusable] == ["head:99"]
    assert prepared.todo() == [(0, ["head:0", "head:1"]), (1, ["head:2"])]
    records = execute(prepared)
    assert len(records) == 4 and not (tmp_path / "run" / LOCK_NAME).exists()  # ... until execute ends
    with pytest.raises(ValueError, match="prepare the run again"):
        execute(prepared)
    again = dream_targets(cached("tiny:cnn"), ["head:0-2", "head:99"], IMAGE, out_dir=tmp_path / "again",
                          batch_targets=2, progress=False)
    assert [r.get("activation") for r in again] == [r.get("activation") for r in records]


def test_a_prepared_run_in_a_with_block_holds_its_folder_until_the_block_ends(tmp_path):
    from dreamy.core.folders import LOCK_NAME
    from dreamy.runs import RunOptions, execute, prepare
    from dreamy.runs.store import OutDirError

    options = RunOptions(out_dir=tmp_path, progress=False)
    with prepare(cached("tiny:cnn"), ["head:1"], IMAGE, options) as prepared:
        execute(prepared)
        assert (tmp_path / LOCK_NAME).exists()  # still held: passes after the run share it
    assert not (tmp_path / LOCK_NAME).exists()
    with pytest.raises(OutDirError, match="not empty"):  # refused: the folder is let go at once
        prepare(cached("tiny:cnn"), ["head:1"], IMAGE, options)
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_refused_prepare_lets_the_folder_go_and_writes_nothing(tmp_path):
    from dreamy.language import EPOConfig
    from dreamy.runs import RunOptions, prepare

    with pytest.raises(ValueError, match="needs a language model"):
        prepare(cached("tiny:cnn"), ["head:1"], EPOConfig(), RunOptions(out_dir=tmp_path / "o"))
    with pytest.raises(ValueError, match="init='mixed' starts from dataset windows: give a corpus"):
        prepare(cached("tiny:lm"), ["logits:1"], EPOConfig(init="mixed"), RunOptions(out_dir=tmp_path / "o"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("settings, words", [
    ({"batch_targets": 0}, "batch_targets must be >= 1, got 0"),
    ({"batch_targets": "all"}, "batch_targets must be a number of targets or 'auto', got 'all'"),
    ({"workers": 0}, "workers must be >= 1"),
    ({"resume": "yes"}, "resume must be True or False"),
    ({"on_batch": 3}, "on_batch must be callable"),
    ({"batch_target": 2}, "did you mean 'batch_targets'"),
    ({"maxima_scan": {"k": 2}}, "without a corpus"),
    ({"maxima": "fortunes", "maxima_scan": {"k": 0}}, "MaximaScan.k must be >= 1"),
    ({"maxima": "fortunes", "maxima_scan": {"windows": 8}}, "did you mean 'window'"),
])
def test_run_options_are_checked_when_built(settings, words):
    from dreamy.core.config import ConfigError
    from dreamy.runs.options import run_options

    with pytest.raises(ConfigError, match=words):
        run_options(**settings)


def test_a_seeded_run_scans_the_corpus_with_its_maxima_scan(monkeypatch, tmp_path):
    import dreamy.runs.local as local

    class Scanned(Exception):
        pass

    def matched_windows(loaded, specs, config, corpus, **scan):
        seen.append((specs, corpus, scan))
        raise Scanned  # what happens next is the searches' business

    seen = []
    monkeypatch.setattr(local, "matched_windows", matched_windows)
    with pytest.raises(Scanned):
        dream_targets(cached("tiny:lm"), ["logits:1-2"], EPOConfig(init="mixed", **PROMPT_SETTINGS), progress=False,
                      describe=False, maxima="toy.txt", maxima_scan={"k": 3, "cache_dir": None})
    ((specs, corpus, scan),) = seen  # one scan for every target
    assert specs == ["logits:1", "logits:2"] and corpus == "toy.txt"
    assert scan == {"progress": False, "k": 3, "window": 64, "max_words": None, "xent_windows": 128, "cache_dir": None}


def test_no_function_of_runs_takes_more_than_eight_parameters():
    import ast
    from pathlib import Path

    import dreamy.runs

    too_many = []
    for path in sorted(Path(dreamy.runs.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                given = node.args
                count = (len(given.posonlyargs) + len(given.args) + len(given.kwonlyargs) + (given.vararg is not None)
                         + (given.kwarg is not None))
                if count > 8:
                    too_many.append(f"{path.name}:{node.lineno} {getattr(node, 'name', 'lambda')} ({count})")
    assert not too_many, too_many
