"""Result of a prompt search: the full history and the Pareto frontier of (activation, cross-entropy).

Example:
    >>> r = PromptResult("logits:5", [], [], {}, 0)
    >>> r.to_record()["frontier"]
    []
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class FrontierPoint:
    """One prompt on the frontier, with per-token attribution of its activation and where its line started."""

    text: str
    token_ids: list[int]
    activation: float
    xentropy: float
    tokens: list[str] = field(default_factory=list)
    token_attribution: list[float] = field(default_factory=list)
    origin: str = ""  # where its search line started: "random", "init", "window i" (see proposals.initial_members)


@dataclass
class PromptResult:
    """History rows are dicts: iteration, slot, fluency_weight (the slot's), text, token_ids, activation, xentropy."""

    target: str
    history: list[dict[str, Any]]
    frontier: list[FrontierPoint]
    settings: dict[str, Any]
    seed: int
    method: str = "epo"

    @property
    def best(self) -> FrontierPoint | None:
        """The frontier point with the highest activation."""
        return max(self.frontier, key=lambda p: p.activation, default=None)

    def best_below(self, xentropy: float) -> FrontierPoint | None:
        """The most activating frontier point with cross-entropy <= `xentropy`."""
        eligible = [p for p in self.frontier if p.xentropy <= xentropy]
        return max(eligible, key=lambda p: p.activation, default=None)

    def to_records(self) -> list[dict[str, Any]]:
        """`[to_record()]`: every method's results give their records the same way.

        Example:
            >>> PromptResult("logits:5", [], [], {}, 0).to_records()[0]["target"]
            'logits:5'
        """
        return [self.to_record()]

    def to_record(self, include_history: bool = False) -> dict[str, Any]:
        """A JSON-able record (the history is long; include it on request)."""
        record = {
            "kind": "prompt",
            "target": self.target,
            "method": self.method,
            "activation": self.best.activation if self.best else None,
            "frontier": [asdict(p) for p in self.frontier],
            "settings": self.settings,
            "seed": self.seed,
        }
        if include_history:
            record["history"] = self.history
        return record


class PromptResults(list):
    """The results of a search over many targets, one `PromptResult` per target in order.

    Example:
        >>> results = PromptResults([PromptResult("logits:5", [], [], {}, 0), PromptResult("logits:6", [], [], {}, 0)])
        >>> [r["target"] for r in results.to_records()]
        ['logits:5', 'logits:6']
    """

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-able record per target."""
        return [record for result in self for record in result.to_records()]
