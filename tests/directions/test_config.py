"""dreamy/directions/config.py: the configs refuse bad settings by name."""

import pytest

from dreamy.core.config import ConfigError
from dreamy.directions import DirectionConfig, TCAVConfig


def test_direction_config_normalizes_and_refuses():
    assert DirectionConfig(methods=["pca", "pca", "logistic"]).methods == ("pca", "logistic")
    assert DirectionConfig(methods="mean_diff").methods == ("mean_diff",)
    for bad, match in (({"heldout": 1.0}, "below 1"), ({"reduce": "pos=x"}, "pos=N"), ({"methods": ()}, "at least one"),
                       ({"l2": -1.0}, "l2 must be >= 0"), ({"steps": 0}, "steps must be >= 1")):
        with pytest.raises(ConfigError, match=match):
            DirectionConfig(**bad)


def test_tcav_config_follows_the_paper():
    assert TCAVConfig().random_runs == 10 and TCAVConfig().alpha == 0.05
    with pytest.raises(ConfigError, match="alpha is a significance level"):
        TCAVConfig(alpha=1.5)
    fit = TCAVConfig(reduce="center", l2=0.3).direction_config()
    assert fit.methods == ("logistic",) and fit.reduce == "center" and fit.l2 == 0.3
