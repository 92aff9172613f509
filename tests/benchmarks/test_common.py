"""Tests for benchmarks/common.py: what every benchmark script relies on."""

import json
import time

import pytest
import torch

from benchmarks import common


def test_write_result_records_command_machine_date_settings_and_figures(tmp_path):
    started = time.perf_counter()
    path = common.write_result("demo", {"value": torch.tensor(2.5), "nan": float("nan")}, settings={"k": 3},
                               results_dir=tmp_path, started=started)
    elapsed = time.perf_counter() - started
    record = json.loads(path.read_text())
    assert record["figures"] == {"value": 2.5, "nan": None}
    assert record["settings"] == {"k": 3} and record["command"].startswith("python")
    assert record["machine"]["device"] == "cpu" and record["machine"]["cpu_count"] >= 1
    assert "T" in record["date"] and 0 < record["seconds"] <= elapsed
    assert [p.name for p in tmp_path.iterdir()] == ["demo.json"]


def test_format_table_aligns_columns_and_formats_numbers():
    text = common.format_table([{"a": 1.0, "b": "x"}, {"a": 123456.0, "b": None, "c": True}])
    lines = text.splitlines()
    assert lines[0].split(" | ") == ["a        ", "b", "c"] or lines[0].startswith("a")
    assert "1.235e+05" in text and " - " in text and "yes" in text
    assert len({len(line.split("|")) for line in lines}) == 1


def test_count_flops_counts_a_linear_layer_exactly():
    layer = torch.nn.Linear(8, 4, bias=False)
    assert common.count_flops(lambda: layer(torch.ones(3, 8))) == 2 * 3 * 8 * 4


def test_matmul_peak_and_timing_are_positive():
    peak = common.measure_matmul_peak((32, 64), seconds=0.02)
    assert peak["peak_gflops"] == max(peak["gflops_by_size"].values()) > 0
    timed = common.time_call(lambda: sum(range(100)), repeats=3)
    assert timed["min_s"] <= timed["median_s"] and timed["repeats"] == 3


def test_blocks_and_neurons_of_the_tiny_models(tiny_cnn, tiny_lm):
    assert common.block_paths(tiny_cnn.model) == ["conv1", "conv2", "conv3", "pool", "head"]
    assert common.block_paths(tiny_lm.model) == ["model.layers.0", "model.layers.1"]
    neurons = common.mlp_neuron_targets(tiny_lm.model, fractions=(0.0, 0.99))
    assert [n.split(".mlp")[0] for n in neurons] == ["model.layers.0", "model.layers.1"]
    assert neurons == common.mlp_neuron_targets(tiny_lm.model, fractions=(0.0, 0.99))  # seeded


def test_parser_defaults_to_quick():
    args = common.parser("x").parse_args([])
    assert not args.full
    with pytest.raises(SystemExit):
        common.parser("x").parse_args(["--quick", "--full"])
