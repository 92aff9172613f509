"""dreamy/sae/neuronpedia.py: a prompt run's features and neurons as the JSON SAEDashboard's Neuronpedia runner
writes (field names and types checked against the format; round-tripped through sae-dashboard's own record
classes when installed), with the values they should hold and the dreamed prompts marked."""

import json
import math

import pytest
import torch

from dreamy.cli import main
from dreamy.datasets import TextCorpus
from dreamy.language.layout import make_layout
from dreamy.sae import save
from dreamy.sae.neuronpedia import DREAMED, neuronpedia_sources, write_neuronpedia
from dreamy.targets import Probe
from tests.sae.helpers import small_sae
import subprocess
import sys

CORPUS = TextCorpus("toy", " ".join(f"the cat {i % 7} sat on mat {i % 5}, and so on." for i in range(300)))
NEURON = "model.layers.1.mlp.down_proj@in:5"

BATCH_FIELDS = {"model_id": str, "layer": int, "sae_set": str, "sae_id_suffix": (str, type(None)), "features": list}
FEATURE_FIELDS = {  # in the order SAEDashboard writes them
    "feature_index": int, "neuron_alignment_indices": [int], "neuron_alignment_values": [float],
    "neuron_alignment_l1": [float], "correlated_neurons_indices": [int], "correlated_neurons_l1": [float],
    "correlated_neurons_pearson": [float], "correlated_features_indices": [int], "correlated_features_l1": [float],
    "correlated_features_pearson": [float], "neg_str": [str], "neg_values": [float], "pos_str": [str], "pos_values": [float],
    "frac_nonzero": float, "freq_hist_data_bar_values": [float], "freq_hist_data_bar_heights": [int],
    "logits_hist_data_bar_heights": [int], "logits_hist_data_bar_values": [float], "n_prompts_total": int,
    "n_tokens_in_prompt": int, "dataset": str, "decoder_weights_dist": [float], "activations": list, "vector": [float]}
ACTIVATION_FIELDS = {"bin_min": (int, float), "bin_max": (int, float), "bin_contains": (int, float), "tokens": [str],
                     "values": [float], "qualifying_token_index": int}


def _check_type(value, kind, where):
    if isinstance(kind, list):
        assert isinstance(value, list), where
        for item in value:
            _check_type(item, kind[0], where)
    elif kind is float:
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), (where, value)
    else:
        assert isinstance(value, kind) and not (kind is int and isinstance(value, bool)), (where, value)


def validate_batch(batch):
    """The batch-<i>.json format of sae-dashboard 0.8.0's Neuronpedia runner (see its neuronpedia_dashboard.py)."""
    assert list(batch) == list(BATCH_FIELDS)
    for name, kind in BATCH_FIELDS.items():
        _check_type(batch[name], kind, name)
    indices = [f["feature_index"] for f in batch["features"]]
    assert indices == sorted(indices) and len(indices) <= 128
    for feature in batch["features"]:
        assert list(feature) == list(FEATURE_FIELDS)
        for name, kind in FEATURE_FIELDS.items():
            _check_type(feature[name], kind, name)
        assert len(feature["neuron_alignment_indices"]) == len(feature["neuron_alignment_values"]) == len(feature["neuron_alignment_l1"]) <= 3
        for table in ("correlated_neurons", "correlated_features"):
            assert len({len(feature[f"{table}_{part}"]) for part in ("indices", "l1", "pearson")}) == 1
        assert len(feature["pos_str"]) == len(feature["pos_values"]) and len(feature["neg_str"]) == len(feature["neg_values"])
        assert feature["pos_values"] == sorted(feature["pos_values"], reverse=True) and feature["neg_values"] == sorted(feature["neg_values"])
        assert len(feature["freq_hist_data_bar_values"]) == len(feature["freq_hist_data_bar_heights"])
        assert len(feature["logits_hist_data_bar_values"]) == len(feature["logits_hist_data_bar_heights"])
        assert 0 <= feature["frac_nonzero"] <= 1
        for activation in feature["activations"]:
            assert list(activation) == list(ACTIVATION_FIELDS)
            for name, kind in ACTIVATION_FIELDS.items():
                _check_type(activation[name], kind, name)
            assert len(activation["tokens"]) == len(activation["values"]) > 0
            assert 0 <= activation["qualifying_token_index"] < len(activation["tokens"])


def _roundtrip_through_sae_dashboard(batch):
    dashboard = pytest.importorskip("sae_dashboard.neuronpedia.neuronpedia_dashboard",
                                    reason="sae-dashboard is installed (--no-deps) by `make venv`")
    assert dashboard.NeuronpediaDashboardBatch(**batch).to_dict() == batch


