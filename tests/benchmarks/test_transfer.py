"""benchmarks/transfer.py runs (tiny:cnn dreams judged by tiny:cnn itself, 3 classes, 2 steps, 32 px)."""

import importlib.util
import statistics

import pytest

HAS_LUCENT = importlib.util.find_spec("lucent") is not None


def test_transfer_runs_small(run_script):
    record = run_script("transfer", "--model", "tiny:cnn", "--judge", "tiny:cnn", "--classes", "3", "--steps", "2",
                        "--size", "32", "--params", "fourier,dip,decoder")
    rows = record["figures"]["rows"]
    assert [r["method"] for r in rows][:3] == ["fourier", "dip", "decoder"]
    assert len(rows) == 3 + HAS_LUCENT and record["settings"]["classes"] == sorted(record["settings"]["classes"])
    for row in rows:
        judged = row["judged"]["tiny:cnn"]
        assert len(judged["per_class"]) == 3
        assert row["top1 cnn"] == statistics.fmean(c["rank"] == 1 for c in judged["per_class"])
        assert row["top5 cnn"] == statistics.fmean(c["rank"] <= 5 for c in judged["per_class"])
        assert row["p cnn"] == pytest.approx(statistics.fmean(c["p"] for c in judged["per_class"]))
        assert row["p judges"] == row["p cnn"] and row["s/class"] == pytest.approx(row["seconds"] / 3)
