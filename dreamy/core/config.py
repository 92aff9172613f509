"""What every method's config shares: a frozen dataclass, checked when it is built, printable and JSON-able.

A config holds every knob of one method with its default (`DreamConfig`, `EPOConfig`, `GCGConfig`,
`SAETrainConfig`). `Config.build(config, **overrides)` is how entry points take settings: an unknown name is
one `ConfigError` naming it (with the closest known names), an out-of-range value one naming the field and
its value, both before any model work. `to_dict()` is the JSON-able form a run's fingerprint is made of.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Toy(Config):
    ...     steps: int = 4
    ...     def check(self) -> None:
    ...         check_int(self, "steps", minimum=1)
    >>> Toy.build(steps=8)
    Toy(steps=8)
    >>> Toy.build(stpes=8)
    Traceback (most recent call last):
    ...
    dreamy.core.config.ConfigError: unknown Toy setting 'stpes'; did you mean 'steps'? (Toy settings: steps)

The constructor refuses an unknown or renamed name the same way (`Toy(stpes=8)`, not a raw `TypeError`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, ClassVar, Mapping, Sequence, TypeVar

C = TypeVar("C", bound="Config")
SEED_LIMIT = 2 ** 64  # torch generators take seeds below this


class ConfigError(ValueError):
    """A setting that does not exist, or a value out of its range; the message names the field."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of the method configs (see the module docstring). Subclasses add fields and a `check()`.

    `kind` says what a run of this config dreams ("image", "prompt") or makes ("sae"); `method` names the
    method in records ("epo", "gcg", the image parametrization...). `renamed` maps old setting names to the
    new ones, so an old name gets a message that says what it is called now.
    """

    kind: ClassVar[str] = ""
    renamed: ClassVar[Mapping[str, str]] = {}

    def __new__(cls, *args: Any, **kwargs: Any) -> "Config":
        """Refuse a keyword the config has no field for as `build` does (a `ConfigError` naming the closest
        known names, or what an old name is called now), before the dataclass `__init__` raises a raw `TypeError`."""
        _refuse_unknown(cls, kwargs)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        self.check()
        seed = getattr(self, "seed", None)
        if isinstance(seed, int) and not 0 <= seed < SEED_LIMIT:
            raise _fail(self, "seed", "must be in [0, 2**64) (the generators' seed range)")

    def check(self) -> None:
        """Raise `ConfigError` for a value out of range (subclasses)."""

    @property
    def method(self) -> str:
        """The method's name as records carry it."""
        return self.kind

    @classmethod
    def field_names(cls) -> list[str]:
        """The settings this config has, in order.

        Example:
            >>> Config.field_names()
            []
        """
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def build(cls: type[C], config: "C | None" = None, /, **overrides: Any) -> C:
        """`config` (default: all defaults) with `overrides` applied; `ConfigError` for an unknown name.

        Example:
            >>> Config.build() == Config()
            True
        """
        _refuse_unknown(cls, overrides)
        if config is None:
            return cls(**overrides)
        if not isinstance(config, cls):
            raise ConfigError(f"expected a {cls.__name__}, got {type(config).__name__}; "
                              f"build one with {cls.__name__}(...) or pass settings as keywords")
        return dataclasses.replace(config, **overrides) if overrides else config

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able values (tuples as lists; objects such as a parametrization or an optimizer
        factory by their repr, so a run that holds one fingerprints by it).

        Example:
            >>> Config().to_dict()
            {}
        """
        return {f.name: json_value(getattr(self, f.name)) for f in dataclasses.fields(self)}


def unknown_setting(owner: str, name: str, known: Sequence[str], renamed: Mapping[str, str] | None = None) -> str:
    """The message for a setting `owner` does not have: what it was renamed to, or the closest known names.

    Example:
        >>> unknown_setting("EPOConfig", "children_per_member", ["children"], {"children_per_member": "children"})
        "EPOConfig has no setting 'children_per_member': it is called 'children' now"
    """
    if renamed and name in renamed:
        return f"{owner} has no setting {name!r}: it is called {renamed[name]!r} now"
    close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"unknown {owner} setting {name!r}; {hint}({owner} settings: {', '.join(known)})"


def _refuse_unknown(cls: type[Config], names: Mapping[str, Any]) -> None:
    """`ConfigError` for the first of `names` that config class `cls` has no field for."""
    known = [f.name for f in dataclasses.fields(cls)]
    for name in names:
        if name not in known:
            raise ConfigError(unknown_setting(cls.__name__, name, known, cls.renamed))


def json_value(value: Any) -> Any:
    """`value` as JSON can hold it: numbers, strings, None, lists and string-keyed dicts; anything else by repr.

    Example:
        >>> json_value({"tv": 0.1, print: 1.0}), json_value((1, 2)), json_value(float("nan"))
        ({'tv': 0.1, 'print': 1.0}, [1, 2], None)
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {(k if isinstance(k, str) else getattr(k, "__name__", repr(k))): json_value(v) for k, v in value.items()}
    return repr(value)


