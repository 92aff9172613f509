"""`SteerConfig`: every knob of the steering check, with its default, checked when built.

Example:
    >>> SteerConfig().top_k, SteerConfig().new_tokens
    (20, 20)
    >>> SteerConfig(positions="first")
    Traceback (most recent call last):
    ...
    dreamy.core.config.ConfigError: SteerConfig.positions must be one of 'last', 'all', got 'first'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dreamy.core.config import Config, ConfigError, check_choice, check_int, check_number, set_field

# Neutral prompts (the paper's output score uses "From my experience,"; its generations start from short
# neutral openings like these).
NEUTRAL_PROMPTS = ("From my experience,", "I think that", "The other day,", "Let me tell you about",
                   "In my opinion,", "It is known that", "Once upon a time,", "Yesterday I")
POSITIONS = ("last", "all")


@dataclass(frozen=True)
class SteerConfig(Config):
    """How `dreamy.steering.steer` steers a target's direction and scores it (Arad, Mueller & Belinkov 2025).

    - The steering vector is `alpha * u`, `u` the target's direction scaled to unit norm. `alpha` (None: the
      default) is `scale` times the mean norm of the site's activation over the neutral prompts' tokens (after
      the start token), so one `scale` means the same strength at any site; a number sets `alpha` itself. The
      default 1.5 is the paper's strength on SmolLM2's `model.layers.9` SAE (`benchmarks/steering_scores.py`:
      10 times the largest SAE activation at the neutral prompts' last tokens is about 1.5 times the site's
      activation norm there).
    - `positions`: `last` (the paper's hook: the prompt's last token and every generated token) or `all` (every
      position after the start token).
    - `prompts`: the neutral prompts; each is continued by `new_tokens` tokens, greedily when `temperature` is
      0 (the default), else sampled at that temperature from a generator seeded with `seed`.
    - `top_k`: how many logit-lens tokens (the final norm and the unembedding applied to `u`) stand for what the
      target promotes (the paper's k = 20); `max_windows`: at most that many top activating dataset windows go
      into the input score (the paper's 100).
    """

    kind: ClassVar[str] = "steer"

    alpha: float | None = None
    scale: float = 1.5
    positions: str = "last"
    prompts: tuple[str, ...] = NEUTRAL_PROMPTS
    new_tokens: int = 20
    temperature: float = 0.0
    top_k: int = 20
    max_windows: int = 100
    seed: int = 0

    def check(self) -> None:
        check_number(self, "alpha", optional=True)
        check_number(self, "scale", minimum=0)
        check_choice(self, "positions", POSITIONS)
        prompts = (self.prompts,) if isinstance(self.prompts, str) else tuple(self.prompts)
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ConfigError(f"SteerConfig.prompts must be one or more non-empty texts, got {self.prompts!r}")
        set_field(self, "prompts", prompts)
        check_int(self, "new_tokens", minimum=1)
        check_number(self, "temperature", minimum=0)
        check_int(self, "top_k", minimum=1)
        check_int(self, "max_windows", minimum=1)
        check_int(self, "seed", minimum=0)


__all__ = ["NEUTRAL_PROMPTS", "POSITIONS", "SteerConfig"]
