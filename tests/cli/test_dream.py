"""The `dream` command as a user runs it: files, escaping, resume after a kill, and every error path."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dreamy.cli import main

DREAM = [sys.executable, "-m", "dreamy"]


def run(*args, timeout=120):
    return subprocess.run(DREAM + list(args), capture_output=True, text=True, timeout=timeout)


def records(out: Path):
    return json.loads((out / "results.json").read_text())["records"]


def test_image_run_writes_results_gallery_and_pngs(tmp_path):
    done = run("image", "--model", "tiny:cnn", "--target", "conv3:0-2", "--target", "head:4", "--steps", "3",
               "--per-target", "2", "--out", str(tmp_path), "--quiet")
    assert done.returncode == 0, done.stderr
    saved = records(tmp_path)
    assert [r["target"] for r in saved] == ["conv3:0", "conv3:1", "conv3:2", "head:4"]
    for record in saved:
        assert record["model"] == "tiny:cnn" and record["seed"] == 0 and record["settings"]["steps"] == 3
        assert record["kind"] == "image" and record["method"] == "fourier"
        assert len(record["images"]) == 2 and all((tmp_path / p).stat().st_size > 0 for p in record["images"])
        assert isinstance(record["activation"], float)
    page = (tmp_path / "index.html").read_text()
    assert "conv3:1" in page and "images/conv3_1-" in page


def test_prompt_run_escapes_dreamed_text(tmp_path, monkeypatch):
    import dreamy.runs.batch as batches

    def fake_batch(loaded, specs, config, progress=False, describe=True, starts=None, limit=None, model_checked=False):
        return batches.BatchOutput([{"target": s, "model": "tiny:lm", "method": "epo", "activation": 1.0, "frontier": [
            {"text": "<script>alert(1)</script>", "tokens": ["<script>", "alert(1)", "</script>"],
             "token_attribution": [1.0, -0.5, 0.2], "activation": 1.0, "xentropy": 4.0, "token_ids": [1, 2, 3]}]}
            for s in specs])

    monkeypatch.setattr(batches, "dream_batch", fake_batch)
    assert main(["prompt", "--model", "tiny:lm", "--target", "logits:3", "--out", str(tmp_path), "--quiet"]) == 0
    page = (tmp_path / "index.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;/script&gt;" in page


def test_real_prompt_run_on_the_tiny_lm(tmp_path):
    done = run("prompt", "--model", "tiny:lm", "--target", "model.layers.1.mlp.down_proj:2", "--iters", "2",
               "--tokens", "3", "--population", "2", "--children", "4", "--out", str(tmp_path), "--quiet")
    assert done.returncode == 0, done.stderr
    (record,) = records(tmp_path)
    assert record["method"] == "epo" and record["frontier"]
    assert all({"text", "activation", "xentropy"} <= set(p) for p in record["frontier"])
    assert "cross-entropy" in (tmp_path / "index.html").read_text()


def test_resume_after_a_killed_run_has_no_duplicates_and_no_gaps(tmp_path):
    args = ["image", "--model", "tiny:cnn", "--target", "conv3:0-11", "--steps", "60", "--batch-targets", "1",
            "--out", str(tmp_path), "--quiet"]
    proc = subprocess.Popen(DREAM + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        path = tmp_path / "results.json"
        if path.exists() and len(records(tmp_path)) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = [r["target"] for r in records(tmp_path)]
    assert 2 <= len(partial) < 12
    done = run(*args, "--resume")
    assert done.returncode == 0, done.stderr
    final = [r["target"] for r in records(tmp_path)]
    assert sorted(final) == sorted(f"conv3:{i}" for i in range(12)) and len(final) == len(set(final))
    assert final[: len(partial)] == partial  # finished targets were kept, not redone
    assert all((tmp_path / r["images"][0]).exists() for r in records(tmp_path))


def test_a_target_failing_mid_run_is_recorded_and_the_others_finish(tmp_path, monkeypatch, capsys):
    import dreamy.vision.render as render

    real = render.dream

    def dream(loaded, specs, **kwargs):
        if "head:2" in specs:
            raise RuntimeError("diverged")
        return real(loaded, specs, **kwargs)

    monkeypatch.setattr(render, "dream", dream)
    code = main(["image", "--model", "tiny:cnn", "--target", "head:1-3", "--steps", "2", "--out", str(tmp_path), "--quiet"])
    assert code == 1
    by_target = {r["target"]: r for r in records(tmp_path)}
    assert "error" not in by_target["head:1"] and "error" not in by_target["head:3"]
    assert by_target["head:2"]["error"] == "RuntimeError: diverged"
    assert "head:2" in capsys.readouterr().err


def test_targets_known_bad_up_front_are_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["image", "--model", "tiny:cnn", "--target", "head:1", "--target", "head:50", "--target", "nope:1",
                 "--steps", "2", "--out", str(out), "--quiet"])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "head:50" in err and "0..9" in err and "1 more bad target" in err


@pytest.mark.parametrize("args, words", [
    (["image", "--model", "tiny:cnn", "--target", "conv3:", "--out", "X"], "expected a unit"),
    (["image", "--model", "tiny:cnn", "--target", "head:1"], "--out"),
    (["image", "--model", "tiny:cnn", "--target", "head:1", "--steps", "0", "--out", "X"], "must be > 0"),
    (["image", "--model", "tiny:cnn", "--target", "head:1", "--param", "wavelet", "--out", "X"], "invalid choice"),
    (["image", "--model", "no:such", "--target", "head:1", "--out", "X"], "unknown model"),
    (["prompt", "--model", "tiny:lm", "--out", "X"], "--target"),
    (["paint"], "invalid choice"),
    ([], "required"),
])
def test_bad_arguments_give_one_line_and_exit_2(args, words, tmp_path, capsys):
    args = [str(tmp_path / "out") if a == "X" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dream: error:") and words in err and len(err.splitlines()) == 1


def test_out_must_be_a_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["image", "--model", "tiny:cnn", "--target", "head:1", "--out", str(blocker)]) == 2


def test_sites_lists_shapes(capsys):
    assert main(["sites", "tiny:cnn"]) == 0
    out = capsys.readouterr().out
    assert "conv3" in out and "[1, 32, 8, 8]" in out and "logits" in out


@pytest.mark.ray
def test_ray_flag_shards_over_local_workers(tmp_path):
    done = run("image", "--model", "tiny:cnn", "--target", "head:0-3", "--steps", "2", "--batch-targets", "1",
               "--ray", "--workers", "2", "--out", str(tmp_path), "--quiet", timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(r["target"] for r in records(tmp_path)) == [f"head:{i}" for i in range(4)]


def test_each_batch_shows_its_steps_and_objective_unless_quiet(tmp_path, capsys):
    assert main(["image", "--model", "tiny:cnn", "--target", "head:1", "--steps", "3", "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert "dreaming 1 target(s)" in err and "3/3" in err and "objective=" in err and "image batches" in err
    assert main(["image", "--model", "tiny:cnn", "--target", "head:1", "--steps", "3", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_prompt_cards_describe_over_the_dataset_windows_and_plot_them(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat. A dog ran in the park. Rain fell on the quiet town all night.\n" * 4)
    out = tmp_path / "out"
    assert main(["prompt", "--model", "tiny:lm", "--target", "model.layers.0.mlp.down_proj@in:3", "--target", "logits:5",
                 "--iters", "1", "--tokens", "3", "--population", "2", "--children", "4", "--maxima", str(corpus),
                 "--out", str(out), "--quiet"]) == 0
    by_target = {r["target"]: r for r in records(out)}
    neuron = by_target["model.layers.0.mlp.down_proj@in:3"]
    assert neuron["maxima"] and neuron["description"]["token_change"]["contexts"] == "maxima"
    assert "description" not in by_target["logits:5"]
    assert all((out / r["plot"]).stat().st_size > 1000 for r in by_target.values())
    page = (out / "index.html").read_text()
    assert page.count('<img class="plot"') == 2 and "TokenChange (maxima" in page


def test_no_describe_is_a_setting_of_the_run(tmp_path):
    assert main(["prompt", "--model", "tiny:lm", "--target", "model.layers.1:3", "--iters", "1", "--tokens", "3",
                 "--population", "2", "--children", "4", "--no-describe", "--out", str(tmp_path), "--quiet"]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["run"]["settings"]["describe"] is False and "description" not in data["records"][0]


def test_overwrite_never_deletes_files_a_run_did_not_make(tmp_path):
    site = tmp_path / "site"
    (site / "images").mkdir(parents=True)
    (site / "maxima").mkdir()
    (site / "index.html").write_text("my homepage")
    (site / "images" / "holiday.png").write_bytes(b"png")
    (site / "maxima" / "notes.txt").write_text("notes")
    before = sorted(str(p.relative_to(site)) for p in site.rglob("*"))
    refused = run("image", "--model", "tiny:cnn", "--target", "head:1", "--steps", "2", "--out", str(site), "--overwrite",
                  "--quiet")
    assert refused.returncode == 2 and "holds no dreamy results.json" in refused.stderr
    assert sorted(str(p.relative_to(site)) for p in site.rglob("*")) == before
    assert (site / "index.html").read_text() == "my homepage"
    # a folder that does hold a run: --overwrite replaces that run's files, and the user's own files stay
    out = tmp_path / "run"
    assert run("image", "--model", "tiny:cnn", "--target", "head:1", "--steps", "2", "--out", str(out), "--quiet").returncode == 0
    (out / "images" / "holiday.png").write_bytes(b"png")
    (out / "maxima").mkdir(exist_ok=True)  # the run may have attached cached maxima there
    (out / "maxima" / "notes.txt").write_text("notes")
    old = set(records(out)[0]["images"])
    done = run("image", "--model", "tiny:cnn", "--target", "head:2", "--steps", "2", "--out", str(out), "--overwrite", "--quiet")
    assert done.returncode == 0, done.stderr
    assert [r["target"] for r in records(out)] == ["head:2"]
    assert (out / "images" / "holiday.png").read_bytes() == b"png" and (out / "maxima" / "notes.txt").exists()
    assert not any((out / name).exists() for name in old)


def test_a_second_run_into_a_busy_out_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "conc"
    args = ["image", "--model", "tiny:cnn", "--target", "head:0-3", "--steps", "100", "--batch-targets", "1",
            "--out", str(out), "--overwrite", "--quiet"]
    first = subprocess.Popen(DREAM + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / ".dreamy.lock").exists() and time.time() < deadline and first.poll() is None:
        time.sleep(0.02)
    second = run(*args)
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    err = second.stderr.strip()
    assert len(err.splitlines()) == 1 and f"in use by another dream run (pid {first.pid} " in err, err
    saved = records(out)
    assert sorted(r["target"] for r in saved) == [f"head:{i}" for i in range(4)]
    assert all((out / name).exists() for r in saved for name in r["images"] + [r["plot"]])
    assert not (out / ".dreamy.lock").exists()


def test_a_seeded_prompt_run_compares_with_windows_of_its_own_length(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat. The dog ran in the park and the bird sang in the tree. " * 30)
    base = ["prompt", "--model", "tiny:lm", "--target", "model.layers.1.mlp.down_proj@in:7", "--target", "logits:5",
            "--iters", "2", "--tokens", "4", "--population", "4", "--children", "4", "--quiet"]
    assert main(base + ["--init", "mixed", "--out", str(tmp_path / "no")]) == 2
    assert "init='mixed' starts from dataset windows: give a corpus" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()  # refused before the folder was taken
    out = tmp_path / "run"
    assert main(base + ["--init", "mixed", "--maxima", str(corpus), "--out", str(out)]) == 0
    for record in records(out):
        matched = record["maxima_matched"]
        assert matched and all(len(w["token_ids"]) == 4 for w in matched)
        assert all(len(w["tokens"]) > 4 for w in record["maxima"])  # the 64-token windows stay, as context
        origins = [p["origin"] for p in record["frontier"]]
        assert origins and set(origins) <= {"random"} | {f"window {i}" for i in range(16)}
        assert record["settings"]["init"] == "mixed" and record["settings"]["stopped"] == "iters"
    page = (out / "index.html").read_text()
    assert "4-token windows, the prompts&#x27; length" in page or "4-token windows, the prompts' length" in page


def test_a_run_killed_while_its_record_log_holds_batches_resumes_with_nothing_lost(tmp_path):
    from dreamy.runs.store import LOG_NAME, ResultsStore

    args = ["image", "--model", "tiny:cnn", "--target", "conv3:0-7", "--steps", "30", "--batch-targets", "1",
            "--out", str(tmp_path), "--quiet"]
    proc = subprocess.Popen(DREAM + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        log = tmp_path / LOG_NAME
        if log.exists() and log.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOG_NAME).exists(), "the run ended before its log held a batch"
    logged = {json.loads(line)["records"][0]["target"] for line in (tmp_path / LOG_NAME).read_bytes().splitlines()
              if line.endswith(b"}")}
    kept = ResultsStore(tmp_path).records
    in_json = {r["target"] for r in records(tmp_path)}
    assert logged and not logged & in_json  # these batches are only in the log
    stamps = {name: (tmp_path / name).stat().st_mtime_ns for r in kept for name in r["images"]}
    done = run(*args, "--resume")
    assert done.returncode == 0, done.stderr
    final = records(tmp_path)
    assert sorted(r["target"] for r in final) == sorted(f"conv3:{i}" for i in range(8))
    assert final[: len(kept)] == json.loads(json.dumps(kept))  # every kept record, logged ones too, as it was
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in stamps} == stamps  # and not dreamed again
    assert not (tmp_path / LOG_NAME).exists()


def test_prompt_labels_need_a_corpus_and_are_searched_on_it(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The cat sat on the mat. The dog ran in the park and the bird sang in the tree. " * 30)
    base = ["prompt", "--model", "tiny:lm", "--target", "model.layers.1:3", "--iters", "1", "--tokens", "3",
            "--population", "2", "--children", "4", "--quiet", "--labels"]
    assert main(base + ["--out", str(tmp_path / "no")]) == 2
    assert "--labels searches labels on dataset windows: add --maxima" in capsys.readouterr().err
    assert main(base + ["--maxima", str(corpus), "--out", str(tmp_path / "run")]) == 0
    (record,) = records(tmp_path / "run")
    # the tiny tokenizer has no single " Yes" token, so the default judge template cannot run: said on the record
    assert "labels_error" in record and "' Yes'" in record["labels_error"]


def test_batch_targets_auto_measures_the_pack_and_says_which(tmp_path, capsys):
    assert main(["image", "--model", "tiny:cnn", "--target", "head:0-5", "--steps", "2", "--batch-targets", "auto",
                 "--out", str(tmp_path / "images")]) == 0
    said = capsys.readouterr().err
    assert "auto: packs of 6 targets" in said and "measured by cpu peak rss" in said  # a CPU has room for all six
    assert {r["pack"] for r in records(tmp_path / "images")} == {6}
    assert main(["prompt", "--model", "tiny:lm", "--target", "logits:1-3", "--iters", "1", "--tokens", "3",
                 "--children", "4", "--population", "2", "--batch-targets", "AUTO", "--no-describe",
                 "--out", str(tmp_path / "prompts"), "--quiet"]) == 0
    assert {r["pack"] for r in records(tmp_path / "prompts")} == {3}
    bad = run("prompt", "--model", "tiny:lm", "--target", "logits:1", "--batch-targets", "most", "--out",
              str(tmp_path / "bad"))
    assert bad.returncode == 2 and "expected a number of targets > 0 or auto, got 'most'" in bad.stderr


def test_every_epo_default_the_command_line_changes_is_stated_in_its_help():
    from dreamy.cli.parser import build_parser
    from dreamy.language import EPOConfig

    prompt = build_parser()._subparsers._group_actions[0].choices["prompt"]  # the prompt subcommand's parser
    library = EPOConfig()
    fields = {"iters": "iters", "tokens": "n_tokens", "population": "population", "children": "children",
              "activation_slots": "activation_slots", "fluency_weight_range": "fluency_weight_range"}
    differs = []
    for action in prompt._actions:
        if action.dest in fields and action.default is not None and action.default != getattr(library, fields[action.dest]):
            differs.append(action.dest)
            assert "the library's" in action.help, action.dest
    assert {"iters", "tokens", "population"} <= set(differs)
    actions = {action.dest: action for action in prompt._actions}
    for dest in ("activation_slots", "fluency_weight_range"):  # the library's EPO schedule: its own default, no copy
        assert actions[dest].default is None and "the library's" in actions[dest].help, dest
    assert "%g,%g" % library.fluency_weight_range in actions["fluency_weight_range"].help  # the value it states


def test_the_prompt_flags_build_the_epo_config_with_its_activation_slots_and_weight_range(tmp_path):
    from dreamy.cli.dream import config_of
    from dreamy.cli.parser import build_parser

    base = ["prompt", "--model", "tiny:lm", "--target", "logits:3", "--out", str(tmp_path)]
    assert config_of(build_parser().parse_args(base)).n_activation_slots == 1  # the library's default
    config = config_of(build_parser().parse_args(base + ["--activation-slots", "1", "--population", "4"]))
    assert (config.activation_slots, config.population) == (1, 4)
    assert config_of(build_parser().parse_args(base)).fluency_weight_range == (0.1, 30.0)  # the library's
    config = config_of(build_parser().parse_args(base + ["--fluency-weight-range", "0.1,10"]))
    assert config.fluency_weight_range == (0.1, 10.0)


def test_a_dream_run_checks_each_thing_once_and_takes_its_folder_once(tmp_path, monkeypatch):
    from tests.runs.test_local import spy_on_checks

    counts, taken = spy_on_checks(monkeypatch)
    assert main(["image", "--model", "tiny:cnn", "--target", "head:0-3", "--steps", "1", "--batch-targets", "2",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert {name: len(calls) for name, calls in counts.items()} == {
        "check_model": 1, "unusable_targets": 1, "prepare_out_dir": 1, "check_out_folder": 1,
        "check_image_memory": 1, "auto_pack": 0}
    assert taken[0] is True and taken.count(True) == 1  # the later passes share the run's hold on the folder
