"""dreamy: activation maximization ("dreaming") for vision and language models.

The package imports nothing heavy until a name is used (`dream` starts, and sets its signal handlers, before
torch loads).

Example:
    >>> import dreamy
    >>> target = dreamy.parse("conv2:3")
    >>> str(target)
    'conv2:3'
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["LoadedModel", "Probe", "Target", "load", "parse", "__version__"]

_LAZY = {"load": "dreamy.models", "LoadedModel": "dreamy.models", "Probe": "dreamy.targets", "Target": "dreamy.targets",
         "parse": "dreamy.targets"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dreamy' has no attribute {name!r}")
