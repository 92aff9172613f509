"""Runs recorded before method configs: their settings dicts read as the configs they meant, so `--resume`
still accepts a folder an older dreamy wrote (or refuses it saying why).

Before configs, a run's settings were what the command line passed on: images `steps`, `param`, `lr`,
`n_per_target`, `diversity`, `regularizers`, `image_size`; prompts `method`, `n_tokens`, `iters`, `topk`,
`prefix`, `suffix`, `describe`, and `population` + `children_per_member` (EPO) or `batch_size` (GCG). Unset
keys meant the library's defaults, which the configs keep.

Example:
    >>> config, describe = config_of_settings("prompt", {"method": "gcg", "n_tokens": 3, "batch_size": 4}, 0)
    >>> type(config).__name__, config.children, describe
    ('GCGConfig', 4, True)
"""

from __future__ import annotations

from typing import Any

from dreamy.core.config import Config
from dreamy.language.config import RENAMED, EPOConfig, GCGConfig
from dreamy.vision.config import DreamConfig


def config_of_settings(kind: Any, settings: dict[str, Any], seed: int) -> tuple[Config, bool]:
    """The config (and whether descriptions were on) that an old run's settings dict meant; `ValueError`
    (a `ConfigError`) for a kind or key no config has."""
    settings = dict(settings)
    if kind == "image":
        if "image_size" in settings and settings["image_size"] is not None:
            settings["image_size"] = tuple(settings["image_size"])
        return DreamConfig.build(seed=seed, **settings), True
    if kind != "prompt":
        raise ValueError(f"unknown run kind {kind!r}")
    method = settings.pop("method", "epo")
    describe = settings.pop("describe", True)
    renamed = {RENAMED.get(key, key): value for key, value in settings.items()}
    configs = {"epo": EPOConfig, "gcg": GCGConfig}
    if method not in configs:
        raise ValueError(f"unknown prompt method {method!r}")
    return configs[method].build(seed=seed, **renamed), bool(describe)
