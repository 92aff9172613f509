"""benchmarks/matmul_peak.py runs and writes its JSON."""


def test_matmul_peak_runs(run_script):
    record = run_script("matmul_peak")
    fp32 = record["figures"]["float32"]
    assert [int(n) for n in fp32["gflops_by_size"]] == list(record["settings"]["sizes"])
    assert record["figures"]["peak_gflops"] == fp32["peak_gflops"] == max(fp32["gflops_by_size"].values()) > 0