def _fail(config: Config, name: str, why: str) -> ConfigError:
    return ConfigError(f"{type(config).__name__}.{name} {why}, got {getattr(config, name)!r}")


def check_int(config: Config, name: str, *, minimum: int | None = None, optional: bool = False) -> None:
    """Refuse a field that is not an int (bools are not) or is below `minimum` (None passes when `optional`).

    Example:
        >>> check_int(_Example(steps=0), "steps", minimum=1)
        Traceback (most recent call last):
        ...
        dreamy.core.config.ConfigError: _Example.steps must be >= 1, got 0
    """
    value = getattr(config, name)
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(config, name, "must be an integer")
    if minimum is not None and value < minimum:
        raise _fail(config, name, f"must be >= {minimum}")


def check_number(config: Config, name: str, *, minimum: float | None = None, above: float | None = None,
                 optional: bool = False) -> None:
    """Refuse a field that is not a finite number, is below `minimum`, or not above `above`.

    Example:
        >>> check_number(_Example(lr=float("inf")), "lr", above=0)
        Traceback (most recent call last):
        ...
        dreamy.core.config.ConfigError: _Example.lr must be a finite number, got inf
    """
    value = getattr(config, name)
    if value is None and optional:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _fail(config, name, "must be a finite number")
    if minimum is not None and value < minimum:
        raise _fail(config, name, f"must be >= {minimum}")
    if above is not None and value <= above:
        raise _fail(config, name, f"must be > {above}")


def check_choice(config: Config, name: str, choices: Sequence[Any]) -> None:
    """Refuse a field whose value is not one of `choices`.

    Example:
        >>> check_choice(_Example(mode="c"), "mode", ("a", "b"))
        Traceback (most recent call last):
        ...
        dreamy.core.config.ConfigError: _Example.mode must be one of 'a', 'b', got 'c'
    """
    if getattr(config, name) not in choices:
        raise _fail(config, name, f"must be one of {', '.join(repr(c) for c in choices)}")


def check_bool(config: Config, name: str) -> None:
    """Refuse a field that is not True or False.

    Example:
        >>> check_bool(_Example(flag=1), "flag")
        Traceback (most recent call last):
        ...
        dreamy.core.config.ConfigError: _Example.flag must be True or False, got 1
    """
    if not isinstance(getattr(config, name), bool):
        raise _fail(config, name, "must be True or False")


def set_field(config: Config, name: str, value: Any) -> None:
    """Normalize a field of a frozen config while it is being checked (e.g. a list into a tuple).

    Example:
        >>> example = _Example(); set_field(example, "steps", 9); example.steps
        9
    """
    object.__setattr__(config, name, value)


@dataclasses.dataclass(frozen=True)
class _Example(Config):
    """A config for this module's examples."""

    steps: int = 4
    lr: float = 0.1
    mode: str = "a"
    flag: bool = True
