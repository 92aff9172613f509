"""dreamy/sae/files.py and dreamy/targets/saelens.py: the SAELens layout, written and read back; bad folders."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dreamy.sae import load, save
from dreamy.targets import TargetError
from tests.sae.helpers import small_sae


@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "topk"])
def test_round_trip_keeps_tensors_settings_and_encoding(tmp_path, architecture):
    sae = small_sae(architecture, apply_b_dec_to_input=architecture != "relu")
    save(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["d_in"] == 4 and cfg["d_sae"] == 6 and cfg["architecture"] == architecture
    assert cfg["hook_name"] == "0" and cfg["model_name"] == "test"
    assert cfg["apply_b_dec_to_input"] == (architecture != "relu")
    assert ("k" in cfg) == (architecture == "topk")
    stored = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert stored["W_enc"].shape == (4, 6) and stored["W_dec"].shape == (6, 4)
    assert stored["b_enc"].shape == (6,) and stored["b_dec"].shape == (4,)
    assert ("threshold" in stored) == (architecture == "jumprelu")
    again = load(tmp_path)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(again, name), getattr(sae, name))
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.encode(x), sae.encode(x))
    assert again.k == sae.k and again.apply_b_dec_to_input == sae.apply_b_dec_to_input


def test_standard_architecture_reads_as_relu_and_b_dec_default_applies(tmp_path):
    sae = small_sae("relu")
    save(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["architecture"] = "standard"
    del cfg["apply_b_dec_to_input"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    again = load(tmp_path)
    assert again.architecture == "relu" and again.apply_b_dec_to_input is True


def _write(folder, cfg, tensors):
    folder.mkdir(exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae_weights.safetensors"))


GOOD = {"W_enc": torch.zeros(4, 6), "b_enc": torch.zeros(6), "W_dec": torch.zeros(6, 4), "b_dec": torch.zeros(4)}


@pytest.mark.parametrize("cfg, tensors, message", [
    ({"d_in": 4, "d_sae": 6, "architecture": "relu"}, {**GOOD, "W_enc": torch.zeros(6, 4)}, r"W_enc has shape \[6, 4\]; expected \[4, 6\]"),
    ({"d_in": 4, "d_sae": 6, "architecture": "relu"}, {k: v for k, v in GOOD.items() if k != "b_dec"}, r"lacks b_dec \(expected shape \[4\]\)"),
    ({"d_in": 4, "d_sae": 6, "architecture": "jumprelu"}, GOOD, r"lacks threshold \(expected shape \[6\]\)"),
    ({"d_in": 4, "d_sae": 6, "architecture": "topk"}, GOOD, r"needs k in 1..d_sae=6"),
    ({"d_in": 4, "d_sae": 6, "architecture": "gated"}, GOOD, r"architecture 'gated' is not one of"),
    ({"d_sae": 6}, GOOD, r"d_in must be a positive integer"),
    ({"d_in": 4, "d_sae": 6, "apply_b_dec_to_input": "yes"}, GOOD, r"apply_b_dec_to_input must be true or false"),
])
def test_bad_folders_give_one_line_errors_naming_the_file(tmp_path, cfg, tensors, message):
    folder = tmp_path / "sae"
    _write(folder, cfg, tensors)
    with pytest.raises(TargetError, match=message) as caught:
        load(folder)
    assert "\n" not in str(caught.value) and str(folder) in str(caught.value)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(TargetError, match="has no cfg.json"):
        load(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 6}))
    with pytest.raises(TargetError, match="has no sae_weights.safetensors"):
        load(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(TargetError, match="cannot read .*cfg.json.* as JSON"):
        load(tmp_path)
