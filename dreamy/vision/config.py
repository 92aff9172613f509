"""`DreamConfig`: every knob of an image dream, with its default, checked when built.

Example:
    >>> DreamConfig(steps=64, regularizers={"tv": 0.1}).steps
    64
    >>> DreamConfig(param="wavelet")
    Traceback (most recent call last):
    ...
    dreamy.core.config.ConfigError: DreamConfig.param must be one of 'pixel', 'fourier', 'maco', 'dip', 'decoder' or a parametrization object, got 'wavelet'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

from dreamy.core.config import Config, ConfigError, check_int, check_number, set_field
from dreamy.vision.param import PARAMETRIZATIONS, size_error
from dreamy.vision.regularizers import REGULARIZERS

REGULARIZER_NAMES = (*REGULARIZERS, "pull")
PRECISIONS = ("fp32", "bf16")  # DreamConfig.precision: bf16 autocasts each step on CUDA only


@dataclass(frozen=True)
class DreamConfig(Config):
    """How `dreamy.vision.dream` dreams images (one row per target and image, all in one batch).

    - `param`: `"pixel"`, `"fourier"`, `"maco"`, `"dip"` (deep image prior), `"decoder"` (the latent of a frozen
      random decoder), or a parametrization object with one image per row (`ImageParam(photos)`, ...).
    - `steps`, `lr`: Adam steps and learning rate (`optimizer`, a factory `params -> Optimizer`, replaces Adam).
    - `image_size`: the dream's (H, W); default the model's input size.
    - `n_per_target`: images per target (rows are target-major).
    - `transforms`: a `Transforms`; default `Transforms.standard(image_size)`, `Transforms()` for none.
    - `regularizers`: `{"tv": 0.1, "l2": 0.05, "pull": 1.0, callable: weight}` (names in `REGULARIZER_NAMES`).
    - `diversity`: weight of the Gram-matrix diversity term among a target's images, at its own site or at
      `diversity_site`.
    - `snapshot_steps`: steps after which the images are kept; `plateau`: stop once the mean objective has not
      improved (by `plateau_tol`, relative) for this many steps.
    - `seed`: every random draw comes from one generator seeded with it.
    - `precision`: `"fp32"` (the default), or `"bf16"`: each step's forward and backward under a bfloat16
      autocast, on CUDA only (refused elsewhere); the images, the optimizer and the final activations stay fp32.
      Not a default until its quality is checked against fp32 on the transfer benchmark.
    The command line's `dream image` runs 128 steps by default (a quick first gallery); the library 256.
    """

    kind: ClassVar[str] = "image"
    # what each field means, in a line (the command line's --help reads it)
    field_help: ClassVar[Mapping[str, str]] = {
        "param": "how the image is parametrized", "steps": "optimizer steps", "lr": "Adam's learning rate",
        "image_size": "the dream's height and width in pixels (by default the model's input size)",
        "n_per_target": "images per target", "diversity": "weight of the diversity term among a target's images",
        "seed": "seed of every random draw",
        "precision": "fp32, or bf16: each step under a bfloat16 autocast, CUDA only"}

    param: Any = "fourier"
    steps: int = 256
    lr: float = 0.05
    image_size: tuple[int, int] | None = None
    n_per_target: int = 1
    transforms: Any = None
    regularizers: Mapping[Any, float] = field(default_factory=dict)
    diversity: float = 0.0
    diversity_site: str | None = None
    optimizer: Callable[..., Any] | None = None
    snapshot_steps: tuple[int, ...] = ()
    plateau: int | None = None
    plateau_tol: float = 1e-3
    seed: int = 0
    precision: str = "fp32"

    @property
    def method(self) -> str:
        """The parametrization's name (what image records carry as their method)."""
        return self.param if isinstance(self.param, str) else type(self.param).__name__

    def check(self) -> None:
        if isinstance(self.param, str) and self.param not in PARAMETRIZATIONS:
            raise ConfigError(f"DreamConfig.param must be one of {', '.join(repr(p) for p in PARAMETRIZATIONS)} "
                              f"or a parametrization object, got {self.param!r}")
        check_int(self, "steps", minimum=1)
        check_number(self, "lr", above=0)
        check_int(self, "n_per_target", minimum=1)
        check_number(self, "diversity", minimum=0)
        check_int(self, "plateau", minimum=1, optional=True)
        check_number(self, "plateau_tol", minimum=0)
        check_int(self, "seed", minimum=0)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"DreamConfig.precision must be one of {', '.join(map(repr, PRECISIONS))}, got "
                              f"{self.precision!r}")
        if self.image_size is not None:
            size = tuple(self.image_size)
            if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
                raise ConfigError(f"DreamConfig.image_size must be (height, width) in pixels, got {self.image_size!r}")
            set_field(self, "image_size", size)
            if isinstance(self.param, str) and size_error(self.param, size):
                raise ConfigError(f"DreamConfig.image_size: {size_error(self.param, size)}")
        regularizers = dict(self.regularizers or {})
        for key, weight in regularizers.items():
            if isinstance(key, str) and key not in REGULARIZER_NAMES:
                raise ConfigError(f"DreamConfig.regularizers: unknown regularizer {key!r}; use one of "
                                  f"{', '.join(REGULARIZER_NAMES)} or a callable images -> [n] penalty")
            if not isinstance(key, str) and not callable(key):
                raise ConfigError(f"DreamConfig.regularizers: keys are names or callables, got {key!r}")
            if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight < 0:
                raise ConfigError(f"DreamConfig.regularizers[{key!r}] is a weight >= 0, got {weight!r}")
        set_field(self, "regularizers", regularizers)
        set_field(self, "snapshot_steps", tuple(self.snapshot_steps))
        if self.diversity_site is not None and not isinstance(self.diversity_site, str):
            raise ConfigError(f"DreamConfig.diversity_site must be a site name such as 'layer3', got {self.diversity_site!r}")


__all__ = ["DreamConfig", "REGULARIZER_NAMES"]
