"""Bad and edge-case inputs to `dream`, each refused before any work (one line, exit 2, nothing written) or
handled as documented: the catalogue of a new user's mistakes on the tiny models."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dreamy.models
from dreamy.cli import main

IMAGE = ["image", "--model", "tiny:cnn", "--steps", "4", "--quiet"]
PROMPT = ["prompt", "--model", "tiny:lm", "--iters", "1", "--tokens", "3", "--population", "2", "--children", "4",
          "--quiet"]
DREAM = [sys.executable, "-m", "dreamy"]


def refused(capsys, args, words, *, before_load=True, monkeypatch=None):
    """Run `dream args`; it must exit 2 with one line on stderr that contains `words`."""
    if before_load:
        monkeypatch.setattr(dreamy.models, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dream: error:"), err
    assert words in err, err
    return err


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ---- refused before the model is loaded ------------------------------------------------------------------

@pytest.mark.parametrize("extra, words", [
    (["--target=--"], "is not a target spec"),
    (["--target", "head:1", "--device", "cuda"] if not torch.cuda.is_available() else ["--target", "head:1", "--device", "cuda:99"], "--device"),
    (["--target", "head:1", "--device", "tpu"], "unknown device 'tpu'"),
    (["--target", "head:1", "--device", ""], "unknown device ''"),
    (["--target", "head:1", "--device", "meta"], "device 'meta' cannot run"),
    (["--target", "head:1", "--lr", "inf"], "must be > 0 and finite"),
    (["--target", "head:1", "--lr", "nan"], "must be > 0 and finite"),
    (["--target", "head:1", "--diversity", "nan"], "must be >= 0 and finite"),
    (["--target", "head:1", "--tv", "inf"], "must be >= 0 and finite"),
    (["--target", "head:1", "--seed", "1180591620717411303424"], "--seed must be in 0.."),
    (["--target", "head:1", "--seed", "-1"], "--seed must be in 0.."),
    (["--target", "head:1", "--size", "1"], "--size must be >= 16"),
    (["--target", "1e999*conv3:1"], "1e999*conv3:1"),
    (["--target", "head:1", "--maxima", "no-such-set"], "unknown image set 'no-such-set'"),
])
def test_image_arguments_refused_before_loading(capsys, monkeypatch, tmp_path, extra, words):
    out = tmp_path / "out"
    refused(capsys, IMAGE + extra + ["--out", str(out)], words, monkeypatch=monkeypatch)
    assert not out.exists()


def test_a_text_file_is_not_an_image_set(capsys, monkeypatch, tmp_path):
    text = tmp_path / "words.txt"
    text.write_text("hello")
    refused(capsys, IMAGE + ["--target", "head:1", "--maxima", str(text), "--out", str(tmp_path / "o")],
            "unknown image set", monkeypatch=monkeypatch)


@pytest.mark.parametrize("slots", ["2", "-1"])
def test_activation_slots_must_leave_a_weighted_slot_and_be_counted(capsys, monkeypatch, tmp_path, slots):
    refused(capsys, PROMPT + ["--target", "logits:1", "--activation-slots", slots, "--out", str(tmp_path / "o")],
            "activation_slots", monkeypatch=monkeypatch)


@pytest.mark.parametrize("value, words", [("30", "expected LOW,HIGH"), ("30,0.3", "0 < LOW <= HIGH"),
                                          ("0,30", "0 < LOW <= HIGH"), ("0.3,inf", "0 < LOW <= HIGH"),
                                          ("a,30", "expected a number")])
def test_a_fluency_weight_range_must_be_low_comma_high(capsys, monkeypatch, tmp_path, value, words):
    err = refused(capsys, PROMPT + ["--target", "logits:1", "--fluency-weight-range", value, "--out", str(tmp_path / "o")],
                  words, monkeypatch=monkeypatch)
    assert "--fluency-weight-range" in err


def test_an_unknown_corpus_is_refused_before_dreaming(capsys, monkeypatch, tmp_path):
    refused(capsys, PROMPT + ["--target", "logits:1", "--maxima", "no-such-corpus", "--out", str(tmp_path / "o")],
            "unknown text corpus", monkeypatch=monkeypatch)


@pytest.mark.parametrize("args, words", [
    (["image", "--model", "tiny:lm", "--target", "logits:1"], "tiny:lm is a language model; `image` needs a vision model"),
    (["prompt", "--model", "tiny:cnn", "--target", "head:1"], "tiny:cnn is a vision model; `prompt` needs a language model"),
])
def test_the_model_kind_must_fit_the_command(capsys, monkeypatch, tmp_path, args, words):
    refused(capsys, args + ["--out", str(tmp_path / "o")], words, monkeypatch=monkeypatch)


@pytest.mark.parametrize("device", ["cuda", "tpu"])
def test_sites_with_a_device_this_machine_lacks(capsys, device):
    if device == "cuda" and torch.cuda.is_available():
        device = "cuda:99"
    assert main(["sites", "tiny:cnn", "--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and device in err


@pytest.mark.parametrize("out, words", [("/proc/x", "not writable"), ("/proc/x/y", "not writable"), ("", "--out is empty")])
def test_unusable_out_folders(capsys, monkeypatch, out, words):
    refused(capsys, IMAGE + ["--target", "head:1", "--out", out], words, monkeypatch=monkeypatch)


def test_an_image_batch_larger_than_memory_is_refused(capsys, monkeypatch, tmp_path):
    # the estimate needs the model's input size only when --size is absent; with --size it is known up front
    out = tmp_path / "o"
    assert main(IMAGE + ["--target", "head:1", "--size", "100000", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "GiB" in err and "lower --size" in err and not out.exists()


# ---- refused once the model is loaded, before anything is written ----------------------------------------

def test_a_range_past_the_site_is_refused_not_expanded_into_errors(capsys, tmp_path):
    out = tmp_path / "o"
    started = time.time()
    assert main(IMAGE + ["--target", "conv1:0-100000", "--out", str(out)]) == 2
    assert time.time() - started < 60
    err = capsys.readouterr().err.strip()
    assert "conv1:8" in err and "valid units are 0..7" in err and "99992 more" in err and not out.exists()


def write_direction(path: Path, value) -> Path:
    torch.save(value, path)
    return path


def write_raw(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, words", [
    (lambda d: write_direction(d / "nan8.pt", torch.full((8,), float("nan"))), "non-finite"),
    (lambda d: write_direction(d / "short.pt", torch.ones(5)), "has 5 values but site 'conv1' has 8"),
    (lambda d: write_raw(d / "empty.pt", b""), "cannot read"),
    (lambda d: write_direction(d / "nodict.pt", {"name": "x"}), "holds no tensors"),
    (lambda d: write_raw(d / "junk.npy", b"\x93NUMPY garbage"), "cannot read"),
    (lambda d: d / "missing.pt", "does not exist"),
])
def test_bad_direction_files_are_refused(capsys, tmp_path, make, words):
    path = make(tmp_path)
    out = tmp_path / "o"
    assert main(IMAGE + ["--target", f"conv1:dir={path}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and not out.exists()


def test_a_site_shared_across_the_batch_is_refused(capsys, tmp_path):
    out = tmp_path / "o"
    assert main(PROMPT + ["--target", "model.rotary_emb:0", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not one row per input" in err and not out.exists()


# ---- runs never mix ----------------------------------------------------------------------------------------

@pytest.fixture
def finished_run(tmp_path):
    out = tmp_path / "run"
    assert main(IMAGE + ["--target", "head:1", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("change, words", [
    (["--steps", "50"], "steps: 4 there, 50 now"),
    (["--lr", "0.1"], "lr: 0.05 there, 0.1 now"),
    (["--seed", "3"], "seed: 0 there, 3 now"),
])
def test_resume_with_other_settings_is_refused(capsys, monkeypatch, finished_run, change, words):
    before = (finished_run / "results.json").read_text()
    args = [a for a in IMAGE if a not in ("--steps", "4")] + (["--steps", "4"] if "--steps" not in change else [])
    refused(capsys, args + change + ["--target", "head:2", "--out", str(finished_run), "--resume"], words,
            monkeypatch=monkeypatch)
    assert (finished_run / "results.json").read_text() == before


def test_resume_with_another_model_and_kind_is_refused(capsys, monkeypatch, finished_run):
    refused(capsys, PROMPT + ["--target", "logits:1", "--out", str(finished_run), "--resume"],
            "model: 'tiny:cnn' there, 'tiny:lm' now; kind: 'image' there, 'prompt' now", monkeypatch=monkeypatch)


def test_an_existing_out_needs_resume_or_overwrite(capsys, monkeypatch, finished_run):
    refused(capsys, PROMPT + ["--target", "logits:1", "--out", str(finished_run)], "not empty", monkeypatch=monkeypatch)
    monkeypatch.undo()
    assert main(PROMPT + ["--target", "logits:1", "--out", str(finished_run), "--overwrite"]) == 0
    saved = json.loads((finished_run / "results.json").read_text())
    assert saved["run"]["model"] == "tiny:lm" and [r["target"] for r in saved["records"]] == ["logits:1"]
    # the image run's PNGs are gone; what is left is the prompt run's own frontier plot
    assert [p.name.endswith("_frontier.png") for p in (finished_run / "images").iterdir()] == [True]


@pytest.mark.parametrize("content", ['{"records": null}', '{"records": [1, 2]}', '{"records": [{"foo": 1}]}',
                                     '{"records": [{"target": 5}]}', None])
def test_a_broken_results_file_is_refused_and_left_alone(capsys, monkeypatch, tmp_path, content):
    out = tmp_path / "o"
    out.mkdir()
    if content is None:
        (out / "results.json").mkdir()
    else:
        (out / "results.json").write_text(content)
    refused(capsys, IMAGE + ["--target", "head:1", "--out", str(out), "--resume"], "not a dreamy results file",
            monkeypatch=monkeypatch)
    assert files_under(out) == ["results.json"]
    if content is not None:
        assert (out / "results.json").read_text() == content


# ---- names never collide -----------------------------------------------------------------------------------

def test_specs_that_slug_alike_get_their_own_images(tmp_path):
    torch.save(torch.ones(8), tmp_path / "a b.pt")
    torch.save(-torch.ones(8), tmp_path / "a_b.pt")
    long_a = "+".join(["0.5*conv1:1"] * 12) + "+conv1:2"
    long_b = "+".join(["0.5*conv1:1"] * 12) + "+conv1:3"
    out = tmp_path / "o"
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = main(IMAGE + ["--target", "conv1:dir='a b.pt'", "--target", "conv1:dir=a_b.pt", "--target", long_a,
                             "--target", long_b, "--out", str(out)])
    finally:
        os.chdir(cwd)
    assert code == 0
    saved = json.loads((out / "results.json").read_text())["records"]
    images = [r["images"][0] for r in saved]
    assert len(saved) == 4 and len(set(images)) == 4 and all((out / i).exists() for i in images)


# ---- interrupts ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_stops_the_run_and_never_records_a_cut_short_target(tmp_path, sig):
    out = tmp_path / "o"
    # batches long enough (hundreds of steps) that the signal, sent as soon as the first batch is saved,
    # always lands inside the second one, on a fast idle machine as on a loaded one
    args = ["image", "--model", "tiny:cnn", "--target", "conv3:0-5", "--steps", "300", "--batch-targets", "2",
            "--out", str(out), "--quiet"]
    # as from a terminal: SIGINT at its default (a shell's background job, e.g. `make test &`, starts with it ignored)
    proc = subprocess.Popen(DREAM + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "results.json").exists():
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    saved = json.loads((out / "results.json").read_text())["records"]
    assert 2 <= len(saved) < 6 and len(saved) % 2 == 0  # whole batches only
    assert all(r["settings"]["steps"] == 300 and not r["settings"]["interrupted"] for r in saved)
    if sig == signal.SIGINT:  # --resume dreams exactly the targets that were not saved
        done = subprocess.run(DREAM + args + ["--resume"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        final = json.loads((out / "results.json").read_text())["records"]
        assert sorted(r["target"] for r in final) == sorted(f"conv3:{i}" for i in range(6))
        assert final[: len(saved)] == saved


# ---- output hygiene -----------------------------------------------------------------------------------------

def test_written_files_have_normal_permissions(tmp_path):
    out = tmp_path / "o"
    old = os.umask(0o022)
    try:
        assert main(IMAGE + ["--target", "head:1", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    for path in [out / "results.json", out / "index.html", *sorted((out / "images").iterdir())]:
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path


# ---- issue 19: symlinked --out, errors knowable up front ------------------------------------------------

def _dangling(folder: Path) -> Path:
    (folder / "dangling").symlink_to(folder / "nowhere")
    return folder / "dangling"


def _loop(folder: Path) -> Path:
    (folder / "loop").symlink_to(folder / "loop")
    return folder / "loop"


def _through_loop(folder: Path) -> Path:
    (folder / "a").symlink_to(folder / "b")
    (folder / "b").symlink_to(folder / "a")
    return folder / "a" / "out"


@pytest.mark.parametrize("command", [IMAGE + ["--target", "head:1"], PROMPT + ["--target", "logits:1"]])
@pytest.mark.parametrize("make, words", [(_dangling, "which does not exist"), (_loop, "symlink loop"),
                                         (_through_loop, "symlink loop")])
def test_a_dangling_or_looping_symlink_out_is_refused_up_front(tmp_path, command, make, words):
    out = make(tmp_path)
    before = files_under(tmp_path)
    done = subprocess.run(DREAM + command + ["--out", str(out)], capture_output=True, text=True, timeout=120)
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and words in err, err
    assert files_under(tmp_path) == before


def test_a_symlink_to_a_real_folder_keeps_working(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    done = subprocess.run(DREAM + IMAGE + ["--target", "head:1", "--out", str(tmp_path / "link")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "real" / "results.json").exists() and (tmp_path / "link").is_symlink()


@pytest.mark.parametrize("size, words", [("17", "divisible by 8, got 17x17; use e.g. 16 or 24"), ("20", "got 20x20")])
def test_a_decoder_size_it_cannot_make_is_refused_before_loading(capsys, monkeypatch, tmp_path, size, words):
    out = tmp_path / "o"
    refused(capsys, IMAGE + ["--target", "head:1", "--param", "decoder", "--size", size, "--out", str(out)], words,
            monkeypatch=monkeypatch)
    assert not out.exists()


def test_a_decoder_size_it_cannot_make_exits_2_with_nothing_written(tmp_path):
    out = tmp_path / "o"
    done = subprocess.run(DREAM + IMAGE + ["--target", "head:1", "--param", "decoder", "--size", "17", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "divisible by 8" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("target, words", [
    ("model.embed_tokens:3", "never runs in a prompt search: the search feeds the model embeddings directly"),
    ("model.embed_tokens@in:3", "int64 values (token ids?)"),
    ("logits:1+model.embed_tokens:2", "never runs in a prompt search"),
])
def test_a_prompt_target_on_the_input_embedding_is_refused_up_front(tmp_path, target, words):
    out = tmp_path / "o"
    done = subprocess.run(DREAM + PROMPT + ["--target", target, "--target", "logits:1", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and words in err and f"target {target}:" in err, err
    assert not out.exists()


def test_the_first_layer_input_reads_the_embeddings_and_works(tmp_path):
    assert main(PROMPT + ["--target", "model.layers.0@in:3", "--out", str(tmp_path / "o")]) == 0


def _binary_folder(folder: Path) -> Path:
    images = folder / "imgs"
    images.mkdir()
    for i in range(2):
        (images / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    return images


@pytest.mark.parametrize("make, words", [(lambda d: Path("/bin/ls"), "'/bin/ls' is not text: it holds NUL bytes"),
                                         (_binary_folder, "holds no text file")])
def test_maxima_that_are_not_text_are_refused_before_loading(capsys, monkeypatch, tmp_path, make, words):
    out = tmp_path / "o"
    refused(capsys, PROMPT + ["--target", "logits:1", "--maxima", str(make(tmp_path)), "--out", str(out)],
            f"--maxima: text corpus {words}" if words.startswith("'") else words, monkeypatch=monkeypatch)
    assert not out.exists()


def test_maxima_that_are_not_text_exit_2_from_the_command_line(tmp_path):
    out = tmp_path / "o"
    done = subprocess.run(DREAM + PROMPT + ["--target", "logits:1", "--maxima", str(_binary_folder(tmp_path)),
                                            "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "holds no text file" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def _torch_is_loading(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as maps:
            return "torch" in maps.read()
    except OSError:
        return True  # gone already: let the caller see how it ended


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see torch loading")
@pytest.mark.parametrize("entry", [["-m", "dreamy"], ["-c", "import sys; from dreamy.cli import main; sys.exit(main())"]])
@pytest.mark.parametrize("sig, after", [(signal.SIGTERM, 0.0), (signal.SIGTERM, 0.15), (signal.SIGTERM, 0.5),
                                        (signal.SIGINT, 0.3)])
def test_an_interrupt_while_torch_is_still_importing_exits_130(tmp_path, entry, sig, after):
    out = tmp_path / "o"
    proc = subprocess.Popen([sys.executable, *entry, *IMAGE, "--target", "head:1", "--steps", "2000", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not _torch_is_loading(proc.pid) and time.time() < deadline:
        time.sleep(0.001)
    time.sleep(after)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("dream: interrupted") and "Traceback" not in err, err
    assert not (out / "results.json").exists() or json.loads((out / "results.json").read_text())["records"] == []


def test_a_prompt_longer_than_the_model_context_is_refused_up_front(capsys, tmp_path):
    out = tmp_path / "o"
    started = time.time()
    assert main(PROMPT[:-1] + ["--tokens", "100000", "--target", "logits:1", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "longer than the 256 positions 'tiny:lm'" in err and "--tokens" in err
    assert time.time() - started < 60 and not out.exists()


def test_an_interrupt_inside_an_import_waits_for_the_import_to_finish(tmp_path):
    # deterministic: a module that SIGTERMs its own process half-way through being imported
    (tmp_path / "halfway.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\n"
                                         "time.sleep(0.3)\nfinished = True\n")
    code = ("import sys, time\nsys.path.insert(0, sys.argv[1])\nfrom dreamy import cli\n"
            "previous = cli._interrupt_on_signals()\n"
            "try:\n    import halfway\n    time.sleep(5)\n    print('no interrupt')\n"
            "except KeyboardInterrupt:\n    print('interrupted after the import:', 'halfway' in sys.modules and "
            "getattr(sys.modules['halfway'], 'finished', False))\n")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "interrupted after the import: True", done.stdout + done.stderr


def test_bf16_precision_is_refused_on_the_cpu_before_the_model_loads(tmp_path):
    from dreamy.cli import main

    assert main(["image", "--model", "tiny:cnn", "--target", "head:1", "--precision", "bf16", "--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())


# ---- issue 41: nothing of a user's is overwritten or deleted ------------------------------------------------

@pytest.mark.parametrize("command", [IMAGE + ["--target", "head:1"], PROMPT + ["--target", "logits:1"]])
def test_resume_with_overwrite_is_refused_at_argument_time(tmp_path, finished_run, command):
    before = (finished_run / "results.json").read_text()
    started = time.time()
    done = subprocess.run(DREAM + command + ["--out", str(finished_run), "--resume", "--overwrite"],
                          capture_output=True, text=True, timeout=120)
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1, done.stderr
    assert "--resume keeps the finished records in --out and --overwrite deletes them" in err
    assert (finished_run / "results.json").read_text() == before and time.time() - started < 60


def test_overwrite_deletes_no_file_an_edited_results_json_names(tmp_path, finished_run):
    (finished_run / "notes.txt").write_text("mine")
    (finished_run / "images" / "holiday.png").write_bytes(b"mine")
    saved = json.loads((finished_run / "results.json").read_text())
    saved["records"][0]["images"] += ["notes.txt", "images/holiday.png"]
    (finished_run / "results.json").write_text(json.dumps(saved))
    done = subprocess.run(DREAM + IMAGE + ["--target", "head:2", "--out", str(finished_run), "--overwrite"],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert (finished_run / "notes.txt").read_text() == "mine"
    assert (finished_run / "images" / "holiday.png").read_bytes() == b"mine"
    assert [r["target"] for r in json.loads((finished_run / "results.json").read_text())["records"]] == ["head:2"]
    assert not any("head_1" in p.name for p in (finished_run / "images").iterdir())  # the old run's own images went


@pytest.mark.parametrize("value", ["1e-300,1e300", "1e-39,30", "0.3,1e39"])
def test_a_fluency_weight_range_float32_cannot_hold_is_refused(capsys, monkeypatch, tmp_path, value):
    err = refused(capsys, PROMPT + ["--target", "logits:1", "--fluency-weight-range", value, "--out", str(tmp_path / "o")],
                  "(the weights are float32)", monkeypatch=monkeypatch)
    assert value in err and not (tmp_path / "o").exists()
