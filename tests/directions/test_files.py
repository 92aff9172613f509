"""dreamy/directions/files.py: the direction file reads back through the target grammar; the sidecar says how."""

import json

import pytest
import torch

from dreamy.directions import direction_from_examples, read_sidecar, save_direction, site_features
from dreamy.directions.files import write_direction
from dreamy.targets import Probe

GOOD = ["I loved it.", "What a joy.", "Great fun.", "So good."]
BAD = ["I hated it.", "What a bore.", "Awful mess.", "So bad."]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_the_saved_direction_scores_as_a_target(tiny_lm, tmp_path, suffix):
    result = direction_from_examples(tiny_lm, "model.layers.1", GOOD, BAD, heldout=0.0, reduce="pos=-1")
    path, sidecar = result.save(tmp_path / f"mood{suffix}")
    features = site_features(tiny_lm, "model.layers.1", GOOD, reduce="pos=-1")
    probe = Probe(tiny_lm.model, [result.spec(path, m) for m in result.methods], sequence_reduce="pos=-1")
    from dreamy.directions.examples import token_rows

    for i, row in enumerate(token_rows(tiny_lm, GOOD)):
        with torch.no_grad():
            scores = probe(input_ids=torch.tensor([row])).scores[0]
        for j, method in enumerate(result.methods):
            assert float(scores[j]) == pytest.approx(float(features[i] @ result.directions[method]), rel=1e-4, abs=1e-5)
    side = json.loads(sidecar.read_text())
    assert side["model"] == "tiny:lm" and side["site"] == "model.layers.1" and side["reduce"] == "pos=-1"
    assert side["methods"]["logistic"]["train_accuracy"] == result.train_accuracy["logistic"]
    assert side["cosines"] == pytest.approx(result.cosines)
    assert side["specs"]["pca"] == result.spec(path, "pca")
    assert side["counts"]["positive"] == 4 and side["settings"]["reduce"] == "pos=-1"
    assert read_sidecar(path) == side


def test_a_bad_file_name_is_refused_before_writing(tmp_path, tiny_lm):
    result = direction_from_examples(tiny_lm, "model.layers.1", GOOD, BAD, heldout=0.0, methods=("mean_diff",))
    with pytest.raises(ValueError, match="must end in .pt or .safetensors"):
        save_direction(result, tmp_path / "x.npy")
    with pytest.raises(ValueError, match="must end in .pt or .safetensors"):
        write_direction(result.directions, {}, tmp_path / "x.json")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="no 'pca' direction was learned"):
        result.spec(tmp_path / "x.pt", "pca")


@pytest.mark.parametrize("content, words", [(b'{"site": ', "cannot be read as JSON"), (b"\xff\xfe\x00", "cannot be read as JSON"),
                                            (b"[1, 2]", "is not a JSON object")])
def test_a_corrupt_sidecar_is_one_line_naming_the_file(tmp_path, content, words):
    path = tmp_path / "d.pt"
    path.write_bytes(b"")
    (tmp_path / "d.pt.json").write_bytes(content)
    with pytest.raises(ValueError, match=words) as caught:
        read_sidecar(path)
    assert str(tmp_path / "d.pt.json") in str(caught.value) and len(str(caught.value).splitlines()) == 1
