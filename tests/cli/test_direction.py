"""`dream direction` (dreamy/cli/direction.py): texts on tiny:lm, image folders on tiny:cnn, bad arguments."""

import json

import pytest
import torch
from PIL import Image

from dreamy import cli
from dreamy.directions import site_features
import subprocess
import sys

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


# ---- issue 41: nothing of a user's is overwritten ----------------------------------------------------------


DREAM = [sys.executable, "-m", "dreamy"]


@pytest.mark.parametrize("existing", ["d.pt", "d.pt.json"])
def test_an_existing_out_or_sidecar_is_refused_unless_overwrite(texts, tmp_path, existing):
    good, bad = texts
    mine = tmp_path / existing
    mine.write_bytes(b"mine")
    argv = DREAM + ["direction", "--model", "tiny:lm", "--positive", str(good), "--negative", str(bad), "--site",
                    "model.layers.1", "--out", str(tmp_path / "d.pt"), "--method", "mean_diff"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1, done.stderr
    assert "already exists; add --overwrite" in err and str(mine) in err
    assert mine.read_bytes() == b"mine" and sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", existing, "good.txt"]
    done = subprocess.run(argv + ["--overwrite"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert list(torch.load(tmp_path / "d.pt")) == ["mean_diff"]
    assert list(json.loads((tmp_path / "d.pt.json").read_text())["methods"]) == ["mean_diff"]


def _direction(good, bad, out, *extra):
    return DREAM + ["direction", "--model", "tiny:lm", "--positive", str(good), "--negative", str(bad), "--site",
                    "model.layers.1", "--out", str(out), *extra]


def _refused(done, words):
    err = done.stderr.strip()
    assert done.returncode == 2 and len(err.splitlines()) == 1 and err.startswith("dream: error:"), done.stderr
    assert words in err, err


@pytest.mark.parametrize("data, words", [
    (b"good one\nand \x00 a NUL\n", "is not text: it holds NUL bytes"),
    (bytes(range(128, 256)) * 8, "are not valid UTF-8"),
    (b"only one example\n", "--positive POS holds 1 example; a direction needs at least 2"),
])
def test_example_files_are_checked_before_the_model_loads(texts, tmp_path, data, words):
    _, bad = texts
    positive = tmp_path / "pos.txt"
    positive.write_bytes(data)
    done = subprocess.run(_direction(positive, bad, tmp_path / "d.pt"), capture_output=True, text=True, timeout=120)
    _refused(done, words.replace("POS", str(positive)))
    assert not (tmp_path / "d.pt").exists()


def test_a_corrupt_image_is_refused_before_the_model_loads(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "b" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    done = subprocess.run(DREAM + ["direction", "--model", "tiny:cnn", "--positive", str(tmp_path / "a"), "--negative",
                                   str(tmp_path / "b"), "--site", "conv3", "--out", str(tmp_path / "d.pt")],
                          capture_output=True, text=True, timeout=120)
    _refused(done, "image '9.png' cannot be read")


def test_an_unwritable_out_is_refused_before_the_work(texts, tmp_path):
    good, bad = texts
    done = subprocess.run(_direction(good, bad, "/proc/x/d.pt"), capture_output=True, text=True, timeout=120)
    _refused(done, "--out /proc/x/d.pt: output folder /proc/x is not writable")


def test_examples_longer_than_the_context_are_cut_with_a_warning(texts, tmp_path, caplog, tiny_lm):
    good, bad = texts
    long = tmp_path / "long.txt"
    long.write_text("\n".join(GOOD[:-1] + [" ".join(["cat"] * 400)]) + "\n")
    with caplog.at_level("WARNING"):
        assert cli.main(["direction", "--model", "tiny:lm", "--positive", str(long), "--negative", str(bad), "--site",
                         "model.layers.1", "--out", str(tmp_path / "d.pt"), "--method", "mean_diff"]) == 0
    assert "1 example(s) are longer than the 256 positions 'tiny:lm' was made for" in caplog.text
    assert "cut to its first 255 tokens" in caplog.text
    features = site_features(tiny_lm, "model.layers.1", [" ".join(["cat"] * 400)])
    assert features.shape == (1, 64) and bool(torch.isfinite(features).all())


def test_an_attention_pattern_site_is_refused_before_the_model_loads(texts, tmp_path):
    good, bad = texts
    argv = [a if a != "model.layers.1" else "blocks.0.attn.hook_pattern" for a in _direction(good, bad, tmp_path / "d.pt")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    _refused(done, "--site: site 'blocks.0.attn.hook_pattern' is an attention pattern")
