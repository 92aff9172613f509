"""Judges: verdicts on class dreams from classifiers never optimized against; the --judge flag."""

import json

import numpy as np
import pytest
import torch

from dreamy.cli import main
from dreamy.models import load
from dreamy.vision.judges import JudgeError, judge_images
from dreamy.targets import class_index
from dreamy.runs.enrich import judge_records
from tests.fixtures import cached


def test_verdict_rank_and_probability_agree_with_the_softmax(tiny_cnn):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    verdicts = judge_images(tiny_cnn, images, [0, 5, 9])
    probs = tiny_cnn.model(tiny_cnn.preprocess.normalize(images)).softmax(-1)
    for row, verdict in enumerate(verdicts):
        target = verdict.target
        assert verdict.probability == pytest.approx(float(probs[row, target]), rel=1e-5)
        assert verdict.rank == int((probs[row] > probs[row, target]).sum()) + 1
        assert verdict.top5[0] == tiny_cnn.class_names[int(probs[row].argmax())]
        assert (verdict.rank <= 5) == (verdict.label in verdict.top5)


def test_images_are_resized_to_the_judge_input(tiny_cnn):
    big = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    small = tiny_cnn.preprocess.normalize(big)
    expected = tiny_cnn.model(small).softmax(-1)[0, 2]
    assert judge_images(tiny_cnn, big, [2])[0].probability == pytest.approx(float(expected), rel=1e-5)


def test_only_single_class_logit_targets_are_judged():
    assert class_index("logits:7") == 7 and class_index("logprobs:7") == 7
    assert class_index("logits:7/max") == 7
    assert class_index("conv3:7") is None and class_index("logits:1+logits:2") is None
    assert class_index("-logits:7") is None and class_index("logits:dir=x.pt") is None


def test_bad_judges_and_classes_are_refused(tiny_cnn, tiny_lm):
    with pytest.raises(JudgeError, match="not an image classifier"):
        judge_images(tiny_lm, torch.rand(1, 3, 8, 8), [0])
    with pytest.raises(JudgeError, match="out of range"):
        judge_images(tiny_cnn, torch.rand(1, 3, 8, 8), [10])


def test_judge_flag_adds_verdicts_to_class_records_and_the_gallery(tmp_path):
    out = tmp_path / "run"
    code = main(["image", "--model", "tiny:cnn", "--target", "conv3:1", "--target", "logits:3", "--steps", "3",
                 "--judge", "tiny:cnn", "--out", str(out), "--quiet"])
    assert code == 0
    records = {r["target"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    assert "judges" not in records["conv3:1"]
    (verdict,) = records["logits:3"]["judges"]
    assert verdict["judge"] == "tiny:cnn" and verdict["target"] == 3 and len(verdict["top5"]) == 5
    assert 0 < verdict["probability"] < 1 and 1 <= verdict["rank"] <= 10
    assert [r["target"] for r in json.loads((out / "results.json").read_text())["records"]] == ["conv3:1", "logits:3"]
    page = (out / "index.html").read_text()
    assert f"p={verdict['probability']:.4g}, rank {verdict['rank']}" in page and "top-5:" in page


@pytest.mark.parametrize("judge, words", [("tiny:lm", "is a language model"), ("nope:x", "not a known model name"),
                                          ("bundled:efficientnet-lite1", "has 1000 classes but the dreamed model has 10")])
def test_bad_judges_are_refused_with_one_line_and_exit_2(judge, words, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["image", "--model", "tiny:cnn", "--target", "logits:3", "--steps", "1", "--judge", judge, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not (out / "results.json").exists()


def test_judge_records_reads_the_written_pngs(tmp_path):
    from dreamy.runs import dream_targets
    from dreamy.vision import DreamConfig

    records = dream_targets(load("tiny:cnn"), ["logits:1"], DreamConfig(steps=2, n_per_target=2), out_dir=tmp_path,
                            progress=False)
    (judged,) = judge_records([load("tiny:cnn")], records, tmp_path)
    verdict = judged["judges"][0]
    assert len(verdict["probabilities"]) == 2 and verdict["probability"] in verdict["probabilities"]


@pytest.mark.real
@pytest.mark.parametrize("name", ["bundled:efficientnet-lite1", "bundled:efficientnet-lite2"])
def test_real_judges_see_the_cat(name):
    from dreamy.datasets import to_tensor

    import skimage.data

    judge = cached(name)
    assert judge.preprocess.size == {"bundled:efficientnet-lite1": (240, 240), "bundled:efficientnet-lite2": (260, 260)}[name]
    cat = to_tensor(np.asarray(skimage.data.chelsea()), (300, 300))[None]  # centre square crop
    (verdict,) = judge_images(judge, cat, [285])
    assert verdict.label == "Egyptian cat" and verdict.rank == 1 and verdict.probability > 0.5
    assert {"Egyptian cat", "tabby"} <= set(verdict.top5)


def test_a_judge_in_train_mode_judges_in_eval_mode_and_is_left_as_found():
    judge = load("tiny:cnn")
    judge.model.conv2.insert(1, torch.nn.BatchNorm2d(16))  # a judge with batch statistics
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = [v.probability for v in judge_images(judge, images, [1, 2, 3])]
    judge.model.train()
    after = [v.probability for v in judge_images(judge, images, [1, 2, 3])]
    assert after == before and judge.model.training
    assert int(judge.model.conv2[1].num_batches_tracked) == 0
