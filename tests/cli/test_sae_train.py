"""`dream sae-train` (dreamy/cli/sae_train.py): end to end on tiny:lm, bad arguments."""

import json

import pytest
import torch

from dreamy import cli
from dreamy.sae import load
from dreamy.targets import Probe
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TEXT = " ".join(f"The cat {i} sat on the mat and the dog ran in park {i % 7}." for i in range(150))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "toy.txt"
    path.write_text(TEXT)
    return str(path)


def _argv(corpus, out, *extra):
    return ["sae-train", "--model", "tiny:lm", "--site", "model.layers.1", "--corpus", corpus, "--features", "64",
            "--k", "4", "--tokens", "1024", "--batch-tokens", "256", "--window", "16", "--heldout-tokens", "64", "--out", str(out), "--quiet", *extra]


def test_sae_train_end_to_end(corpus, tmp_path, capsys):
    out = tmp_path / "sae"
    assert cli.main(_argv(corpus, out)) == 0
    printed = capsys.readouterr().out
    assert f"SAE written to {out}" in printed and "FVE" in printed and "loss recovered" in printed
    assert {p.name for p in out.iterdir()} == {"cfg.json", "sae_weights.safetensors", "metrics.json", "checkpoint.pt"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_tokens"] == 1024 and metrics["site"] == "model.layers.1"
    sae = load(out)
    # the folder is a target unit: a feature scores its TopK pre-activation after ReLU
    ids = torch.tensor([[0, 5, 6, 7, 8]])
    score = Probe(cli_model(), [f"model.layers.1:sae={out}#3/pos=-1"])(input_ids=ids).scores[0, 0]
    hidden = cli_model()(input_ids=ids, output_hidden_states=True).hidden_states[2][0, -1]
    assert float(score) == pytest.approx(float(sae.pre_activation(hidden)[3].clamp(min=0)), abs=1e-4)
    # --resume of a finished run trains nothing more and gives the same SAE
    assert cli.main(_argv(corpus, out, "--resume")) == 0
    assert torch.equal(load(out).W_enc, sae.W_enc)


def cli_model():
    from tests.fixtures import cached

    return cached("tiny:lm").model


@pytest.mark.parametrize("extra, message", [
    (["--k", "100"], "--k 100 must be <= --features 64"),
    (["--k", "0"], "argument --k: must be > 0"),
    (["--lr", "nan"], "argument --lr: must be > 0 and finite"),
    (["--site", "model.layers.1:3"], "must be a bare hidden site"),
    (["--site", "logits"], "must be a bare hidden site"),
    (["--corpus", "no-such-corpus"], "--corpus 'no-such-corpus' is neither"),
    (["--model", "tiny:cnn"], "is a vision model"),
    (["--site", "model.layers.7"], "--site: unknown site 'model.layers.7'"),
])
def test_bad_arguments_exit_2_with_one_line(corpus, tmp_path, capsys, extra, message):
    out = tmp_path / "sae"
    assert cli.main(_argv(corpus, out, *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists() or not any(out.iterdir())


def test_an_existing_run_needs_resume(corpus, tmp_path, capsys):
    out = tmp_path / "sae"
    out.mkdir()
    (out / "cfg.json").write_text("{}")
    assert cli.main(_argv(corpus, out)) == 2
    assert "pass --resume" in capsys.readouterr().err


# ---- issue 19: checked before training, never a NaN model, one line for every bad input ---------------------


DREAM = [sys.executable, "-m", "dreamy"]


def run(*args, timeout=180):
    return subprocess.run(DREAM + [str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def one_line(done, code, words):
    err = done.stderr.strip()
    assert done.returncode == code, (done.returncode, done.stderr)
    assert len(err.splitlines()) == 1 and err.startswith("dream: error:"), err
    assert words in err, err
    return err


def _readonly(tmp_path):
    if os.geteuid() == 0:
        return None  # root writes anywhere
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "sae"


def _dangling(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return tmp_path / "dangling"


def _loop(tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return tmp_path / "loop"


def _inside_loop(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    return tmp_path / "a" / "sae"


def _inside_file(tmp_path):
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "sae"


@pytest.mark.parametrize("make, words", [
    (lambda tmp: Path("/sys/x"), "not writable"),
    (lambda tmp: Path("/proc/x/y"), "not writable"),
    (_readonly, "not writable"),
    (_dangling, "which does not exist"),
    (_loop, "symlink loop"),
    (_inside_loop, "symlink loop"),
    (_inside_file, "is a file, not a folder"),
])
def test_an_unusable_out_is_refused_before_training(corpus, tmp_path, make, words):
    out = make(tmp_path)
    if out is None:
        pytest.skip("a read-only folder is writable for root")
    before = sorted(p.name for p in tmp_path.iterdir())
    started = time.time()
    one_line(run(*_argv(corpus, out)), 2, words)
    assert time.time() - started < 60
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing made, nothing trained


def test_a_symlink_to_a_real_folder_works(corpus, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert cli.main(_argv(corpus, tmp_path / "link")) == 0
    assert (tmp_path / "real" / "sae_weights.safetensors").exists()


def test_a_diverging_run_stops_with_one_line_and_saves_no_sae(corpus, tmp_path):
    out = tmp_path / "sae"
    err = one_line(run(*_argv(corpus, out, "--lr", "1e30")), 1, "training diverged at step")
    assert "lower --lr" in err and "is not finite" in err
    assert not (out / "sae_weights.safetensors").exists() and not (out / "cfg.json").exists()
    assert not (out / "metrics.json").exists()


def test_resume_from_a_checkpoint_holding_nan_is_refused(corpus, tmp_path):
    out = tmp_path / "sae"
    assert cli.main(_argv(corpus, out)) == 0
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["sae"]["W_dec"][3] = float("nan")
    torch.save(state, out / "checkpoint.pt")
    weights = (out / "sae_weights.safetensors").read_bytes()
    one_line(run(*_argv(corpus, out, "--resume")), 2, "holds non-finite values (W_dec)")
    assert (out / "sae_weights.safetensors").read_bytes() == weights  # the finished SAE is not replaced


def _checkpoint(folder, value):
    out = folder / "sae"
    out.mkdir(parents=True)
    torch.save(value, out / "checkpoint.pt")
    return out


GOOD_SHAPES = {"W_enc": torch.zeros(64, 64), "b_enc": torch.zeros(64), "W_dec": torch.zeros(64, 64), "b_dec": torch.zeros(64)}


@pytest.mark.parametrize("value, words", [
    ([1, 2, 3], "holds a list, not a dict"),
    ({"settings": {}, "step": 1, "scale": 1.0, "train_seconds": 0.0, "sae": GOOD_SHAPES, "since_fired": torch.zeros(64)},
     "no 'optimizer'"),
    ("text", "holds a str, not a dict"),
    ({"settings": [], "step": 1, "scale": 1.0, "train_seconds": 0.0, "sae": {}, "optimizer": {}, "since_fired": 1},
     "must be dicts"),
    ({"settings": {}, "step": 1, "scale": 1.0, "train_seconds": 0.0, "sae": {"W_enc": 1}, "optimizer": {},
      "since_fired": torch.zeros(64)}, "must hold the tensors W_enc"),
    ({"settings": {}, "step": "1", "scale": 1.0, "train_seconds": 0.0, "sae": GOOD_SHAPES, "optimizer": {},
      "since_fired": torch.zeros(64)}, "'step' must be an int"),
])
def test_a_foreign_checkpoint_gets_one_line(corpus, tmp_path, capsys, value, words):
    out = _checkpoint(tmp_path, value)
    assert cli.main(_argv(corpus, out, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a dreamy SAE checkpoint" in err and words in err, err


def test_foreign_checkpoints_from_the_command_line(corpus, tmp_path):
    one_line(run(*_argv(corpus, _checkpoint(tmp_path / "a", [1, 2]), "--resume")), 2, "holds a list, not a dict")
    one_line(run(*_argv(corpus, _checkpoint(tmp_path / "b", {"settings": {}}), "--resume")), 2, "no 'step'")


def test_a_checkpoint_of_the_same_settings_that_does_not_fit_gets_one_line(corpus, tmp_path, capsys):
    out = tmp_path / "sae"
    assert cli.main(_argv(corpus, out)) == 0
    capsys.readouterr()
    good = torch.load(out / "checkpoint.pt", weights_only=True)
    for change, words in [({"sae": {**good["sae"], "W_enc": torch.zeros(3, 3)}}, "does not fit this run"),
                          ({"since_fired": torch.zeros(5)}, "since_fired has shape (5,)"),
                          ({"step": 10**6}, "step 1000000 is outside 0..4"),
                          ({"optimizer": {"state": {}, "param_groups": []}}, "optimizer state that does not fit"),
                          ({"scale": float("nan")}, "holds non-finite values (scale nan)")]:
        torch.save({**good, **change}, out / "checkpoint.pt")
        assert cli.main(_argv(corpus, out, "--resume")) == 2, change
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err


def test_too_many_features_are_refused_with_an_estimate(corpus, tmp_path):
    out = tmp_path / "sae"
    err = one_line(run(*_argv(corpus, out, "--features", "1000000000")), 2, "GiB to train but")
    assert "1000000000 features on a 64-wide site" in err and "lower --features" in err
    assert not out.exists()


@pytest.mark.parametrize("site, words", [
    ("model.rotary_emb", "shared across the batch"),
    ("model.embed_tokens@in", "int64 values (token ids?)"),
    ("model.rotary_emb[1]", "shared across the batch"),
])
def test_sites_an_sae_cannot_read_are_refused(corpus, tmp_path, site, words):
    out = tmp_path / "sae"
    err = one_line(run(*_argv(corpus, out, "--site", site)), 2, f"--site: site '{site}'")
    assert words in err
    assert not out.exists()


def test_a_binary_corpus_is_refused_before_the_model_loads(tmp_path):
    out = tmp_path / "sae"
    one_line(run(*_argv("/bin/ls", out)), 2, "--corpus: text corpus '/bin/ls' is not text: it holds NUL bytes")
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    one_line(run(*_argv(images, out)), 2, "holds no text file")
    assert not out.exists()


def test_a_folder_another_run_holds_is_refused_naming_it(corpus, tmp_path):
    out = tmp_path / "sae"
    code = ("import sys, time\nfrom dreamy.core.folders import folder_lock\nwith folder_lock(sys.argv[1], 'holder-cmd'):\n"
            "    print('held', flush=True)\n    time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        one_line(run(*_argv(corpus, out)), 2, f"in use by another dream run (pid {child.pid} ")
    finally:
        child.kill()
        child.wait()
    assert sorted(p.name for p in out.iterdir()) == [".dreamy.lock"]  # the dead holder's file, nothing trained


def test_stale_temporary_files_of_a_killed_write_are_removed(corpus, tmp_path):
    out = tmp_path / "sae"
    out.mkdir()
    for name in (".checkpoint.pt.k3j_x9a2", ".sae_weights.safetensors.abcdefgh", ".metrics.json.00000000"):
        (out / name).write_bytes(b"half a file")
    assert cli.main(_argv(corpus, out)) == 0  # a folder of a killed run's temporary files only is no user's folder
    assert sorted(p.name for p in out.iterdir()) == ["cfg.json", "checkpoint.pt", "metrics.json", "sae_weights.safetensors"]
    (out / ".checkpoint.pt.k3j_x9a2").write_bytes(b"half a file")
    (out / ".notes.txt.abcdefgh").write_text("mine")  # not a temp of an SAE file: kept
    assert cli.main(_argv(corpus, out, "--resume")) == 0
    assert sorted(p.name for p in out.iterdir()) == [".notes.txt.abcdefgh", "cfg.json", "checkpoint.pt", "metrics.json",
                                                     "sae_weights.safetensors"]


def test_non_finite_figures_are_an_error_in_metrics_and_the_exit_code(corpus, tmp_path, capsys, monkeypatch):
    import dreamy.sae.train as train

    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: {**real(*a, **k), "fve": float("nan")})
    out = tmp_path / "sae"
    assert cli.main(_argv(corpus, out)) == 1
    err = capsys.readouterr().err
    assert "figures that are not finite numbers: fve nan" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["fve"] is None and "fve nan" in metrics["error"]


def test_sigterm_speaks_of_the_sae_checkpoint(corpus, tmp_path):
    out = tmp_path / "sae"
    args = _argv(corpus, out)
    args[args.index("--tokens") + 1] = "100000000"
    proc = subprocess.Popen(DREAM + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "checkpoint.pt").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "SAE checkpoint" in err and "--resume" in err and "finished targets" not in err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] >= 50


def test_resume_never_trains_afresh_over_an_sae_it_cannot_continue(corpus, tmp_path):
    out = tmp_path / "sae"
    assert cli.main(_argv(corpus, out)) == 0
    (out / "checkpoint.pt").unlink()  # e.g. an SAELens folder copied here
    weights = (out / "sae_weights.safetensors").read_bytes()
    one_line(run(*_argv(corpus, out, "--resume")), 2, "but no checkpoint.pt to resume from")
    assert (out / "sae_weights.safetensors").read_bytes() == weights


def test_a_dream_run_folder_is_not_an_sae_folder(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["image", "--model", "tiny:cnn", "--target", "head:1", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    assert cli.main(_argv(corpus, out)) == 2
    assert "holds a dream run (results.json)" in capsys.readouterr().err


# ---- issue 41: nothing of a user's is overwritten ----------------------------------------------------------

@pytest.mark.parametrize("resume", [False, True])
def test_a_folder_of_the_users_files_is_refused_with_and_without_resume(corpus, tmp_path, resume):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.json").write_text('{"mine": true}')
    (out / "notes.txt").write_text("mine")
    err = one_line(run(*_argv(corpus, out, *(["--resume"] if resume else []))), 2, "is not empty")
    assert "'metrics.json', 'notes.txt'" in err and "holds no SAE run" in err
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "notes.txt"]
    assert (out / "metrics.json").read_text() == '{"mine": true}'


def test_an_sae_run_beside_the_users_files_still_resumes(corpus, tmp_path):
    out = tmp_path / "sae"
    assert cli.main(_argv(corpus, out)) == 0
    (out / "notes.txt").write_text("mine")
    assert cli.main(_argv(corpus, out, "--resume")) == 0
    assert (out / "notes.txt").read_text() == "mine"


def test_a_corpus_given_twice_is_refused(corpus, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "copy.txt"
    shutil.copy(corpus, copy)
    relative = os.path.relpath(corpus)
    for twice in ([corpus, corpus], [corpus, relative], [corpus, str(copy)], ["bible", "bible-kjv"]):
        argv = _argv(twice[0], tmp_path / "sae") + ["--corpus", twice[1]]
        one_line(run(*argv), 2, f"--corpus {twice[1]!r} is the same text as --corpus {twice[0]!r}")
    assert not (tmp_path / "sae").exists()
