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


def test_parse_sets_threads_and_reads_seeds():
    before = torch.get_num_threads()
    try:
        args = common.parse(common.parser("x", threads=True, seeds=True), ["--threads", "1", "--seeds", "3,1"])
        assert torch.get_num_threads() == 1 and args.seeds == [3, 1]
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        common.parser("x", seeds=True).parse_args(["--seeds", "0,one"])


def test_config_of_applies_set_values_over_the_base_and_refuses_names_the_config_lacks():
    from dreamy.language import EPOConfig

    made = common.parser("x", config=EPOConfig)
    args = made.parse_args(["--set", "topk=64", "--set", "fluency_weight_range=0.3,30", "--set", "restart_every=None",
                            "--set", "init=the cat"])
    config = common.config_of(EPOConfig, args.sets, iters=30, topk=8)
    assert (config.iters, config.topk, config.fluency_weight_range, config.restart_every, config.init) == \
        (30, 64, (0.3, 30.0), None, "the cat")
    with pytest.raises(SystemExit, match="did you mean 'topk'"):
        common.config_of(EPOConfig, ["topc=64"])
    with pytest.raises(SystemExit, match="it is called 'children' now"):
        common.config_of(EPOConfig, ["children_per_member=4"])
    with pytest.raises(SystemExit, match="population"):
        common.config_of(EPOConfig, ["population=0"])
    with pytest.raises(SystemExit, match="give KEY=VALUE"):
        common.config_of(EPOConfig, ["=4"])


def test_random_llama_has_the_shape_and_the_tokenizers_vocabulary(tiny_lm):
    loaded = common.random_llama("llama-tiny-shape", tiny_lm.tokenizer)
    assert len(loaded.model.model.layers) == 2 and loaded.model.config.hidden_size == 64
    assert loaded.model.get_input_embeddings().weight.shape[0] == len(tiny_lm.tokenizer) and loaded.kind == "language"
    again = common.random_llama("llama-tiny-shape", tiny_lm.tokenizer)
    assert torch.equal(loaded.model.lm_head.weight, again.model.lm_head.weight)  # seeded
