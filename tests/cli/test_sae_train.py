"""`dream sae-train` (dreamy/cli/sae_train.py): end to end on tiny:lm, bad arguments."""

import json

import pytest
import torch

from dreamy import cli
from dreamy.sae import load
from dreamy.targets import Probe

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
