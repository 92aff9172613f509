"""`--text-column` and `--max-tokens` (dreamy/cli/arguments.py::add_corpus_flags) on `dream sae-train`: a table
corpus read by its column, cut to a token budget, refused in one line before the model loads."""

import json
from pathlib import Path

import pytest
import torch

from dreamy import cli

ROWS = [{"id": i, "body": f"The cat {i} sat on the mat and the dog ran in park {i % 7}."} for i in range(150)]


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return str(path)


def _argv(corpus, out, *extra):
    return ["sae-train", "--model", "tiny:lm", "--site", "model.layers.1", "--corpus", corpus, "--features", "16",
            "--k", "2", "--tokens", "256", "--batch-tokens", "128", "--window", "16", "--heldout-tokens", "32",
            "--out", str(out), "--quiet", *extra]


def test_sae_train_reads_a_table_column_cut_to_a_token_budget(table, tmp_path, capsys):
    out = tmp_path / "sae"
    assert cli.main(_argv(table, out, "--text-column", "body", "--max-tokens", "600")) == 0
    settings = torch.load(out / "checkpoint.pt", weights_only=False)["settings"]
    [name] = settings["corpora"]  # the corpus the SAE trained on: the table's body column, its first 600 tokens
    assert name.startswith(f"file:{Path(table).resolve()}[body]#") and name.endswith("[:600tok]")
    assert "SAE written to" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    ([], "has no column 'text'; its columns: id, body"),
    (["--text-column", "id"], "column 'id' holds int values (line 1), not text"),
    (["--max-tokens", "0"], "argument --max-tokens: must be > 0"),
])
def test_a_bad_column_or_budget_is_one_line_before_the_model_loads(table, tmp_path, capsys, monkeypatch, extra, message):
    import dreamy.models

    monkeypatch.setattr(dreamy.models, "load", lambda *a, **k: pytest.fail("the model loaded"))
    assert cli.main(_argv(table, tmp_path / "sae", *extra)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_dream_prompt_maxima_reads_a_table_and_refuses_its_missing_column(table, tmp_path, capsys, monkeypatch):
    import dreamy.models

    monkeypatch.setattr(dreamy.models, "load", lambda *a, **k: pytest.fail("the model loaded"))
    argv = ["prompt", "--model", "tiny:lm", "--target", "logits:1", "--maxima", table, "--out", str(tmp_path / "o"), "--quiet"]
    assert cli.main(argv) == 2  # the default column 'text' is not in the table: one line, before the model loads
    err = capsys.readouterr().err
    assert "--maxima: text corpus" in err and "has no column 'text'; its columns: id, body" in err and err.count("\n") == 1
