"""timm models by name, vision transformers included: sites, channel and class-token dreams, hooks removed.

Random-init models (`timm:NAME:random`) work offline; the tests skip without timm (`pip install timm`).
"""

import json

import pytest
import torch

pytest.importorskip("timm")

from dreamy.cli import main  # noqa: E402
from dreamy.models import ModelLoadError, kind_of, load  # noqa: E402
from dreamy.models.loading import _hub_reachable  # noqa: E402
from dreamy.targets import Probe  # noqa: E402
from dreamy.vision import dream  # noqa: E402
from dreamy.vision.render import patch_tokens  # noqa: E402
from tests.fixtures import cached  # noqa: E402

VIT = "timm:vit_tiny_patch16_224:random"
CNN = "timm:resnet10t:random"


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_timm_names_are_vision_models_and_bad_names_explain_themselves():
    assert kind_of(VIT) == "vision" and kind_of("timm:resnet50") == "vision"
    with pytest.raises(ModelLoadError, match="did you mean 'timm:vit_tiny_patch16_224'"):
        load("timm:vit_tiny_patch16_22:random")
    with pytest.raises(ModelLoadError, match="unknown option 'pretrained'"):
        load("timm:resnet10t:pretrained")


@pytest.mark.skipif(_hub_reachable(), reason="online: the weights would download")
def test_pretrained_weights_offline_give_one_clear_line():
    with pytest.raises(ModelLoadError) as info:
        load("timm:resnet10t")
    message = str(info.value)
    assert "huggingface.co cannot be reached" in message and "timm:resnet10t:random" in message
    assert len(message.splitlines()) == 1


def test_random_vit_is_seeded_frozen_with_its_preprocessing_and_patch_count():
    vit = cached(VIT)
    assert torch.equal(load(VIT).model.blocks[0].attn.qkv.weight, vit.model.blocks[0].attn.qkv.weight)
    assert vit.preprocess.size == (224, 224) and vit.preprocess.mean == (0.5, 0.5, 0.5)
    assert not any(p.requires_grad for p in vit.model.parameters()) and not vit.model.training
    assert patch_tokens(vit.model) == 196 and vit.class_names is None  # random weights name no classes


def test_vit_token_sites_default_to_the_patch_mean_and_cls_reads_the_class_token():
    vit = cached(VIT)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    probe = Probe(vit.model, ["blocks.3:7", "blocks.3:7/cls", "blocks.3:7/tokens=5"], patch_tokens=196)
    result = probe(vit.preprocess.normalize(x), keep_activations=True)
    tokens = result.activations["blocks.3"]
    assert tokens.shape == (2, 197, 192)
    expected = torch.stack([tokens[:, 1:, 7].mean(1), tokens[:, 0, 7], tokens[:, 6, 7]], dim=1)
    assert torch.allclose(result.scores, expected, atol=1e-6)
    assert no_hooks(vit.model)


def test_vit_channel_and_class_token_dreams_rise_and_leave_no_hooks():
    vit = cached(VIT)
    result = dream(vit, ["blocks.5:3", "blocks.5:3/cls"], steps=5, lr=0.1, seed=0, progress=False)
    assert result.images.shape == (2, 3, 224, 224)
    assert bool((result.history[-1] > result.history[0]).all()), result.history
    assert no_hooks(vit.model)


def test_timm_cnn_channel_dream_rises_and_leaves_no_hooks():
    cnn = cached(CNN)
    assert cnn.preprocess.size == (176, 176) and patch_tokens(cnn.model) is None
    result = dream(cnn, ["layer4.0:3", "layer3.0.bn2:1"], steps=6, lr=0.1, seed=0, progress=False)
    assert bool((result.history[-1] > result.history[0]).all()), result.history
    assert no_hooks(cnn.model)


def test_dream_sites_lists_vit_token_shapes(capsys):
    assert main(["sites", VIT]) == 0
    lines = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    assert lines["blocks.11"].strip() == "[1, 197, 192]" and lines["patch_embed"].strip() == "[1, 196, 192]"
    assert lines["logits"].strip() == "[1, 1000]"


def test_cli_dreams_a_class_token_and_refuses_a_token_past_the_patches(tmp_path, capsys):
    out = tmp_path / "vit"
    assert main(["image", "--model", VIT, "--target", "blocks.2:4/cls", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    (record,) = json.loads((out / "results.json").read_text())["records"]
    assert record["target"] == "blocks.2:4/cls" and record["images"]
    code = main(["image", "--model", VIT, "--target", "blocks.2:4/tokens=196", "--steps", "2", "--out", str(tmp_path / "bad")])
    assert code == 2 and "with 196 patch tokens" in capsys.readouterr().err
