"""dreamy/sae/files.py against the real SAELens 6: what `dreamy.sae.save` and `train_sae` (`dream sae-train`) write,
SAELens's `SAE.load_from_disk` loads and encodes (and reconstructs) to the same values as dreamy. Skips with the
reason when sae-lens cannot be imported (`make venv` installs it)."""

import pytest
import torch

from dreamy.sae import save, train_sae
from dreamy.datasets import TextCorpus
from tests.fixtures import sae_lens, smollm2_layer9_activations
from tests.sae.helpers import small_sae

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:sae_lens.*")
NAMES = {"relu": "StandardSAE", "jumprelu": "JumpReLUSAE", "topk": "TopKSAE", "abstopk": "AbsTopKSAE", "gated": "GatedSAE"}


def _x(d_in, n=32, seed=1):
    return 1.5 * torch.randn(n, d_in, generator=torch.Generator().manual_seed(seed)) + 0.3


@pytest.mark.parametrize("normalize", ["none", "layer_norm", "constant_norm_rescale"])
@pytest.mark.parametrize("architecture, shift", [("relu", True), ("relu", False), ("jumprelu", True), ("topk", True),
                                                 ("abstopk", False), ("gated", True)])
def test_saelens_loads_our_folders_and_encodes_the_same(tmp_path, architecture, shift, normalize):
    sl = sae_lens()
    ours = small_sae(architecture, d_in=8, d_sae=12, apply_b_dec_to_input=shift, normalize_activations=normalize)
    save(ours, tmp_path / "sae")
    theirs = sl.SAE.load_from_disk(str(tmp_path / "sae"))
    assert type(theirs).__name__ == NAMES[architecture]
    assert theirs.cfg.metadata.hook_name == "0" and theirs.cfg.metadata.model_name == "test"
    x = _x(8)
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), ours.encode(x), atol=1e-5)
        assert torch.allclose(theirs(x), ours(x), atol=1e-4)
    assert bool((ours.encode(x) != 0).any())


def test_a_folder_written_by_sae_training_loads_in_saelens(tiny_lm, tmp_path):
    sl = sae_lens()
    corpus = TextCorpus("toy", " ".join(f"the cat {i % 7} sat on mat {i % 5}." for i in range(200)))
    result = train_sae(tiny_lm, "model.layers.0", [corpus], out_dir=tmp_path, features=32, k=4, tokens=256,
                       batch_tokens=64, window=16, heldout_tokens=32, progress=False)
    theirs = sl.SAE.load_from_disk(str(tmp_path))
    assert type(theirs).__name__ == "TopKSAE" and theirs.cfg.k == 4
    assert theirs.cfg.metadata.hook_name == "model.layers.0"
    assert theirs.cfg.metadata.model_class_name == "AutoModelForCausalLM"
    x = _x(result.sae.d_in)
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), result.sae.encode(x), atol=1e-5)


@pytest.mark.real
@pytest.mark.parametrize("architecture, normalize", [("relu", "layer_norm"), ("topk", "none"), ("gated", "constant_norm_rescale")])
def test_saelens_encodes_our_folders_alike_on_smollm2_activations(tmp_path, architecture, normalize):
    sl = sae_lens()
    x = smollm2_layer9_activations()
    ours = small_sae(architecture, d_in=x.shape[1], d_sae=48, normalize_activations=normalize, seed=3)
    with torch.no_grad():
        ours.W_enc /= x.shape[1] ** 0.5
    save(ours, tmp_path / "sae")
    theirs = sl.SAE.load_from_disk(str(tmp_path / "sae"))
    with torch.no_grad():
        expected = theirs.encode(x)
        assert torch.allclose(ours.encode(x), expected, atol=1e-4)
        assert torch.allclose(ours(x), theirs(x), atol=1e-3, rtol=1e-4)
    assert bool((expected > 0).any())
