"""`SAETrainConfig`: every knob of training a TopK sparse autoencoder, with its default, checked when built.

Example:
    >>> SAETrainConfig(features=512, k=16).lr_or_default
    0.00565685424949238
    >>> SAETrainConfig(features=8, k=9)
    Traceback (most recent call last):
    ...
    dreamy.core.config.ConfigError: SAETrainConfig.k 9 must be <= features 8
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from dreamy.core.config import Config, ConfigError, check_int, check_number

AUX_COEF = 1 / 32


@dataclass(frozen=True)
class SAETrainConfig(Config):
    """How `dreamy.sae.train_sae` trains (Gao et al. 2024: TopK, AuxK against dead latents).

    - `features` latents, `k` active per token, `tokens` training tokens in windows of `window` tokens, `batch_tokens`
      per Adam step (`lm_batch_tokens` per LM forward), `lr` (None: 2e-3 at 4096 features, scaled by
      1/sqrt(features/4096)).
    - AuxK: `aux_k` dead latents (None: d_in / 2), coefficient `aux_coef`; a latent is dead after `aux_dead_tokens`
      tokens without firing.
    - `heldout_tokens` are kept out of training for the figures; `max_words` cuts each corpus; a checkpoint every
      `checkpoint_every` steps; `seed` draws the windows and the initialization.
    """

    kind: ClassVar[str] = "sae"

    features: int = 4096
    k: int = 32
    tokens: int = 1_000_000
    batch_tokens: int = 2048
    lm_batch_tokens: int = 4096
    lr: float | None = None
    window: int = 64
    seed: int = 0
    checkpoint_every: int = 50
    aux_k: int | None = None
    aux_coef: float = AUX_COEF
    aux_dead_tokens: int = 50_000
    heldout_tokens: int = 8192
    max_words: int | None = None

    @property
    def method(self) -> str:
        return "topk-sae"

    @property
    def lr_or_default(self) -> float:
        """`lr`, or the default for this many features."""
        return 2e-3 / math.sqrt(self.features / 4096) if self.lr is None else self.lr

    def check(self) -> None:
        for name in ("features", "k", "tokens", "batch_tokens", "lm_batch_tokens", "window", "checkpoint_every",
                     "heldout_tokens", "aux_dead_tokens"):
            check_int(self, name, minimum=1)
        check_int(self, "seed", minimum=0)
        check_int(self, "aux_k", minimum=1, optional=True)
        check_int(self, "max_words", minimum=1, optional=True)
        check_number(self, "lr", above=0, optional=True)
        check_number(self, "aux_coef", minimum=0)
        if self.k > self.features:
            raise ConfigError(f"SAETrainConfig.k {self.k} must be <= features {self.features}")
        if self.window < 2:
            raise ConfigError(f"SAETrainConfig.window must be >= 2 tokens, got {self.window}")


__all__ = ["AUX_COEF", "SAETrainConfig"]