def _records(loaded, folder):
    """A prompt run's records: a neuron and two features of an SAE named by its folder alone, with maxima windows
    and dreamed prompts scored by the probe, and two records that are not exported."""
    windows = torch.tensor([[66, 67, 68, 69, 70, 71], [80, 83, 285, 270, 66, 67]])
    ids = torch.cat([torch.zeros(2, 1, dtype=torch.long), windows], dim=1)
    records = []
    for spec in (NEURON, f"sae={folder}#1", f"sae={folder}#4"):
        probe = Probe(loaded.model, [spec])
        values = probe.maps(probe(input_ids=ids, keep_activations=True).activations)[0][:, 1:]
        maxima = [{"label": "toy", "activation": float(v[-1]), "tokens": [loaded.tokenizer.decode([t]) for t in w.tolist()],
                   "token_ids": w.tolist(), "token_activations": v.tolist()} for w, v in zip(windows, values)]
        layout = make_layout(loaded.tokenizer, 3)
        spans = [[70, 71, 72], [90, 91, 92]]
        scored = Probe(loaded.model, [spec], sequence_reduce="pos=-1")(input_ids=layout.full(torch.tensor(spans))).scores[:, 0]
        frontier = [{"text": loaded.tokenizer.decode(s), "token_ids": s, "activation": float(a), "xentropy": 5.0}
                    for s, a in zip(spans, scored)]
        records.append({"kind": "prompt", "target": spec, "method": "epo", "activation": max(p["activation"] for p in frontier),
                        "frontier": frontier, "settings": {"prefix": "", "suffix": "", "n_tokens": 3}, "maxima": maxima,
                        "maxima_dataset": "toy@6tok"})
    records.append({"kind": "prompt", "target": "logits:3", "frontier": []})
    records.append({"kind": "prompt", "target": "model.layers.0:2", "error": "RuntimeError: boom"})
    return records


@pytest.fixture
def sae_folder(tmp_path):
    sae = small_sae("relu", d_in=64, d_sae=8, seed=2)
    sae.cfg = {"metadata": {"hook_name": "blocks.1.hook_resid_post", "model_name": "tiny:lm", "neuronpedia_id": "tiny-lm/1-res-test"}}
    return save(sae, tmp_path / "sae-l1"), sae


def test_a_run_exports_in_neuronpedias_format_with_the_values_it_should_hold(tiny_lm, sae_folder, tmp_path):
    folder, sae = sae_folder
    records = _records(tiny_lm, folder)
    sources, skipped = neuronpedia_sources(tiny_lm, records, corpus=CORPUS, n_windows=12, window=8)
    assert [s["target"] for s in skipped] == ["logits:3", "model.layers.0:2"]
    assert "only SAE features" in skipped[0]["reason"] and "failed" in skipped[1]["reason"]
    folders = write_neuronpedia(tmp_path / "np", sources, skipped)
    by_set = {s.sae_set: s for s in sources}
    assert set(by_set) == {"res-test", "mlp.down_proj-in-neurons"}
    assert by_set["res-test"].model_id == "tiny-lm" and by_set["res-test"].layer == 1  # from its neuronpedia_id
    assert by_set["mlp.down_proj-in-neurons"].model_id == "lm" and by_set["mlp.down_proj-in-neurons"].layer == 1
    for out in folders:
        batch = json.loads((out / "batch-0.json").read_text())
        validate_batch(batch)
        _roundtrip_through_sae_dashboard(batch)
        skipped_file = json.loads((out / "skipped_indexes.json").read_text())
        assert skipped_file["layer"] == "1" and skipped_file["skipped_indexes"] == []
    batch = json.loads((tmp_path / "np" / by_set["res-test"].folder_name / "batch-0.json").read_text())
    first, second = batch["features"]
    assert (first["feature_index"], second["feature_index"]) == (1, 4)
    row = sae.W_dec[1]
    assert first["neuron_alignment_indices"] == row.topk(3).indices.tolist()
    assert first["neuron_alignment_values"] == pytest.approx(row.topk(3).values.tolist(), abs=1e-3)
    logits = row @ tiny_lm.model.lm_head.weight.T  # direct logits, no final norm
    assert first["pos_values"] == pytest.approx(logits.topk(10).values.tolist(), abs=1e-3)
    assert first["neg_str"][0] == tiny_lm.tokenizer.decode([int(logits.argmin())])
    assert sum(first["logits_hist_data_bar_heights"]) == logits.numel()
    assert first["correlated_features_indices"][0] == 1 and first["correlated_features_pearson"][0] == pytest.approx(1.0)
    assert set(first["correlated_features_indices"]) == {1, 4} and first["n_prompts_total"] == 12 and first["dataset"] == "toy"
    # the density over the statistics windows, by hand
    from dreamy.sae.activations import corpus_windows, with_start

    windows = corpus_windows(tiny_lm.tokenizer, [CORPUS], window=8, heldout_windows=12, seed=0).heldout
    probe = Probe(tiny_lm.model, [f"sae={folder}#1"])
    values = probe.maps(probe(input_ids=with_start(windows, 0), keep_activations=True).activations)[0][:, 1:]
    assert first["frac_nonzero"] == pytest.approx(float((values > 0).float().mean()), abs=1e-3)
    assert sum(first["freq_hist_data_bar_heights"]) == int((values > 0).sum())
    # maxima windows first (the top group), then the dreamed prompts, marked
    kinds = [(a["bin_min"], a["bin_contains"]) for a in first["activations"]]
    assert kinds == [(-1, -1)] * 2 + [(DREAMED, DREAMED)] * 2
    record = records[1]
    assert first["activations"][0]["values"] == pytest.approx(record["maxima"][0]["token_activations"], abs=1e-3)
    best = max(record["frontier"], key=lambda p: p["activation"])
    dreamed = first["activations"][2]
    assert dreamed["values"][-1] == pytest.approx(best["activation"], abs=1e-3) == dreamed["bin_max"]
    assert dreamed["tokens"] == [tiny_lm.tokenizer.decode([t]) for t in best["token_ids"]]  # the start token dropped
    notes = json.loads((tmp_path / "np" / by_set["res-test"].folder_name / "dreamy.json").read_text())
    assert notes["dreamed"]["1"][0]["activation_index"] == 2 and notes["dreamed"]["1"][0]["text"] == best["text"]
    assert [n["target"] for n in notes["not_exported"]] == ["logits:3", "model.layers.0:2"]
    neuron = json.loads((tmp_path / "np" / by_set["mlp.down_proj-in-neurons"].folder_name / "batch-0.json").read_text())["features"][0]
    assert neuron["feature_index"] == 5 and neuron["neuron_alignment_indices"][0] == 5
    assert neuron["correlated_neurons_indices"][0] == 5 and neuron["correlated_neurons_pearson"][0] == pytest.approx(1.0)


