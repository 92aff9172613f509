"""The render loop: reproducible, batched over targets, snapshots, plateau stop, honest final activation."""

import numpy as np
import pytest
import torch

from dreamy.targets import Probe
from dreamy.vision import regularizers as regs
from dreamy.vision.param import ImageParam
from dreamy.vision.render import dream
from dreamy.vision.transforms import Transforms


@pytest.mark.parametrize("param", ["pixel", "fourier", "maco", "dip", "decoder"])
def test_same_seed_same_images(tiny_cnn, param):
    kwargs = dict(param=param, steps=6, n_per_target=2, progress=False,
                  transforms=Transforms(pad=2, jitter=2, scale=(0.9, 1.1), rotate=10, crop=0.9, noise=0.02))
    a = dream(tiny_cnn, ["conv3:1"], seed=5, **kwargs)
    torch.randn(100)  # global RNG use in between must not matter
    b = dream(tiny_cnn, ["conv3:1"], seed=5, **kwargs)
    c = dream(tiny_cnn, ["conv3:1"], seed=6, **kwargs)
    assert torch.equal(a.images, b.images) and torch.equal(a.history, b.history)
    assert not torch.equal(a.images, c.images)


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
    result = dream(tiny_cnn, ["head:0"], steps=200, lr=1e-9, plateau=3, plateau_tol=0.01,
                   transforms=Transforms(), progress=False)
    assert result.history.shape[0] < 20


def test_custom_optimizer_factory(tiny_cnn):
    steps = []

    class CountingSGD(torch.optim.SGD):
        def step(self, closure=None):
            steps.append(1)
            return super().step(closure)

    made = dream(tiny_cnn, ["head:0"], steps=3, optimizer=lambda params: CountingSGD(params, lr=1.0), progress=False)
    frozen = dream(tiny_cnn, ["head:0"], steps=3, optimizer=lambda params: CountingSGD(params, lr=0.0), progress=False)
    assert len(steps) == 6 and made.settings["optimizer"] == "CountingSGD"
    assert not torch.equal(made.images, frozen.images)  # its steps moved the images (lr 0 keeps the start)


def test_bad_arguments_are_explained(tiny_cnn):
    with pytest.raises(ValueError, match="unknown regularizer 'tvv'"):
        dream(tiny_cnn, ["head:0"], steps=1, regularizers={"tvv": 1.0}, progress=False)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        dream(tiny_cnn, ["head:0"], steps=0, progress=False)


def test_batch_of_targets_equals_separate_runs(tiny_cnn):
    starts = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    kwargs = dict(steps=6, transforms=Transforms(), progress=False)
    both = dream(tiny_cnn, ["conv3:0", "head:2"], param=ImageParam(starts), **kwargs)
    for row, target in enumerate(["conv3:0", "head:2"]):
        alone = dream(tiny_cnn, [target], param=ImageParam(starts[row:row + 1]), **kwargs)
        # the two runs batch different rows, so fp32 sums round differently; a wrong target differs by ~0.1
        torch.testing.assert_close(both.images[row], alone.images[0], atol=1e-4, rtol=0)
        torch.testing.assert_close(both.history[:, row], alone.history[:, 0], atol=1e-4 * alone.history.abs().max().item(), rtol=1e-4)


def test_diversity_compares_each_target_at_its_own_site(tiny_cnn, monkeypatch):
    seen = []
    original = regs.diversity

    def spy(activations, rows):
        seen.append((activations.shape[1], rows.tolist()))
        return original(activations, rows)

    monkeypatch.setattr(regs, "diversity", spy)
    dream(tiny_cnn, ["conv3:1", "conv2:3"], n_per_target=2, diversity=1.0, steps=1, progress=False)
    assert sorted(seen) == [(16, [1, 1]), (32, [0, 0])]  # conv2 has 16 channels, conv3 32
    seen.clear()
    dream(tiny_cnn, ["logits:1", "conv3:0"], n_per_target=2, diversity=1.0, diversity_site="conv2", steps=1,
          progress=False)
    assert seen == [(16, [0, 0, 1, 1])]
    with pytest.raises(ValueError, match="bare site"):
        dream(tiny_cnn, ["head:0"], diversity=1.0, diversity_site="conv2:3", steps=1, progress=False)


