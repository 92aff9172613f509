"""Concept directions from examples: learn a direction at a site from two example sets, test a class's dependence
on it (TCAV), and check that it acts (ablation).

- `learn_direction` / `direction_from_examples` (learn.py) with `DirectionConfig` (config.py): a logistic-regression
  CAV, the difference of means and the first principal component of paired differences, held-out accuracy and the
  cosines between them; `DirectionResult.save` writes a `dir=` file and its sidecar JSON (files.py).
- `site_features`, `target_gradients`, `read_examples` (examples.py): what a site makes of texts or images.
- `tcav` / `tcav_test` (tcav.py) with `TCAVConfig`: TCAV scores and the paper's t-test against random CAVs.
- `ablation_check` (ablation.py): project a direction out of a site and measure a two-token logit difference.
- `contrast_set` (contrast.py): the contrast pairs the project ships (`sentiment`).

Example:
    >>> from dreamy.models import load
    >>> result = direction_from_examples(load("tiny:lm"), "model.layers.1", ["Good.", "Nice.", "Fine."],
    ...                                  ["Bad.", "Vile.", "Poor."], heldout=0.0)
    >>> sorted(result.directions)
    ['logistic', 'mean_diff', 'pca']
"""

from dreamy.directions.config import DirectionConfig, TCAVConfig
from dreamy.directions.examples import read_examples, site_features, target_gradients
from dreamy.directions.files import read_sidecar, sidecar_path
from dreamy.directions.learn import DirectionResult, direction_from_examples, learn_direction, save_direction
from dreamy.directions.tcav import TCAVResult, tcav, tcav_score, tcav_test

__all__ = ["DirectionConfig", "DirectionResult", "TCAVConfig", "TCAVResult", "direction_from_examples",
           "learn_direction", "read_examples", "read_sidecar", "save_direction", "sidecar_path", "site_features",
           "target_gradients", "tcav", "tcav_score", "tcav_test"]
