"""benchmarks/matmul_peak.py runs and writes its JSON."""


def test_matmul_peak_runs(run_script):
    record = run_script("matmul_peak")
    assert record["figures"]["peak_gflops"] > 0