def test_interrupt_returns_what_was_dreamed(tiny_cnn):
    calls = []

    def stop_on_third_step(images):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return images.new_zeros(images.shape[0])

    result = dream(tiny_cnn, ["head:0"], steps=50, regularizers={stop_on_third_step: 1.0}, progress=False)
    assert result.settings["interrupted"] and result.history.shape == (2, 1) and result.images.shape == (1, 3, 32, 32)
    assert result.settings["regularizers"] == {"stop_on_third_step": 1.0}


def test_plain_module_without_preprocessing(tiny_cnn):
    result = dream(tiny_cnn.model, ["conv3:0"], image_size=(24, 24), steps=3, progress=False)
    assert result.images.shape == (1, 3, 24, 24)
    direct = Probe(tiny_cnn.model, ["conv3:0"])(result.images).scores[:, 0]
    torch.testing.assert_close(result.activation, direct)


def test_language_models_are_refused(tiny_lm):
    with pytest.raises(ValueError, match="dreamy.language"):
        dream(tiny_lm, ["model.layers.0.mlp.down_proj:1"], steps=1, progress=False)


SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
                 "colorwheel", "camera", "coins", "brick", "grass", "gravel")


def sample_photos(names, size=(224, 224)):
    """scikit-image sample photos as a `[n, 3, H, W]` batch in [0, 1] (grey ones repeated to RGB)."""
    import skimage.data

    batch = []
    for name in names:
        pixels = np.asarray(getattr(skimage.data, name)())
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        image = torch.tensor(pixels[..., :3], dtype=torch.float32).permute(2, 0, 1)[None] / 255
        batch.append(torch.nn.functional.interpolate(image, size=size, mode="bilinear", antialias=True))
    return torch.cat(batch)


@pytest.mark.real
@pytest.mark.parametrize("param", ["fourier", "pixel", "maco", "dip", "decoder", "image"])
def test_bundled_cat_logit_dream_is_a_confident_cat(efficientnet, param):
    if param == "image":  # feature accentuation from a photo of coffee (p(cat) ~ 1e-5)
        param = ImageParam(sample_photos(["coffee"]))
    # the deep image prior optimizes conv weights and climbs slower: at 64 steps p(cat) was 0.94 with two threads
    # but 0.886 with one (OMP_NUM_THREADS=1); at 128 steps 0.997 and 0.990
    steps = 128 if param == "dip" else 64
    result = dream(efficientnet, ["logits:285"], param=param, steps=steps, lr=0.05, progress=False, seed=0)
    with torch.no_grad():
        probs = efficientnet.model(efficientnet.preprocess.normalize(result.images)).softmax(-1)
    assert probs[0, 285] > 0.9


@pytest.mark.real
def test_bundled_channel_dream_beats_the_sample_photos(efficientnet):
    photos = sample_photos(SAMPLE_PHOTOS)
    site = "_blocks.8"
    with torch.no_grad():
        acts = Probe(efficientnet.model, [site])(efficientnet.preprocess.normalize(photos), keep_activations=True)
    per_channel = acts.activations[site].mean(dim=(2, 3)).max(dim=0).values
    channel = int(per_channel.argmax())  # the channel the photos drive hardest: the hardest one to beat
    result = dream(efficientnet, [f"{site}:{channel}"], steps=40, progress=False)
    assert result.activation[0] > per_channel[channel]


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_dream_works_under_no_grad_and_inference_mode(tiny_cnn, context):
    plain = dream(tiny_cnn, ["head:1"], steps=3, progress=False)
    with context():
        inside = dream(tiny_cnn, ["head:1"], steps=3, progress=False)
    torch.testing.assert_close(inside.images, plain.images)  # the same three gradient steps were taken
    assert inside.settings["steps"] == 3 and not torch.equal(inside.images, dream(tiny_cnn, ["head:1"], steps=1, progress=False).images)


