"""Shared models for the tests: tiny seeded models (fast) and the bundled real models (second tier)."""

from __future__ import annotations

import functools

from dreamy.models import LoadedModel, load


@functools.lru_cache(maxsize=None)
def cached(name: str) -> LoadedModel:
    """Load `name` once per test session (tests must not modify the returned model)."""
    return load(name)
