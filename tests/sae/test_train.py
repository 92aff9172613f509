"""dreamy/sae/train.py: the TopK training step, AuxK, checkpoints and resume, the output folder."""

import json

import pytest
import torch

from dreamy.datasets import TextCorpus
from dreamy.sae import load, train_sae
from dreamy.sae.model import SAE
from dreamy.sae.train import SAERunError, lr_factor, sae_step

CORPUS = TextCorpus("toy", " ".join(f"The cat {i} sat on the mat and the dog ran in park {i % 7}." for i in range(120)))
SMALL = dict(features=64, k=4, tokens=768, batch_tokens=128, window=16, heldout_tokens=64, progress=False)


def _sparse_data(gen, truth, n=256):
    picks = torch.randint(len(truth), (n, 2), generator=gen)
    return (torch.rand(n, 2, 1, generator=gen) * 3 * truth[picks]).sum(dim=1)


def _train_with_a_dead_latent(aux_coef):
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(24, 16, generator=gen)
    truth /= truth.norm(dim=1, keepdim=True)
    sae = SAE.initialized(16, 24, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.b_enc[0] = -3.0  # latent 0 never makes the top 2
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    since_fired = torch.zeros(24, dtype=torch.long)
    since_fired[0] = 10**6
    for _ in range(150):
        sae_step(sae, optimizer, _sparse_data(gen, truth), since_fired, aux_k=8, aux_coef=aux_coef, aux_dead_tokens=1000)
    return int((sae.encode(_sparse_data(gen, truth, 1024))[:, 0] > 0).sum())


def test_auxk_revives_a_latent_forced_dead():
    assert _train_with_a_dead_latent(aux_coef=1 / 32) > 0
    assert _train_with_a_dead_latent(aux_coef=0.0) == 0  # without AuxK it stays dead


def test_step_keeps_decoder_rows_unit_norm_and_counts_firing():
    sae = SAE.initialized(8, 32, 3, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    since_fired = torch.full((32,), 5, dtype=torch.long)
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fired = sae.encode(x).ne(0).any(dim=0)
    stats = sae_step(sae, optimizer, x, since_fired, aux_k=4, aux_coef=1 / 32, aux_dead_tokens=1000)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-6)
    assert torch.equal(since_fired == 0, fired) and bool((since_fired[~fired] == 69).all())
    assert stats["l0"] <= 3 and stats["fve"] < 1


def test_training_reduces_the_error_on_sparse_data():
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(16, 12, generator=gen)
    truth /= truth.norm(dim=1, keepdim=True)
    sae = SAE.initialized(12, 32, 2, generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    since_fired = torch.zeros(32, dtype=torch.long)
    first = sae_step(sae, optimizer, _sparse_data(gen, truth), since_fired, aux_k=6, aux_coef=1 / 32, aux_dead_tokens=10**6)
    for _ in range(200):
        last = sae_step(sae, optimizer, _sparse_data(gen, truth), since_fired, aux_k=6, aux_coef=1 / 32, aux_dead_tokens=10**6)
    assert last["fve"] > 0.8 > first["fve"]


def test_lr_schedule_warms_up_and_decays_to_zero():
    factors = [lr_factor(step, 200) for step in range(200)]
    assert factors[0] < factors[9] == 1.0 == factors[159]
    assert factors[-1] == pytest.approx(1 / 40) and all(a >= b for a, b in zip(factors[100:], factors[101:]))


def test_train_writes_a_saelens_folder_and_metrics(tiny_lm, tmp_path):
    result = train_sae(tiny_lm, "model.layers.0", [CORPUS], out_dir=tmp_path, **SMALL)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train_tokens"] == 768 and metrics["heldout_tokens"] == 64
    for key in ("fve", "l0", "dead_fraction", "xentropy_clean", "xentropy_spliced", "xentropy_zero", "loss_recovered"):
        assert metrics[key] == pytest.approx(result.metrics[key])
    assert 0 < metrics["l0"] <= 4 and metrics["xentropy_zero"] != metrics["xentropy_clean"]
    sae = load(tmp_path)
    meta = sae.cfg["metadata"]
    assert sae.architecture == "topk" and sae.k == 4 and meta["hook_name"] == "model.layers.0"
    assert meta["model_name"] == "tiny:lm" and sae.cfg["training"]["corpora"] == ["toy"]
    assert meta["model_class_name"] == "AutoModelForCausalLM" and meta["context_size"] == SMALL["window"] + 1
    assert sae.cfg["dtype"] == "float32" and meta["sae_lens_version"] >= "6"
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)


def test_resume_after_a_crash_ends_equal_to_an_uninterrupted_run(tiny_lm, tmp_path):
    # two steps share an LM batch; the checkpoint after step 3 falls inside the LM batch of steps 3 and 4
    settings = dict(checkpoint_every=3, lm_batch_tokens=256, **SMALL)
    whole = train_sae(tiny_lm, "model.layers.1", [CORPUS], out_dir=tmp_path / "whole", **settings)

    def crash(step, stats):
        if step == 5:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        train_sae(tiny_lm, "model.layers.1", [CORPUS], out_dir=tmp_path / "cut", callback=crash, **settings)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 3
    steps = []
    resumed = train_sae(tiny_lm, "model.layers.1", [CORPUS], out_dir=tmp_path / "cut", resume=True,
                        callback=lambda step, stats: steps.append(step), **settings)
    assert steps == [4, 5, 6]
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.allclose(getattr(resumed.sae, name), getattr(whole.sae, name), atol=1e-6), name
    assert resumed.metrics["fve"] == pytest.approx(whole.metrics["fve"], abs=1e-6)
    assert resumed.metrics["dead_fraction"] == whole.metrics["dead_fraction"]


def test_out_dir_of_another_run_is_refused(tiny_lm, tmp_path):
    train_sae(tiny_lm, "model.layers.0", [CORPUS], out_dir=tmp_path, **SMALL)
    with pytest.raises(SAERunError, match="already holds an SAE run"):
        train_sae(tiny_lm, "model.layers.0", [CORPUS], out_dir=tmp_path, **SMALL)
    with pytest.raises(SAERunError, match=r"other settings \(k: 4 -> 8"):
        train_sae(tiny_lm, "model.layers.0", [CORPUS], out_dir=tmp_path, resume=True, **{**SMALL, "k": 8})


def test_seeded_runs_are_equal(tiny_lm, tmp_path):
    a = train_sae(tiny_lm, "model.layers.0", [CORPUS], out_dir=tmp_path / "a", **SMALL)
    b = train_sae(tiny_lm, "model.layers.0", [CORPUS], out_dir=tmp_path / "b", **SMALL)
    assert torch.equal(a.sae.W_enc, b.sae.W_enc)


def test_a_diverging_run_keeps_its_last_finite_checkpoint_and_saves_no_sae(tiny_lm, tmp_path):
    from dreamy.sae.train import SAEDiverged

    seen = []
    with pytest.raises(SAEDiverged, match=r"diverged at step (\d+) of 6: .* the last finite checkpoint \(step \d+\) is kept"):
        train_sae(tiny_lm, "model.layers.0", [CORPUS], out_dir=tmp_path, checkpoint_every=1, lr=1e30,
                  callback=lambda step, stats: seen.append(step), **SMALL)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == seen[-1] >= 1
    assert all(bool(torch.isfinite(t).all()) for t in state["sae"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no cfg.json, weights or metrics


def test_training_leaves_the_model_as_it_found_it(tmp_path):
    from dreamy.models import load

    lm = load("tiny:lm")
    for layer in lm.model.model.layers:
        layer.self_attn.attention_dropout = 0.9  # dropout would change every activation in train mode
    eval_run = train_sae(lm, "model.layers.1", [CORPUS], out_dir=tmp_path / "eval", **SMALL)
    lm.model.train()
    lm.model.model.layers[0].eval()  # a mixed state comes back as it was
    lm.model.lm_head.weight.requires_grad_(True)
    train_run = train_sae(lm, "model.layers.1", [CORPUS], out_dir=tmp_path / "train", **SMALL)
    assert torch.equal(train_run.sae.W_enc, eval_run.sae.W_enc)  # no dropout during training
    assert lm.model.training and lm.model.model.layers[1].training and not lm.model.model.layers[0].training
    assert lm.model.lm_head.weight.requires_grad and lm.model.lm_head.weight.grad is None
    assert not lm.model.model.embed_tokens.weight.requires_grad


def test_an_unwritable_or_dangling_out_dir_is_refused_before_any_work(tiny_lm, tmp_path, monkeypatch):
    from dreamy.core.folders import OutDirError
    import dreamy.sae.train as train

    monkeypatch.setattr(train, "corpus_windows", lambda *a, **k: pytest.fail("the corpus was read"))
    (tmp_path / "link").symlink_to(tmp_path / "missing")
    for out, words in [("/sys/x", "not writable"), (tmp_path / "link", "which does not exist"), ("", "out_dir=''")]:
        with pytest.raises(OutDirError, match=words):
            train_sae(tiny_lm, "model.layers.0", [CORPUS], out_dir=out, **SMALL)


def test_memory_estimate_refuses_what_cannot_fit(tiny_lm, tmp_path, monkeypatch):
    import dreamy.sae.train as train
    from dreamy.sae.config import SAETrainConfig

    need = train.training_bytes(64, SAETrainConfig(features=1_000_000_000, k=4))
    assert need > 2**40  # W_enc alone is 256 GB
    with pytest.raises(SAERunError, match=r"needs about \d+\.\d GiB to train but"):
        train_sae(tiny_lm, "model.layers.0", [CORPUS], out_dir=tmp_path, **{**SMALL, "features": 1_000_000_000})
    assert not any(tmp_path.iterdir())


def test_a_run_holds_its_folder(tiny_lm, tmp_path):
    from dreamy.core.folders import LOCK_NAME, OutDirError

    held = []

    def look(step, stats):
        held.append((tmp_path / LOCK_NAME).exists())
        with pytest.raises(OutDirError, match="in use"):  # another thread of this process is refused too
            import threading

            errors = []
            thread = threading.Thread(target=lambda: errors.append(_try(tiny_lm, tmp_path)))
            thread.start()
            thread.join()
            raise errors[0]

    train_sae(tiny_lm, "model.layers.0", [CORPUS], out_dir=tmp_path, callback=look, **{**SMALL, "tokens": 128})
    assert held == [True] and not (tmp_path / LOCK_NAME).exists()


def _try(lm, folder):
    try:
        train_sae(lm, "model.layers.0", [CORPUS], out_dir=folder, resume=True, **SMALL)
    except Exception as error:  # handed to the test thread
        return error
    return AssertionError("a second run was let in")


def test_windows_longer_than_the_model_context_are_refused(tiny_lm, tmp_path):
    with pytest.raises(SAERunError, match="windows of 300 tokens .* longer than the 256 positions 'tiny:lm'"):
        train_sae(tiny_lm, "model.layers.0", [CORPUS], out_dir=tmp_path / "x", **{**SMALL, "window": 300,
                                                                                   "batch_tokens": 600})
    assert not (tmp_path / "x").exists()
