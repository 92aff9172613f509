"""dreamy/sae/files.py and dreamy/targets/saelens.py: the SAELens 6 layout, written and read back; bad folders."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from dreamy.sae import load, save
from dreamy.targets import TargetError
from tests.sae.helpers import small_sae

SAELENS_NAMES = {"relu": "standard"}


@pytest.mark.parametrize("architecture", ["relu", "jumprelu", "topk", "abstopk", "gated"])
def test_round_trip_keeps_tensors_settings_and_encoding(tmp_path, architecture):
    sae = small_sae(architecture, apply_b_dec_to_input=architecture != "relu")
    save(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["d_in"] == 4 and cfg["d_sae"] == 6 and cfg["architecture"] == SAELENS_NAMES.get(architecture, architecture)
    assert cfg["dtype"] == "float32" and cfg["normalize_activations"] == "none" and cfg["reshape_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == "0" and cfg["metadata"]["model_name"] == "test"
    assert cfg["metadata"]["sae_lens_version"] >= "6" and "hook_name" not in cfg
    assert cfg["apply_b_dec_to_input"] == (architecture != "relu")
    assert ("k" in cfg) == (architecture in ("topk", "abstopk"))
    stored = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert stored["W_enc"].shape == (4, 6) and stored["W_dec"].shape == (6, 4) and stored["b_dec"].shape == (4,)
    assert ("threshold" in stored) == (architecture == "jumprelu")
    assert ("b_enc" in stored) == (architecture != "gated") and ("b_gate" in stored) == (architecture == "gated")
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
    del cfg["apply_b_dec_to_input"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    again = load(tmp_path)
    assert again.architecture == "relu" and again.apply_b_dec_to_input is True


def test_folders_of_older_dreamy_and_pre_6_saelens_still_read(tmp_path):
    _write(tmp_path / "old", {"d_in": 4, "d_sae": 6, "architecture": "relu", "hook_name": "model.layers.1"}, GOOD)
    _write(tmp_path / "pre6", {"d_in": 4, "d_sae": 6, "hook_point": "blocks.1.hook_resid_pre",
                               "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}}, GOOD)
    old, pre6 = load(tmp_path / "old"), load(tmp_path / "pre6")
    assert old.architecture == "relu" and old.cfg["hook_name"] == "model.layers.1"
    assert pre6.architecture == "topk" and pre6.k == 3
    save(old, tmp_path / "again")  # written back in the SAELens 6 layout, the site moved under metadata
    cfg = json.loads((tmp_path / "again" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "model.layers.1" and "hook_name" not in cfg and cfg["architecture"] == "standard"


def test_metadata_and_top_level_keys_read_alike(tmp_path):
    from dreamy.targets.saelens import read_sae_folder

    _write(tmp_path / "a", {"d_in": 4, "d_sae": 6, "architecture": "standard", "dtype": "float32",
                            "metadata": {"hook_name": "blocks.2.hook_resid_post", "model_name": "m", "hook_head_index": None}}, GOOD)
    _write(tmp_path / "b", {"d_in": 4, "d_sae": 6, "hook_name": "blocks.2.hook_resid_post", "model_name": "m"}, GOOD)
    a, b = read_sae_folder(tmp_path / "a"), read_sae_folder(tmp_path / "b")
    assert a.hook_name == b.hook_name == "blocks.2.hook_resid_post" and a.model_name == b.model_name == "m"


def test_a_transcoder_reads_as_a_target_but_not_as_an_sae(tmp_path):
    from dreamy.targets.saelens import read_sae_folder

    tensors = {**GOOD, "W_dec": torch.zeros(6, 3), "b_dec": torch.zeros(3)}
    _write(tmp_path / "t", {"d_in": 4, "d_sae": 6, "d_out": 3, "architecture": "transcoder", "apply_b_dec_to_input": False}, tensors)
    assert read_sae_folder(tmp_path / "t").transcoder
    with pytest.raises(TargetError, match="transcoder .* writes another site"):
        load(tmp_path / "t")


def _write(folder, cfg, tensors):
    folder.mkdir(exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(folder / "sae_weights.safetensors"))


GOOD = {"W_enc": torch.zeros(4, 6), "b_enc": torch.zeros(6), "W_dec": torch.zeros(6, 4), "b_dec": torch.zeros(4)}


@pytest.mark.parametrize("cfg, tensors, message", [
    ({"d_in": 4, "d_sae": 6, "architecture": "relu"}, {**GOOD, "W_enc": torch.zeros(6, 4)}, r"W_enc has shape \[6, 4\]; expected \[4, 6\]"),
    ({"d_in": 4, "d_sae": 6, "architecture": "relu"}, {k: v for k, v in GOOD.items() if k != "b_dec"}, r"lacks b_dec \(expected shape \[4\]\)"),
    ({"d_in": 4, "d_sae": 6, "architecture": "jumprelu"}, GOOD, r"lacks threshold \(expected shape \[6\]\)"),
    ({"d_in": 4, "d_sae": 6, "architecture": "topk"}, GOOD, r"k must be in 1..6, got None"),
    ({"d_in": 4, "d_sae": 6, "architecture": "gated"}, GOOD, r"lacks b_mag \(expected shape \[6\]\)"),
    ({"d_in": 4, "d_sae": 6, "architecture": "matching_pursuit"}, GOOD, r"architecture 'matching_pursuit' is not read: .*no encoder"),
    ({"d_in": 4, "d_sae": 6, "architecture": "temporal"}, GOOD, r"architecture 'temporal' is not read: .*attends across positions"),
    ({"d_in": 4, "d_sae": 6, "architecture": "lorentz"}, GOOD, r"architecture 'lorentz' is not one of .*gated"),
    ({"d_in": 4, "d_sae": 6, "activation_fn_str": "tanh-relu"}, GOOD, r"activation_fn_str 'tanh-relu' is not read"),
    ({"d_in": 4, "d_sae": 6, "normalize_activations": "batch_norm"}, GOOD, r"normalize_activations 'batch_norm' is not one of none, constant_norm_rescale, layer_norm"),
    ({"d_in": 4, "d_sae": 6, "reshape_activations": "hook_q"}, GOOD, r"reshape_activations 'hook_q' is not one of none, hook_z"),
    ({"d_in": 4, "d_sae": 6, "dtype": "int8"}, GOOD, r"dtype 'int8' is not one of float32, float64, float16, bfloat16"),
    ({"d_in": 4, "d_sae": 6, "architecture": "transcoder", "d_out": 4}, GOOD, r"a transcoder cannot have apply_b_dec_to_input true"),
    ({"d_in": 4, "d_sae": 6}, {**GOOD, "scaling_factor": torch.full((6,), 2.0)}, r"scaling_factor that is not all ones"),
    ({"d_in": 4, "d_sae": 6, "metadata": []}, GOOD, r"metadata must be a JSON object"),
    ({"d_sae": 6}, GOOD, r"d_in must be a positive integer"),
    ({"d_in": 4, "d_sae": 6, "apply_b_dec_to_input": "yes"}, GOOD, r"apply_b_dec_to_input must be true or false"),
])
def test_bad_folders_give_one_line_errors_naming_the_file(tmp_path, cfg, tensors, message):
    folder = tmp_path / "sae"
    _write(folder, cfg, tensors)
    with pytest.raises(TargetError, match=message) as caught:
        load(folder)
    assert "\n" not in str(caught.value) and str(folder) in str(caught.value)


def test_identity_normalizations_read_as_saelens_does_with_one_warning(tmp_path, caplog):
    for mode in ("expected_average_only_in", "covariance_whitening"):
        _write(tmp_path / mode, {"d_in": 4, "d_sae": 6, "normalize_activations": mode}, GOOD)
        with caplog.at_level("WARNING"):
            assert load(tmp_path / mode).normalize_activations == "none"
            load(tmp_path / mode)
        assert sum(mode in r.getMessage() for r in caplog.records) == 1
        assert "does not hold" in caplog.records[-1].getMessage()


def test_missing_files_are_named(tmp_path):
    with pytest.raises(TargetError, match="has no cfg.json"):
        load(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 4, "d_sae": 6}))
    with pytest.raises(TargetError, match="has no sae_weights.safetensors"):
        load(tmp_path)
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(TargetError, match="cannot read .*cfg.json.* as JSON"):
        load(tmp_path)
