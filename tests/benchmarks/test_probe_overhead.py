"""benchmarks/probe_overhead.py runs on the tiny models."""


def test_probe_overhead_runs_on_tiny_models(run_script):
    rows = run_script("probe_overhead", "--model", "tiny:cnn", "--model", "tiny:lm")["figures"]["rows"]
    assert {r["model"] for r in rows} == {"tiny:cnn", "tiny:lm"}
    cnn = [r for r in rows if r["model"] == "tiny:cnn"]
    assert len(cnn) == 6 and cnn[0]["probe"].startswith("none")
    early = [r for r in cnn if "early exit" in r["probe"]]
    assert early[0]["FLOP saving"] > 0.5  # conv1 of tiny:cnn skips most of the network
    assert early[-1]["FLOP saving"] < early[0]["FLOP saving"]