def test_batches_hold_128_features_in_index_order():
    from dreamy.sae.neuronpedia import NeuronpediaSource

    source = NeuronpediaSource("m", 2, "s", "x", [{"feature_index": i} for i in reversed(range(300))])
    batches = source.batches()
    assert [len(b["features"]) for b in batches] == [128, 128, 44]
    assert batches[1]["features"][0]["feature_index"] == 128


def test_dream_export_writes_the_folder_and_refuses_what_it_cannot_read(tiny_lm, sae_folder, tmp_path, capsys):
    folder, _ = sae_folder
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    corpus = tmp_path / "toy.txt"
    corpus.write_text(CORPUS.text)
    (run_dir / "results.json").write_text(json.dumps({"run": {"model": "tiny:lm", "kind": "prompt", "format": 2},
                                                      "records": _records(tiny_lm, folder)}))
    assert main(["export", "--neuronpedia", str(tmp_path / "np"), str(run_dir), "--dataset", str(corpus),
                 "--windows", "8", "--window", "8"]) == 0
    out = capsys.readouterr().out
    assert "3 feature(s) of 2 source(s) written for Neuronpedia" in out and "not exported: logits:3" in out
    for batch_file in (tmp_path / "np").glob("*/batch-0.json"):
        validate_batch(json.loads(batch_file.read_text()))
    assert main(["export", "--neuronpedia", str(tmp_path / "np2"), str(tmp_path)]) == 2
    assert "holds no results.json" in capsys.readouterr().err
    (run_dir / "results.json").write_text(json.dumps({"run": {"model": "tiny:cnn", "kind": "image"}, "records": []}))
    assert main(["export", "--neuronpedia", str(tmp_path / "np3"), str(run_dir)]) == 2
    assert "is an image run" in capsys.readouterr().err


# ---- issue 41: one export folder never holds two runs; a run still writing is not exported ------------------


DREAM = [sys.executable, "-m", "dreamy"]


def _run_dir(path, loaded, folder):
    path.mkdir()
    (path / "results.json").write_text(json.dumps({"run": {"model": "tiny:lm", "kind": "prompt", "format": 2,
                                                           "fingerprint": "f" * 16}, "records": _records(loaded, folder)}))
    return path


def _export(out, run_dir, corpus):
    return ["export", "--neuronpedia", str(out), str(run_dir), "--dataset", str(corpus), "--windows", "8", "--window", "8"]


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(done, words):
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("dream: error:"), done.stderr
    assert words in err, err


