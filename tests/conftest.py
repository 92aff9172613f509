"""Pytest fixtures: tiny models for unit tests, bundled real models for the `real` tier."""

import os
import tempfile
from pathlib import Path

import pytest

from tests.fixtures import cached

# What a run finds cached and reuses without a word (dataset maxima, token streams) must not leak between test
# sessions or from the user's own runs: each session gets its own dreamy cache, with the user's converted model
# weights linked in (they are the same files whoever made them, and slow to remake).
FRESH_PER_SESSION = {"maxima", "tokens"}


def pytest_configure(config):
    from dreamy.models.loading import cache_dir

    user = cache_dir()
    session = Path(tempfile.mkdtemp(prefix="dreamy-test-cache-"))
    if user.is_dir():
        for entry in user.iterdir():
            if entry.name not in FRESH_PER_SESSION:
                (session / entry.name).symlink_to(entry.resolve())
    os.environ["DREAMY_CACHE"] = str(session)


@pytest.fixture(scope="session")
def tiny_cnn():
    return cached("tiny:cnn")


@pytest.fixture(scope="session")
def tiny_lm():
    return cached("tiny:lm")


@pytest.fixture(scope="session")
def efficientnet():
    return cached("bundled:efficientnet-lite0")


@pytest.fixture(scope="session")
def smollm2():
    return cached("bundled:smollm2-135m")
