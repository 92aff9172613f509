"""dreamy/directions/examples.py: site features of texts and images, position weights, target gradients."""

import pytest
import torch

from dreamy.directions.examples import (length_batches, position_weights, read_examples, reduce_positions,
                                        site_features, target_gradients, token_rows)
from dreamy.sae.splice import edit_site
from dreamy.targets import Probe


def raw(loaded, site, text):
    ids = torch.tensor([token_rows(loaded, [text])[0]])
    with torch.no_grad():
        return Probe(loaded.model, [site])(input_ids=ids, keep_activations=True).activations[site][0]


def test_text_features_are_the_sites_activation_reduced_as_asked(tiny_lm):
    texts = ["The cat sat on the mat.", "A dog.", "The bird sang in the tree today."]
    mean = site_features(tiny_lm, "model.layers.0", texts)
    last = site_features(tiny_lm, "model.layers.0", texts, reduce="pos=-1")
    first_word = site_features(tiny_lm, "model.layers.0", texts, reduce="pos=1")
    for i, text in enumerate(texts):  # batches grouped by length come back in the examples' order
        activation = raw(tiny_lm, "model.layers.0", text)
        assert torch.allclose(mean[i], activation[1:].mean(dim=0), atol=1e-5)  # the start token left out
        assert torch.allclose(last[i], activation[-1], atol=1e-5)
        assert torch.allclose(first_word[i], activation[1], atol=1e-5)


def test_image_features_reduce_the_feature_map(tiny_cnn):
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    normalized = tiny_cnn.preprocess.normalize(images)
    with torch.no_grad():
        maps = tiny_cnn.model.conv2(tiny_cnn.model.conv1(normalized))  # [3, 16, 16, 16]
    assert torch.allclose(site_features(tiny_cnn, "conv2", images), maps.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(site_features(tiny_cnn, "conv2", images, reduce="max"), maps.amax(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(site_features(tiny_cnn, "conv2", images, reduce="center"), maps[:, :, 8, 8], atol=1e-5)
    bigger = torch.nn.functional.interpolate(images, size=(64, 64), mode="bilinear", antialias=True)
    assert site_features(tiny_cnn, "conv2", bigger, batch_size=2).shape == (3, 16)  # resized to the model's size


def test_position_weights_match_the_reductions():
    values = torch.randn(2, 5, 3)
    for reduce in ("mean", "sum", "pos=-1", "pos=2"):
        weights = position_weights((5,), reduce, skip_start=True)
        assert torch.allclose(reduce_positions(values, reduce, skip_start=True),
                              torch.einsum("bpd,p->bd", values, weights))
    maps = torch.randn(2, 3, 3, 4)
    assert torch.allclose(reduce_positions(maps, "center"), maps[:, 1, 1])
    assert torch.allclose(reduce_positions(maps, "mean"), maps.mean(dim=(1, 2)))
    with pytest.raises(ValueError, match="no position weights"):
        position_weights((3,), "max")
    with pytest.raises(ValueError, match="out of range"):
        position_weights((3,), "pos=5")


def test_gradients_are_directional_derivatives(tiny_lm):
    """`gradients @ v` equals the finite difference of the target when v is added at the positions read."""
    texts = ["The cat sat on the mat.", "A dog ran."]
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    target = "logits:7"
    for reduce in ("mean", "pos=-1"):
        grads = target_gradients(tiny_lm, target, "model.layers.0", texts, reduce=reduce)
        for i, text in enumerate(texts):
            ids = torch.tensor([token_rows(tiny_lm, [text])[0]])
            weights = position_weights((ids.shape[1],), reduce, skip_start=True)
            probe = Probe(tiny_lm.model, [target], sequence_reduce="pos=-1")

            def shifted(eps):
                with torch.no_grad(), edit_site(tiny_lm.model, "model.layers.0", lambda a: a + eps * weights[None, :, None] * v):
                    return float(probe(input_ids=ids, need_output=True).scores[0, 0])

            eps = 1e-2
            numeric = (shifted(eps) - shifted(-eps)) / (2 * eps)
            assert float(grads[i] @ v) == pytest.approx(numeric, rel=2e-2, abs=1e-4), reduce


def test_gradients_through_a_linear_head_are_its_weights(tiny_cnn):
    grads = target_gradients(tiny_cnn, "logits:4", "pool", torch.rand(3, 3, 32, 32))
    assert torch.allclose(grads, tiny_cnn.model.head.weight[4].expand(3, -1), atol=1e-6)
    with pytest.raises(ValueError, match="does not depend on site"):
        target_gradients(tiny_cnn, "conv1:0", "conv3", torch.rand(1, 3, 32, 32))


def test_examples_from_files_and_the_kind_of_model(tmp_path, tiny_lm, tiny_cnn):
    text = tmp_path / "a.txt"
    text.write_text("one\n\n  two  \n")
    assert read_examples(text) == ["one", "two"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="one example per line"):
        read_examples(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="neither a text file"):
        read_examples(tmp_path / "missing")
    with pytest.raises(ValueError, match="give images"):
        site_features(tiny_cnn, "conv2", ["a text"])
    with pytest.raises(ValueError, match="takes no images"):
        site_features(tiny_lm, "model.layers.0", torch.rand(2, 3, 8, 8))
    assert length_batches([[1], [1, 2], [3]], 1) == [[0], [2], [1]]


def test_a_targets_mean_and_a_directions_mean_are_one_average(tmp_path, tiny_lm):
    """`SITE:dir=FILE/mean` averaged the start token in, the direction's own `mean` left it out: one rule now."""
    from dreamy.language.layout import start_token
    from dreamy.targets import Probe

    site, text = "model.layers.1", "The cat sat on the mat."
    vector = torch.randn(64, generator=torch.Generator().manual_seed(0))
    torch.save(vector, tmp_path / "v.pt")
    ids = torch.tensor([[start_token(tiny_lm.tokenizer)] + tiny_lm.tokenizer(text, add_special_tokens=False).input_ids])
    for reduce in ("mean", "sum", "max"):
        own = site_features(tiny_lm, site, [text], reduce=reduce)[0] @ vector if reduce != "max" else None
        spec = f"{site}:dir={tmp_path}/v.pt/{reduce}"
        through_spec = Probe(tiny_lm.model, [spec], sequence_reduce="pos=-1")(input_ids=ids).scores[0, 0]
        features = Probe(tiny_lm.model, [site])(input_ids=ids, keep_activations=True).activations[site][0]
        projected = features[1:] @ vector  # the start token left out
        expected = {"mean": projected.mean(), "sum": projected.sum(), "max": projected.max()}[reduce]
        torch.testing.assert_close(through_spec, expected, atol=1e-4, rtol=1e-4)
        if own is not None:
            torch.testing.assert_close(through_spec, own, atol=1e-4, rtol=1e-4)
