"""Helpers for the benchmark smoke tests: run a script's main() in-process with given arguments."""

import importlib
import json
import sys

import pytest


@pytest.fixture
def run_script(monkeypatch, tmp_path):
    """Run `benchmarks.NAME` with `args` (plus --results-dir tmp) and return its parsed JSON result."""

    def run(name, *args, result=None):
        module = importlib.import_module(f"benchmarks.{name}")
        monkeypatch.setattr(sys, "argv", [f"benchmarks/{name}.py", *args, "--results-dir", str(tmp_path)])
        module.main()
        path = tmp_path / f"{result or name}.json"
        assert path.exists(), f"{name} wrote no {path.name}"
        record = json.loads(path.read_text())
        assert {"command", "machine", "date", "figures"} <= set(record)
        assert record["machine"]["cpu_count"] and record["machine"]["torch_version"]
        return record

    return run


@pytest.fixture
def fake_reference():
    """A stand-in for the reference EPO module (`load_reference`'s answer) when it is not fetched: its `epo`
    takes the reference's arguments, scores random token ids through the given `cache_run`, gives them made-up
    cross-entropies from 2 to 8, and records its keyword arguments in `calls`."""
    from types import SimpleNamespace

    import torch

    calls = []

    def epo(run, model, tokenizer, *, seq_len, population_size, iters, explore_per_pop, seed, topk, callback):
        calls.append({"seq_len": seq_len, "population_size": population_size, "iters": iters,
                      "explore_per_pop": explore_per_pop, "seed": seed, "topk": topk})
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(model.get_input_embeddings().weight.shape[0], (iters, population_size, seq_len), generator=gen)
        target = run(input_ids=ids.reshape(-1, seq_len).to(model.device))["target"].reshape(iters, population_size)
        return SimpleNamespace(ids=ids, target=target, xentropy=torch.linspace(2, 8, iters * population_size).reshape(iters, -1))

    return SimpleNamespace(epo=epo, calls=calls)
