"""`dream dashboard`: one scan for every feature of an SAE, records and gallery written, resumable."""

import json
import subprocess
import sys

import pytest

from dreamy.cli import main
from dreamy.datasets import TextCorpus
from dreamy.maxima import text_maxima
from dreamy.maxima.records import canonical_target

DREAM = [sys.executable, "-m", "dreamy"]
SITE = "model.layers.1.mlp.down_proj"
TEXT = ("The cat sat on the mat. The dog ran in the park and the bird sang in the tree. "
        "Paris is the capital of France. Rome is in Italy. The sun is hot and the moon is bright. ") * 3


def _sae_with_dead_features(tmp_path):
    """A tiny SAE of 8 features on the residual width of tiny:lm; features 6 and 7 can never fire (b_enc -1e6)."""
    from dreamy.sae.files import save
    from dreamy.sae.model import SAE
    from tests.sae.helpers import small_sae

    weights = small_sae("relu", d_in=64, d_sae=8, seed=5).weights()
    weights.b_enc[6:] = -1e6
    return save(SAE(weights), tmp_path / "sae")


def _corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def test_dashboard_of_every_feature_in_one_scan_equals_text_maxima_alone(tmp_path, tiny_lm):
    folder = _sae_with_dead_features(tmp_path)
    corpus = _corpus_file(tmp_path)
    out = tmp_path / "out"
    args = ["dashboard", "--model", "tiny:lm", "--target", f"{SITE}:sae={folder}#all", "--corpus", str(corpus),
            "--out", str(out), "--k", "3", "--window", "8", "--quiet"]
    done = subprocess.run(DREAM + args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    saved = json.loads((out / "results.json").read_text())
    records = saved["records"]
    specs = [canonical_target(f"{SITE}:sae={folder}#{i}") for i in range(8)]
    assert [r["target"] for r in records] == specs and saved["run"]["kind"] == "dashboard"
    assert all(r["kind"] == "dashboard" for r in records)
    dead = [r["target"] for r in records if r["dead"]]
    assert dead == specs[6:] and "2 dead target(s)" in done.stderr
    assert all(r["density"] == 0 and r["statistics"]["fired"] == 0 and not r["maxima"] and not r["samples"]
               for r in records[6:])  # a dead feature keeps its statistics, no windows of zeros
    assert all(len(r["logit_tops"]["promoted"]) == 10 for r in records)
    live = records[0]
    assert live["density"] > 0 and live["statistics"]["histogram"]["counts"] and live["samples"]
    assert all(len(e["context_activations"]) == 8 and "token_activations" not in e for e in live["maxima"])
    page = (out / "index.html").read_text()
    assert "dreamy dashboards" in page and 'data-score-density' in page and page.count('href="cards/') == 8
    cards = sorted((out / "cards").iterdir())
    assert len(cards) == 8 and sum("never fires" in card.read_text() for card in cards) == 2
    # the same values as text_maxima of that one feature alone, scan only
    alone = text_maxima(tiny_lm, [specs[0]], TextCorpus("c", TEXT), k=3, window=8, rescore=False, xent_windows=0,
                        cache_dir=None, progress=False)[specs[0]]
    assert [e["token_ids"] for e in live["maxima"]] == [e.token_ids for e in alone.examples]
    assert [e["activation"] for e in live["maxima"]] == pytest.approx([e.activation for e in alone.examples], rel=1e-5)
    assert [v for e in live["maxima"] for v in e["context_activations"]] == pytest.approx(
        [v for e in alone.examples for v in e.context_activations], rel=1e-4, abs=1e-5)
    mine, plain = dict(live["statistics"]), dict(alone.stats["tokens"])
    assert mine.pop("histogram") == plain.pop("histogram")
    assert mine == pytest.approx(plain, rel=1e-5)

    # --resume on the finished run does nothing again; without it the folder is refused
    again = subprocess.run(DREAM + args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
    refused = subprocess.run(DREAM + args, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "--resume" in refused.stderr


def test_an_interrupted_scan_resumes_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    import dreamy.maxima.topk as topk

    folder = _sae_with_dead_features(tmp_path)
    corpus = _corpus_file(tmp_path)
    out = tmp_path / "out"
    args = ["dashboard", "--model", "tiny:lm", "--target", f"{SITE}:sae={folder}#0-3", "--corpus", str(corpus),
            "--out", str(out), "--k", "2", "--window", "8", "--quiet"]
    real_scan = topk.scan
    seen = []

    def interrupted(score_batch, *a, **kw):  # the scan's batches: the second one is interrupted
        def scoring(items):
            seen.append(list(items))
            if len(seen) == 2:
                raise KeyboardInterrupt
            return score_batch(items)
        return real_scan(scoring, *a, **{**kw, "batch_size": 4})

    monkeypatch.setattr("dreamy.maxima.text.scan", interrupted)
    assert main(args) == 130
    assert list((out / ".scan").rglob(".scan-*.pt"))  # the checkpoint the interrupt saved
    first = len(seen)
    capsys.readouterr()
    assert main(args[:-1] + ["--resume"]) == 0
    assert "resuming the scan from its checkpoint" in capsys.readouterr().err
    assert seen[first][0] == 4  # the resumed scan starts after the batch that was saved
    records = json.loads((out / "results.json").read_text())["records"]
    assert len(records) == 4 and all(r["kind"] == "dashboard" for r in records)


def test_bad_inputs_are_refused_before_the_model_loads(tmp_path):
    corpus = _corpus_file(tmp_path)
    base = ["dashboard", "--model", "tiny:lm", "--corpus", str(corpus), "--out", str(tmp_path / "o")]
    assert main(base + ["--target", f"sae={tmp_path / 'missing'}#all"]) == 2
    assert main(["dashboard", "--model", "tiny:lm", "--target", "logits:1", "--corpus", str(tmp_path / "t.jsonl"),
                 "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "t.jsonl").write_text('{"body": "hello there"}\n')
    assert main(["dashboard", "--model", "tiny:lm", "--target", "logits:1", "--corpus", str(tmp_path / "t.jsonl"),
                 "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_a_table_corpus_with_its_column_and_a_token_budget(tmp_path, capsys):
    table = tmp_path / "docs.jsonl"
    table.write_text("".join(json.dumps({"id": i, "body": line}) + "\n" for i, line in enumerate(TEXT.split(". "))))
    out = tmp_path / "out"
    args = ["dashboard", "--model", "tiny:lm", "--target", f"{SITE}@in:0-2", "--corpus", str(table),
            "--text-column", "body", "--max-tokens", "48", "--out", str(out), "--k", "2", "--window", "8", "--quiet"]
    assert main(args) == 0, capsys.readouterr().err
    records = json.loads((out / "results.json").read_text())["records"]
    assert len(records) == 3 and all(r["settings"]["n_tokens"] <= 48 and r["statistics"]["tokens"] <= 48 for r in records)
    assert all("{" not in "".join(e["tokens"]) for r in records for e in r["maxima"])  # the column's text, not JSON
    assert "logit_tops" not in records[0]  # neurons have no decoder row
    assert main(args[:-1] + ["--target", f"{SITE}@in:99999", "--overwrite"]) == 2
    assert "out of range" in capsys.readouterr().err
    folder = _sae_with_dead_features(tmp_path)  # 8 features: the 9th is refused though the first eight are fine
    assert main(args[:-1] + ["--target", f"{SITE}:sae={folder}#0-8", "--overwrite"]) == 2
    assert "out of range" in capsys.readouterr().err
    (out / "cards" / "mine.txt").write_text("the user's")
    other = ["dashboard", "--model", "tiny:lm", "--target", "logits:1", "--corpus", str(table), "--text-column", "body",
             "--out", str(out), "--k", "2", "--window", "8", "--quiet", "--overwrite"]
    assert main(other) == 0  # the old run's cards go, the user's file stays
    names = sorted(p.name for p in (out / "cards").iterdir())
    assert len(names) == 2 and names[0].startswith("logits_1-") and names[1] == "mine.txt"


def test_a_dashboard_folder_exports_for_neuronpedia_with_its_dead_features_skipped(tmp_path, capsys):
    folder = _sae_with_dead_features(tmp_path)
    out, export = tmp_path / "out", tmp_path / "np"
    assert main(["dashboard", "--model", "tiny:lm", "--target", f"{SITE}:sae={folder}#all", "--corpus",
                 str(_corpus_file(tmp_path)), "--out", str(out), "--k", "3", "--window", "8", "--quiet"]) == 0
    records = {r["target"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    capsys.readouterr()
    assert main(["export", "--neuronpedia", str(export), str(out)]) == 0, capsys.readouterr().err
    assert "6 feature(s) and 2 dead one(s)" in capsys.readouterr().out
    (source,) = [p for p in export.iterdir() if p.is_dir()]
    assert json.loads((source / "skipped_indexes.json").read_text())["skipped_indexes"] == [6, 7]
    features = json.loads((source / "batch-0.json").read_text())["features"]
    assert [f["feature_index"] for f in features] == list(range(6))
    for feature in features:
        record = records[canonical_target(f"{SITE}:sae={folder}#{feature['feature_index']}")]
        assert feature["frac_nonzero"] == round(record["density"], 3)
        assert sum(feature["freq_hist_data_bar_heights"]) == record["statistics"]["fired"]
        assert len(feature["pos_str"]) == 10 and feature["n_tokens_in_prompt"] == 8
        top = feature["activations"][0]
        assert top["tokens"] == record["maxima"][0]["tokens"] and top["bin_max"] == round(record["activation"], 3)
        assert top["values"][top["qualifying_token_index"]] == pytest.approx(record["activation"], abs=1e-3)
        assert len(feature["activations"]) == len(record["maxima"]) + len(record["samples"])
