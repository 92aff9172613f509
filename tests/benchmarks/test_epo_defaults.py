"""benchmarks/epo_defaults.py: settings read through EPOConfig.build, and a one-neuron sweep on tiny:lm."""

import pytest

from benchmarks import epo_defaults


def test_settings_are_checked_by_the_config():
    assert epo_defaults.parse_setting("fluency_weight_range=0.3,30,topk=16") == {
        "fluency_weight_range": (0.3, 30.0), "topk": 16}
    with pytest.raises(SystemExit, match="--settings: .*did you mean 'topk'"):
        epo_defaults.parse_setting("topc=16")
    with pytest.raises(SystemExit, match="it is called 'fluency_weight_range' now"):
        epo_defaults.parse_setting("lambda_range=0.3,30")


def test_a_sweep_of_two_settings_on_one_neuron(run_script):
    record = run_script("epo_defaults", "--model", "tiny:lm", "--settings", "topk=4;topk=8,n_swaps=2", "--iters", "1",
                        "--neurons", "1")
    rows = record["figures"]["rows"]
    assert [row["setting"] for row in rows] == ["topk=4", "topk=8,n_swaps=2"] and record["figures"]["best"] in ("topk=4", "topk=8,n_swaps=2")
    assert all(len(row["neurons"]) == 1 and row["s_per_iter"] > 0 for row in rows)