def test_a_misspelt_setting_fails_before_any_forward(tiny_cnn, monkeypatch):
    from dreamy.core.config import ConfigError

    calls = []
    forward = tiny_cnn.model.forward
    monkeypatch.setattr(tiny_cnn.model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        dream(tiny_cnn, "head:0", stpes=3, progress=False)
    assert calls == []


def _bn_dropout_net():
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Dropout(0.5), torch.nn.Conv2d(8, 4, 3, padding=1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return net


def test_a_model_in_train_mode_is_dreamed_in_eval_mode_and_left_as_found():
    net = _bn_dropout_net()
    reference = dream(net.eval(), ["4:1"], steps=6, image_size=(16, 16), progress=False)
    net.train()
    net[3].eval()  # a mixed state comes back as it was
    net[4].bias.requires_grad_(False)
    stats = (net[1].running_mean.clone(), net[1].running_var.clone(), int(net[1].num_batches_tracked))
    result = dream(net, ["4:1"], steps=6, image_size=(16, 16), progress=False)
    assert torch.equal(result.images, reference.images)  # no dropout, no batch statistics
    assert torch.equal(net[1].running_mean, stats[0]) and torch.equal(net[1].running_var, stats[1])
    assert int(net[1].num_batches_tracked) == stats[2]
    assert [m.training for m in net] == [True, True, True, False, True] and net.training
    assert all(p.grad is None for p in net.parameters())  # parameters that required grad got none
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, True, True, False]


def test_a_dream_that_fails_still_restores_the_model():
    net = _bn_dropout_net().train()
    with pytest.raises(Exception):
        dream(net, ["4:99"], steps=2, image_size=(16, 16), progress=False)
    assert net.training and all(p.requires_grad for p in net.parameters())


def test_two_threads_dream_on_one_model(tiny_cnn):
    import threading

    specs = [["conv1:1", "head:0"], ["conv2:3", "head:1"], ["conv3:5", "head:2"]]
    results, errors = {}, []

    def work(i):
        try:
            results[i] = dream(tiny_cnn, specs[i], steps=25, progress=False)
        except Exception as error:  # handed to the test thread
            errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for i in range(3):  # each thread's dream is the one it would have had alone
        alone = dream(tiny_cnn, specs[i], steps=25, progress=False)
        torch.testing.assert_close(results[i].images, alone.images)
        torch.testing.assert_close(results[i].activation, alone.activation)


def test_bf16_precision_is_refused_off_cuda_and_fp32_is_the_default(tiny_cnn):
    from dreamy.core.config import ConfigError
    from dreamy.runs.store import run_info_of
    from dreamy.vision import DreamConfig

    with pytest.raises(ValueError, match="autocasts on CUDA only; the model is on cpu"):
        dream(tiny_cnn, ["head:0"], steps=1, precision="bf16", progress=False)
    with pytest.raises(ConfigError, match="precision must be one of 'fp32', 'bf16'"):
        DreamConfig(precision="fp16")
    result = dream(tiny_cnn, ["head:0"], steps=1, progress=False)
    assert result.settings["precision"] == "fp32"
    assert "precision" not in run_info_of("tiny:cnn", DreamConfig())["settings"]  # older runs keep their fingerprint
    assert run_info_of("tiny:cnn", DreamConfig(precision="bf16"))["settings"]["precision"] == "bf16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast runs on CUDA only")
def test_bf16_dreams_stay_close_to_fp32_on_cuda(tiny_cnn):
    from dreamy.models import load

    loaded = load("tiny:cnn", "cuda")
    kwargs = dict(steps=8, progress=False)
    full, half = (dream(loaded, ["head:0", "head:1"], precision=p, **kwargs) for p in ("fp32", "bf16"))
    assert half.images.dtype == torch.float32 and half.settings["precision"] == "bf16"
    torch.testing.assert_close(half.activation, full.activation, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_is_refused_in_one_line_and_left_as_found(dtype):
    from dreamy.models.tiny import tiny_cnn

    half = tiny_cnn().to(dtype)
    with pytest.raises(ValueError, match=f"dream\\(\\) needs a float32 model, got {str(dtype)[6:]} weights: convert "
                                         "it with model.float\\(\\)"):
        dream(half, "head:3", steps=1, progress=False)
    assert half.head.weight.dtype == dtype
