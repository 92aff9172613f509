"""Errors raised for bad target specs and targets that do not fit a model."""

from __future__ import annotations


class TargetError(ValueError):
    """A target does not fit the model: unknown site, unit out of range, bad direction file."""


class SpecError(TargetError):
    """A target spec string is malformed; the message shows where.

    Example:
        >>> str(SpecError("expected a site name", "3*:1", 2)).splitlines()[1:]
        ['  3*:1', '    ^']
    """

    def __init__(self, message: str, spec: str, position: int) -> None:
        self.spec = spec
        self.position = position
        super().__init__(f"{message} at position {position} of spec '{spec}'\n  {spec}\n  {' ' * position}^")
