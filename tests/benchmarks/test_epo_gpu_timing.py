"""benchmarks/epo_gpu_timing.py times both sides on a tiny random-init Llama, on the CPU (the real reference when
fetched, else a stand-in)."""

import os
from pathlib import Path

import pytest

from benchmarks import epo_gpu_timing

REFERENCE = os.environ.get("DREAMY_REFERENCE_SRC", "/tmp/dreamy-ref")
TINY = ["--device", "cpu", "--model", "tiny:lm", "--shapes", "llama-tiny-shape", "--iters", "1", "--set", "children=4"]


def test_timing_rows_per_scoring_with_launch_counts(run_script, fake_reference, monkeypatch):
    monkeypatch.setattr(epo_gpu_timing, "load_reference", lambda src: fake_reference)
    record = run_script("epo_gpu_timing", "--reference-src", "stand-in", *TINY, "--scoring", "packed,full",
                        "--profile-launches")
    rows = record["figures"]["rows"]
    assert [row["scoring"] for row in rows] == ["packed", "full"]
    assert all(row["model"] == "random-init llama-tiny-shape" and row["iters"] == 1 for row in rows)
    assert all(row["ours_s_per_iter"] > 0 and row["reference_s_per_iter"] > 0 and row["ours_loop_s_per_iter"] > 0
               for row in rows)
    assert rows[0]["syncs_per_iter"] <= 4 * 8 and "reference_launches_per_iter" in rows[0]
    # the reference ran at our budget: warm-up (2), timed (1), profiled (1 and 3 iterations)
    assert [(c["iters"], c["explore_per_pop"], c["population_size"]) for c in fake_reference.calls] == \
        [(2, 4, 8), (1, 4, 8), (1, 4, 8), (3, 4, 8)]
    assert record["settings"]["epo"]["children"] == 4 and record["settings"]["epo"]["iters"] == 1


@pytest.mark.skipif(not (Path(REFERENCE) / "dreamy" / "epo.py").exists(), reason="no reference EPO")
def test_timing_runs_the_real_reference_on_a_tiny_shape(run_script):
    rows = run_script("epo_gpu_timing", "--reference-src", REFERENCE, *TINY)["figures"]["rows"]
    assert [row["scoring"] for row in rows] == ["auto"] and rows[0]["reference_s_per_iter"] > 0


def test_timing_refuses_an_unknown_shape_or_setting_and_skips_without_cuda(monkeypatch, capsys, tmp_path):
    with pytest.raises(SystemExit, match="no shape 'llama-7b'"):
        epo_gpu_timing.main(["--shapes", "llama-7b", "--results-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="did you mean 'children'"):
        epo_gpu_timing.main(["--set", "childern=4", "--results-dir", str(tmp_path)])
    monkeypatch.setattr(epo_gpu_timing.torch.cuda, "is_available", lambda: False)
    epo_gpu_timing.main(["--reference-src", "x", "--results-dir", str(tmp_path)])
    assert "skipped: no CUDA device" in capsys.readouterr().out and not list(tmp_path.iterdir())
