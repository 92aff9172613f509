"""Run folders written before method configs: `--resume` reads them as the configs they meant, or says why not."""

import json

import pytest

from dreamy.cli import main
from dreamy.runs.store import OutDirError, comparable_run, prepare_out_dir, run_info_of
from dreamy.vision import DreamConfig

# what `dream image --model tiny:cnn --steps 4 --target head:1` wrote before configs
OLD_IMAGE_RUN = {"model": "tiny:cnn", "kind": "image", "seed": 0, "fingerprint": "0123456789abcdef",
                 "settings": {"steps": 4, "param": "fourier", "lr": 0.05, "n_per_target": 1, "diversity": 0.0,
                              "regularizers": {}}}


def _old_folder(tmp_path, run):
    out = tmp_path / "old"
    out.mkdir()
    record = {"kind": "image", "target": "head:1", "model": "tiny:cnn", "method": "fourier", "activation": 1.0,
              "images": [], "settings": {}, "seed": 0}
    (out / "results.json").write_text(json.dumps({"run": run, "records": [record]}))
    return out


def test_an_old_run_resumes_with_the_same_flags_and_is_refused_with_others(tmp_path, capsys):
    out = _old_folder(tmp_path, OLD_IMAGE_RUN)
    base = ["image", "--model", "tiny:cnn", "--target", "head:1", "--target", "head:2", "--out", str(out), "--quiet"]
    assert main(base + ["--steps", "5", "--resume"]) == 2
    assert "steps: 4 there, 5 now" in capsys.readouterr().err
    assert main(base + ["--steps", "4", "--resume"]) == 0
    saved = json.loads((out / "results.json").read_text())
    by_target = {r["target"]: r for r in saved["records"]}
    assert sorted(by_target) == ["head:1", "head:2"] and by_target["head:1"]["activation"] == 1.0  # kept, not redone
    assert saved["run"]["format"] == 2 and saved["run"]["settings"]["steps"] == 4


def test_old_settings_no_config_has_are_refused_saying_why(tmp_path):
    run = {**OLD_IMAGE_RUN, "settings": {"steps": 4, "wobble": 1}}
    with pytest.raises(OutDirError, match="older dreamy whose settings this version cannot read.*'wobble'"):
        prepare_out_dir(_old_folder(tmp_path, run), run_info_of("tiny:cnn", DreamConfig(steps=4)), resume=True)


def test_old_prompt_settings_use_the_new_names():
    old = {"model": "tiny:lm", "kind": "prompt", "seed": 2, "settings": {"method": "epo", "n_tokens": 10, "iters": 50,
           "prefix": "", "suffix": "", "population": 6, "children_per_member": 32, "describe": False}}
    settings = comparable_run(old)["settings"]
    assert settings["children"] == 32 and settings["population"] == 6 and settings["describe"] is False
