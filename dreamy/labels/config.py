"""`LabelConfig`: every knob of the token-space label search, with its default, checked when built.

Example:
    >>> LabelConfig().answers
    (' Yes', ' No')
    >>> LabelConfig(template="Is it about{label}?")
    Traceback (most recent call last):
    ...
    dreamy.core.config.ConfigError: LabelConfig.template must hold {text} and then {label} (the text comes first, so its part of the prompt is computed once), got 'Is it about{label}?'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dreamy.core.config import Config, ConfigError, check_bool, check_choice, check_int, check_number, set_field

TEMPLATE = 'Text: "{text}"\nDoes the text mention{label}? Answer:'


@dataclass(frozen=True)
class LabelConfig(Config):
    """How `dreamy.labels.token_labels` searches for a one-token label of a target (Schulz & Fallows 2025).

    - `template`: the judge's prompt; `{text}` is a window's text, `{label}` the relaxed label token (a word token
      with its leading space fits `...mention{label}?`); the judge's answer is the logit of `answers[0]` minus that
      of `answers[1]` at the last token.
    - The windows: the `active` most activating ones and `inactive` drawn (seeded) from those at or below the
      `inactive_quantile` of all windows' activations; each shown as the `context` tokens ending at its most
      activating token; `heldout` of each kind held out for the accuracy.
    - The search: `steps` Adam steps (`lr`) on the label's logits over the candidate tokens (`words_only`: tokens
      that are a space and a word of at least two letters), `batch_size` windows per step, minimizing the judge's
      cross-entropy at telling active from inactive windows (through a learned bias) plus `entropy_weight` times
      the label distribution's entropy plus `fluency_weight` times its KL divergence from the judge's own next-token
      distribution at the label's position.
    - `top` label tokens are reported, each scored as a hard token; `seed` draws the windows and the split.
    """

    kind: ClassVar[str] = "labels"

    template: str = TEMPLATE
    answers: tuple[str, str] = (" Yes", " No")
    active: int = 32
    inactive: int = 32
    inactive_quantile: float = 0.5
    context: int = 16
    heldout: float = 0.25
    steps: int = 40
    lr: float = 0.3
    batch_size: int = 16
    entropy_weight: float = 0.05
    fluency_weight: float = 0.02
    words_only: bool = True
    relaxation: str = "soft"
    top: int = 5
    seed: int = 0

    def check(self) -> None:
        if not isinstance(self.template, str) or "{text}" not in self.template or "{label}" not in self.template \
                or self.template.index("{text}") > self.template.index("{label}"):
            raise ConfigError(f"LabelConfig.template must hold {{text}} and then {{label}} (the text comes first, so its "
                              f"part of the prompt is computed once), got {self.template!r}")
        answers = tuple(self.answers)
        if len(answers) != 2 or not all(isinstance(a, str) and a for a in answers) or answers[0] == answers[1]:
            raise ConfigError(f"LabelConfig.answers must be two different texts (yes, no), got {self.answers!r}")
        set_field(self, "answers", answers)
        for name in ("active", "inactive", "steps", "batch_size", "top"):
            check_int(self, name, minimum=1)
        check_int(self, "context", minimum=2)
        check_int(self, "seed", minimum=0)
        check_number(self, "inactive_quantile", minimum=0)
        if self.inactive_quantile > 1:
            raise ConfigError(f"LabelConfig.inactive_quantile is a quantile in [0, 1], got {self.inactive_quantile!r}")
        check_number(self, "heldout", above=0)
        if self.heldout >= 1:
            raise ConfigError(f"LabelConfig.heldout is a share of the windows, below 1, got {self.heldout!r}")
        check_number(self, "lr", above=0)
        check_number(self, "entropy_weight", minimum=0)
        check_number(self, "fluency_weight", minimum=0)
        check_bool(self, "words_only")
        check_choice(self, "relaxation", ("soft", "gumbel"))


__all__ = ["LabelConfig", "TEMPLATE"]
