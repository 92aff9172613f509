"""benchmarks/many_targets.py runs on the tiny CNN."""


def test_many_targets_runs_on_tiny_cnn(run_script):
    record = run_script("many_targets", "--model", "tiny:cnn", "--site", "conv3", "--targets", "2", "--steps", "2", "--size", "32")
    assert record["figures"]
