"""The steering check (Arad, Mueller & Belinkov 2025): add `alpha * u` at a target's site while the model
continues neutral prompts; the input score, the output score and the fluency cost of the steered continuations.

- `steer(loaded, target, config, windows=...)` / `steer_many` (steer.py) with `SteerConfig` (config.py) ->
  `SteerResult`; `steering_direction`, `promoted_tokens`, `input_score`, `rank_output_score`, `generate`.

Example:
    >>> from dreamy.models import load
    >>> result = steer(load("tiny:lm"), "model.layers.1:3", prompts=("A dog",), new_tokens=2, top_k=3)
    >>> sorted(result.to_records()[0])[:3]
    ['alpha', 'alpha_source', 'continuations']
"""

from dreamy.steering.config import NEUTRAL_PROMPTS, SteerConfig
from dreamy.steering.steer import (Continuation, SteerResult, continuation_xentropy, generate, input_score,
                                   promoted_tokens, rank_output_score, site_norm, steer, steer_many,
                                   steering_direction, top_activating_tokens)

__all__ = ["Continuation", "NEUTRAL_PROMPTS", "SteerConfig", "SteerResult", "continuation_xentropy", "generate",
           "input_score", "promoted_tokens", "rank_output_score", "site_norm", "steer", "steer_many",
           "steering_direction", "top_activating_tokens"]
