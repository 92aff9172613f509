"""The render loop: reproducible, batched over targets, snapshots, plateau stop, honest final activation."""

import numpy as np
import pytest
import torch

from dreamy.loop import Plateau
from dreamy.targets import Probe
from dreamy.vision.render import dream
from dreamy.vision.transforms import Transforms


def test_same_seed_same_images(tiny_cnn):
    a = dream(tiny_cnn, ["conv3:1"], steps=8, seed=5, progress=False)
    torch.randn(100)  # global RNG use in between must not matter
    b = dream(tiny_cnn, ["conv3:1"], steps=8, seed=5, progress=False)
    c = dream(tiny_cnn, ["conv3:1"], steps=8, seed=6, progress=False)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


def test_batch_of_targets_each_row_improves_its_own(tiny_cnn):
    targets = ["conv3:0", "conv3:7", "head:2", "head:5"]
    result = dream(tiny_cnn, targets, param="pixel", steps=40, progress=False)
    probe = Probe(tiny_cnn.model, targets)
    scores = probe(tiny_cnn.preprocess.normalize(result.images)).scores
    assert torch.equal(scores.argmax(dim=0), torch.arange(4))  # each row wins its own target
    assert (result.history[-1] > result.history[0]).all()


def test_final_activation_is_measured_on_the_plain_image(tiny_cnn):
    result = dream(tiny_cnn, ["conv3:2", "head:1"], steps=5, progress=False)
    direct = Probe(tiny_cnn.model, ["conv3:2", "head:1"])(tiny_cnn.preprocess.normalize(result.images)).scores
    torch.testing.assert_close(result.activation, torch.stack([direct[0, 0], direct[1, 1]]))


def test_snapshots_history_and_records(tiny_cnn):
    result = dream(tiny_cnn, ["head:0"], steps=6, snapshot_steps=(2, 6), n_per_target=2, progress=False)
    assert sorted(result.snapshots) == [2, 6] and result.snapshots[2].shape == (2, 3, 32, 32)
    assert result.history.shape == (6, 2)
    record = result.to_record(1)
    assert record["target"] == "head:0" and record["settings"]["steps"] == 6
    import json
    json.dumps(record)


def test_plateau_stops_early(tiny_cnn):
    result = dream(tiny_cnn, ["head:0"], steps=200, lr=1e-9, plateau=Plateau(patience=3, rel_tol=0.01),
                   transforms=Transforms(), progress=False)
    assert result.history.shape[0] < 20


def test_custom_optimizer_factory(tiny_cnn):
    used = []

    def sgd(params):
        used.append(True)
        return torch.optim.SGD(params, lr=1.0)

    dream(tiny_cnn, ["head:0"], steps=2, optimizer=sgd, progress=False)
    assert used


def test_bad_arguments_are_explained(tiny_cnn):
    with pytest.raises(ValueError, match="unknown regularizer 'tvv'"):
        dream(tiny_cnn, ["head:0"], steps=1, regularizers={"tvv": 1.0}, progress=False)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        dream(tiny_cnn, ["head:0"], steps=0, progress=False)


@pytest.mark.real
@pytest.mark.parametrize("param", ["fourier", "pixel", "maco"])
def test_bundled_cat_logit_dream_is_a_confident_cat(efficientnet, param):
    result = dream(efficientnet, ["logits:285"], param=param, steps=40, lr=0.05, progress=False, seed=0)
    probs = efficientnet.model(efficientnet.preprocess.normalize(result.images)).softmax(-1)
    assert probs[0, 285] > 0.9


@pytest.mark.real
def test_bundled_channel_dream_beats_the_sample_photos(efficientnet):
    import skimage.data

    photos = [getattr(skimage.data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket", "cat")]
    batch = torch.stack([torch.nn.functional.interpolate(
        torch.tensor(np.asarray(p), dtype=torch.float32).permute(2, 0, 1)[None] / 255, size=(224, 224),
        mode="bilinear", antialias=True)[0] for p in photos])
    target = "_blocks.8:10"
    natural = Probe(efficientnet.model, [target])(efficientnet.preprocess.normalize(batch)).scores.max()
    result = dream(efficientnet, [target], steps=40, progress=False)
    assert result.activation[0] > natural
