"""Pytest fixtures: tiny models for unit tests, bundled real models for the `real` tier."""

import pytest

from tests.fixtures import cached


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
