"""`dream direction` (dreamy/cli/direction.py): texts on tiny:lm, image folders on tiny:cnn, bad arguments."""

import json

import pytest
import torch
from PIL import Image

from dreamy import cli
from dreamy.directions import site_features

GOOD = ["I loved it.", "What a joy.", "Great fun.", "So good.", "Very nice.", "A delight.", "Truly great.", "Wonderful."]
BAD = ["I hated it.", "What a bore.", "Awful mess.", "So bad.", "Very vile.", "A disaster.", "Truly awful.", "Dreadful."]


@pytest.fixture
def texts(tmp_path):
    (tmp_path / "good.txt").write_text("\n".join(GOOD) + "\n")
    (tmp_path / "bad.txt").write_text("\n".join(BAD) + "\n")
    return tmp_path / "good.txt", tmp_path / "bad.txt"


def test_texts_give_a_direction_file_the_target_grammar_reads(texts, tmp_path, capsys, tiny_lm):
    good, bad = texts
    out = tmp_path / "mood.pt"
    argv = ["direction", "--model", "tiny:lm", "--positive", str(good), "--negative", str(bad), "--site", "model.layers.1",
            "--out", str(out), "--reduce", "pos=-1", "--heldout", "0.25"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    for method in ("logistic", "mean_diff", "pca"):
        assert f"-> model.layers.1:dir='{out}'#{method}" in printed  # quoted: the path holds a dash
    saved = torch.load(out)
    side = json.loads((tmp_path / "mood.pt.json").read_text())
    assert side["sources"] == {"positive": str(good), "negative": str(bad)}
    assert side["counts"]["heldout_pairs"] == 2 and side["reduce"] == "pos=-1"
    # the mean-difference direction is the normalized difference of the fitted pairs' mean features
    features = site_features(tiny_lm, "model.layers.1", GOOD, reduce="pos=-1") - \
        site_features(tiny_lm, "model.layers.1", BAD, reduce="pos=-1")
    from dreamy.directions.learn import split_indices

    fitted, _ = split_indices(8, 0.25, torch.Generator().manual_seed(0))
    expected = torch.nn.functional.normalize(features[fitted].mean(dim=0), dim=0)
    assert torch.allclose(saved["mean_diff"], expected, atol=1e-5)
    assert f"cosines: logistic/mean_diff {side['cosines']['logistic/mean_diff']:.3f}" in printed


def test_image_folders_on_a_vision_model(tmp_path, capsys):
    gen = torch.Generator().manual_seed(0)
    for name, channel in (("red", 0), ("blue", 2)):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(6):
            pixels = (torch.rand(32, 32, 3, generator=gen) * 80).to(torch.uint8)
            pixels[..., channel] += 170
            Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    (tmp_path / "extra").mkdir()
    for i in range(3):
        Image.fromarray((torch.rand(32, 32, 3, generator=gen) * 255).to(torch.uint8).numpy()).save(tmp_path / "extra" / f"{i}.png")
    out = tmp_path / "red.safetensors"
    assert cli.main(["direction", "--model", "tiny:cnn", "--positive", str(tmp_path / "red"), "--negative",
                     str(tmp_path / "blue"), "--site", "conv3", "--out", str(out), "--method", "mean_diff"]) == 0
    printed = capsys.readouterr().out
    assert "mean_diff  held-out accuracy 1.000" in printed
    from safetensors.torch import load_file

    assert list(load_file(out)) == ["mean_diff"] and load_file(out)["mean_diff"].shape == (32,)
    # unpaired sets: pca is left out without --method, refused with it
    assert cli.main(["direction", "--model", "tiny:cnn", "--positive", str(tmp_path / "red"), "--negative",
                     str(tmp_path / "extra"), "--site", "conv3", "--out", str(tmp_path / "u.pt"), "--heldout", "0"]) == 0
    assert sorted(torch.load(tmp_path / "u.pt")) == ["logistic", "mean_diff"]
    assert cli.main(["direction", "--model", "tiny:cnn", "--positive", str(tmp_path / "red"), "--negative",
                     str(tmp_path / "extra"), "--site", "conv3", "--out", str(tmp_path / "v.pt"), "--method", "pca"]) == 2
    assert "--method pca needs paired sets" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--out", "x.npy"], "must end in .pt or .safetensors"),
    (["--site", "model.layers.1:3"], "--site: site 'model.layers.1:3' must be a bare site"),
    (["--model", "tiny:cnn"], "is a vision model but the examples are texts"),
    (["--heldout", "1.5"], "--heldout is a share of the examples"),
    (["--reduce", "last"], "--reduce must be None, one of"),
    (["--heldout-positive", "x.txt"], "give both --heldout-positive and --heldout-negative"),
    (["--site", "model.layers.9"], "--site: unknown site 'model.layers.9'"),
])
def test_bad_arguments_are_one_line_and_exit_2(texts, tmp_path, capsys, extra, message):
    good, bad = texts
    argv = ["direction", "--model", "tiny:lm", "--positive", str(good), "--negative", str(bad), "--site", "model.layers.1",
            "--out", str(tmp_path / "d.pt")]
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d.pt").exists()