def test_reexporting_a_run_replaces_its_export_and_another_runs_is_refused(tiny_lm, sae_folder, tmp_path, capsys):
    corpus = tmp_path / "toy.txt"
    corpus.write_text(CORPUS.text)
    first = _run_dir(tmp_path / "run", tiny_lm, sae_folder[0])
    out = tmp_path / "np"
    assert main(_export(out, first, corpus)) == 0
    sources = sorted(p.name for p in out.iterdir())
    stale = out / sources[0] / "batch-1.json"  # as a bigger export of this run left it
    stale.write_text("{}")
    (out / "gone-source").mkdir()
    (out / "gone-source" / "dreamy.json").write_text(json.dumps({"run": {"run_dir": str(first), "fingerprint": "f" * 16}}))
    assert main(_export(out, first, corpus)) == 0
    assert sorted(p.name for p in out.iterdir()) == sources and not stale.exists()
    capsys.readouterr()
    before = _files(out)
    second = _run_dir(tmp_path / "other", tiny_lm, sae_folder[0])
    _one_line(subprocess.run(DREAM + _export(out, second, corpus), capture_output=True, text=True, timeout=120),
              "holds the export of another run")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    _one_line(subprocess.run(DREAM + _export(tmp_path / "mine", second, corpus), capture_output=True, text=True,
                             timeout=120), "holds files that are not a dreamy Neuronpedia export ('notes.txt')")
    assert _files(out) == before and _files(tmp_path / "mine") == {"notes.txt": b"mine"}


def test_a_run_still_writing_its_folder_is_not_exported(tiny_lm, sae_folder, tmp_path):
    corpus = tmp_path / "toy.txt"
    corpus.write_text(CORPUS.text)
    run_dir = _run_dir(tmp_path / "run", tiny_lm, sae_folder[0])
    code = ("import sys, time; from dreamy.runs.store import run_lock\n"
            "with run_lock(sys.argv[1], 'dream prompt --out run'):\n    print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = subprocess.run(DREAM + _export(tmp_path / "np", run_dir, corpus), capture_output=True, text=True, timeout=120)
        _one_line(done, "is unfinished: a run is still writing it (pid")
        assert "dream prompt --out run" in done.stderr and not (tmp_path / "np").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_run_made_with_maxima_from_a_file_exports_without_dataset(tiny_lm, sae_folder, tmp_path, capsys):
    from dreamy.datasets import open_text

    corpus = tmp_path / "my corpus.txt"
    corpus.write_text(CORPUS.text)
    run_dir = _run_dir(tmp_path / "run", tiny_lm, sae_folder[0])
    saved = json.loads((run_dir / "results.json").read_text())
    for record in saved["records"]:
        if "maxima_dataset" in record:
            record["maxima_dataset"] = f"{open_text(str(corpus)).name}@8tok"  # what `--maxima FILE` records
    (run_dir / "results.json").write_text(json.dumps(saved))
    assert main(["export", "--neuronpedia", str(tmp_path / "np"), str(run_dir), "--windows", "8"]) == 0
    batch = json.loads(next((tmp_path / "np").glob("*/batch-0.json")).read_text())
    assert batch["features"][0]["dataset"].startswith("file:") and batch["features"][0]["n_tokens_in_prompt"] == 8


@pytest.mark.parametrize("case, words", [
    ("no maxima", "holds no dataset maxima to compute the statistics on; give --dataset"),
    ("window", "--window 1000 tokens (and the start token) is longer than the 256 positions tiny:lm was made for"),
    ("record log", "(line 1: expected {\"records\": [...]}); repair or delete that line of the record log"),
    ("gone file", "the run's maxima were found in '/no/such/file.txt', which no longer exists; give --dataset"),
])
def test_export_refusals_are_one_line_and_name_what_the_user_can_do(tiny_lm, sae_folder, tmp_path, case, words):
    corpus = tmp_path / "toy.txt"
    corpus.write_text(CORPUS.text)
    run_dir = _run_dir(tmp_path / "run", tiny_lm, sae_folder[0])
    argv = ["export", "--neuronpedia", str(tmp_path / "np"), str(run_dir), "--windows", "8"]
    saved = json.loads((run_dir / "results.json").read_text())
    if case == "no maxima":
        for record in saved["records"]:
            record.pop("maxima", None), record.pop("maxima_dataset", None)
    elif case == "window":
        argv += ["--dataset", str(corpus), "--window", "1000"]
    elif case == "record log":
        (run_dir / "records.jsonl").write_text('{"not": "ours"}\n')
        argv += ["--dataset", str(corpus)]
    else:
        for record in saved["records"]:
            if "maxima_dataset" in record:
                record["maxima_dataset"] = "file:/no/such/file.txt#0123abcd@6tok"
    (run_dir / "results.json").write_text(json.dumps(saved))
    done = subprocess.run(DREAM + argv, capture_output=True, text=True, timeout=120)
    _one_line(done, words)
    assert "--overwrite" not in done.stderr and not (tmp_path / "np").exists()
