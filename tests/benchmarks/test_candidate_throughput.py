"""benchmarks/candidate_throughput.py runs on tiny:lm, and its four scorers agree."""


def test_candidate_throughput_runs_small(run_script):
    figures = run_script("candidate_throughput", "--model", "tiny:lm", "--children", "16")["figures"]
    rows = {r["method"]: r for r in figures["rows"]}
    assert set(rows) == {"naive", "full", "kv packed", "kv grouped"}
    assert all(r["max |diff|"] < 1e-3 for r in rows.values())
    assert rows["kv grouped"]["GFLOP"] < rows["full"]["GFLOP"] < rows["naive"]["GFLOP"]  # reuse runs fewer FLOPs
    assert rows["kv packed"]["GFLOP"] < rows["full"]["GFLOP"]
