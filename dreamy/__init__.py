"""dreamy: activation maximization ("dreaming") for vision and language models.

Example:
    >>> import dreamy
    >>> target = dreamy.parse("conv2:3")
    >>> str(target)
    'conv2:3'
"""

from __future__ import annotations

from typing import Any

from dreamy.targets import Probe, Target, parse

__version__ = "0.1.0"

__all__ = ["LoadedModel", "Probe", "Target", "load", "parse", "__version__"]


def __getattr__(name: str) -> Any:
    # models pulls in transformers; import it only when asked for
    if name in ("load", "LoadedModel"):
        from dreamy import models

        return getattr(models, name)
    raise AttributeError(f"module 'dreamy' has no attribute {name!r}")
