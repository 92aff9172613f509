"""Command-line flags built from a method config's fields, and the config built back from them.

A flag's name, type, help and default come from its config field: the help text from the config's
`field_help`, the default from the field's own (so `--help` states the library's default as the code has it,
never a copy). Where the command line differs on purpose, its default is in `CLI_DEFAULTS` (one table) and
`--help` states both. A flag that serves several configs whose defaults differ (`dream prompt --topk`: EPO 128,
GCG 64) defaults to None and each config keeps its own. `config_from_flags` builds the config through
`Config.build`, so a bad value is the config's one-line message, named after the flag the user typed.

Example:
    >>> import argparse
    >>> from dreamy.language import EPOConfig, GCGConfig
    >>> parser = argparse.ArgumentParser()
    >>> add_config_flags(parser, (EPOConfig, GCGConfig), ["iters", "tokens=n_tokens", "topk"],
    ...                  cli_defaults={"iters": 50})
    >>> args = parser.parse_args(["--tokens", "5"])
    >>> args.iters, args.tokens, args.topk
    (50, 5, None)
    >>> config = config_from_flags(args, GCGConfig, ["iters", "tokens=n_tokens", "topk"])
    >>> config.iters, config.n_tokens, config.topk
    (50, 5, 64)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any, Mapping, Sequence

from dreamy.cli.arguments import UsageError, pack_size, positive, weight_range
from dreamy.core.config import Config, ConfigError

# The one table of default models: what `dream image|prompt|sae-train|direction` load without `--model`,
# by what the model reads.
DEFAULT_MODELS = {"image": "bundled:efficientnet-lite0", "text": "bundled:smollm2-135m"}

# The command line's own defaults where they differ from the library's (flag -> value, per command): a first
# run on a CPU should finish in minutes, so the command line searches less than a method's defaults, which are
# tuned for quality (`benchmarks/epo_defaults`, `benchmarks/epo_vs_reference`). `--help` states both values.
CLI_DEFAULTS: dict[str, dict[str, Any]] = {
    "image": {"steps": 128},  # a quick first gallery
    "prompt": {"iters": 50, "tokens": 10, "population": 6, "children": 32,  # a quick first search
               "steer-prompts": 4},  # neutral prompts continued per target: a few continuations on each card
}


def flag_fields(fields: Sequence[str]) -> dict[str, str]:
    """Flag name -> field name of `fields`, each "name" (the flag is the field, `_` written `-`) or "flag=field".

    Example:
        >>> flag_fields(["n_per_target", "tokens=n_tokens"])
        {'n-per-target': 'n_per_target', 'tokens': 'n_tokens'}
    """
    pairs = [item.split("=", 1) if "=" in item else (item.replace("_", "-"), item) for item in fields]
    return {flag: field for flag, field in pairs}


def library_default(config: type[Config], field: str) -> Any:
    """The default of `field` in `config` as the code states it (`dataclasses.MISSING` when it has none).

    Example:
        >>> from dreamy.language import EPOConfig
        >>> library_default(EPOConfig, "fluency_weight_range")
        (0.1, 30.0)
    """
    for spec in dataclasses.fields(config):
        if spec.name == field:
            if spec.default is not dataclasses.MISSING:
                return spec.default
            if spec.default_factory is not dataclasses.MISSING:
                return spec.default_factory()
    return dataclasses.MISSING


def field_help(config: type[Config], field: str) -> str:
    """What `field` of `config` means, from the `field_help` of the config or of a base class ("" when none).

    Example:
        >>> from dreamy.language import GCGConfig
        >>> field_help(GCGConfig, "iters")
        'search iterations'
    """
    for klass in config.__mro__:
        text = vars(klass).get("field_help", {}).get(field)
        if text:
            return text
    return ""


def shown(value: Any) -> str:
    """A default as `--help` writes it: whole numbers in full, others in %g, a pair as LOW,HIGH, text quoted when
    empty.

    Example:
        >>> shown(1_000_000), shown(30.0), shown((0.1, 30.0)), shown(""), shown("fp32")
        ('1000000', '30', '0.1,30', "''", 'fp32')
    """
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "%g" % value
    if isinstance(value, tuple):
        return ",".join(shown(v) for v in value)
    return value if value else repr(value)


def _flag_type(config: type[Config], field: str) -> Any:
    """The argparse type of a field's annotation: int, float, text, or a LOW,HIGH pair of floats."""
    hint = typing.get_type_hints(config).get(field, str)
    kinds = [k for k in typing.get_args(hint) if k is not type(None)] if typing.get_origin(hint) is not None else [hint]
    if typing.get_origin(hint) is tuple or any(typing.get_origin(k) is tuple for k in kinds):
        return weight_range
    for kind in (int, float):
        if kind in kinds:
            return kind
    return str


def add_config_flags(parser: argparse.ArgumentParser, configs: type[Config] | Sequence[type[Config]],
                     fields: Sequence[str], *, cli_defaults: Mapping[str, Any] | None = None,
                     options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Add one flag per field of `configs` (one config class, or several one command chooses between).

    `fields` as in `flag_fields`; the help is the field's `field_help` (or `options[flag]["help"]`) with the
    default stated; the type follows the annotation unless `options[flag]` gives one (a stricter argparse type,
    `choices`, a `metavar`). The default is `cli_defaults[flag]` where given, else the library's when every config
    has the field with the same default, else None (each config keeps its own).

    Example:
        >>> from dreamy.vision import DreamConfig
        >>> parser = argparse.ArgumentParser()
        >>> add_config_flags(parser, DreamConfig, ["steps", "lr"], cli_defaults={"steps": 128})
        >>> parser._option_string_actions["--steps"].help
        "optimizer steps (default 128; the library's DreamConfig: 256)"
        >>> parser.parse_args([]).lr
        0.05
    """
    configs = (configs,) if isinstance(configs, type) else tuple(configs)
    cli_defaults = cli_defaults or {}
    for flag, field in flag_fields(fields).items():
        having = [c for c in configs if library_default(c, field) is not dataclasses.MISSING]
        if not having:
            raise ValueError(f"no config of {', '.join(c.__name__ for c in configs)} has a field {field!r}")
        library = {c.__name__: library_default(c, field) for c in having}
        settings = dict((options or {}).get(flag, {}))
        text = settings.pop("help", None) or field_help(having[0], field)
        values = set(map(shown, library.values()))
        same = len(values) == 1 and len(having) == len(configs)
        stated = ", ".join(name if value is None else f"{name}: {shown(value)}" for name, value in library.items())
        if len(values) == 1 and len(library) > 1:  # one value for all: stated once
            stated = "/".join(library) + ("" if None in library.values() else f": {values.pop()}")
        if flag in cli_defaults:
            default = cli_defaults[flag]
            note = f"default {shown(default)}; the library's {stated}"
        elif same:
            default = next(iter(library.values()))
            note = "" if default is None else f"default {shown(default)}"
        else:
            default = None
            note = f"default: the library's {stated}"
        settings.setdefault("type", _flag_type(having[0], field))
        if "choices" in settings:
            settings.pop("type")
        help_text = f"{text} ({note})" if note else text
        parser.add_argument(f"--{flag}", default=default, help=help_text.replace("%", "%%"), **settings)


def config_from_flags(args: argparse.Namespace, config: type[Config], fields: Sequence[str], *,
                      extra: Mapping[str, Any] | None = None) -> Config:
    """The `config` the flags of `fields` ask for (with the field values `extra`), through `Config.build`.

    A flag left at None keeps the config's default, a flag whose field `config` lacks is not its; a value the
    config refuses is a `UsageError`: the flag the user typed, then the config's one line.

    Example:
        >>> from dreamy.language import EPOConfig
        >>> config_from_flags(argparse.Namespace(population=0), EPOConfig, ["population"])
        Traceback (most recent call last):
        ...
        dreamy.cli.arguments.UsageError: --population: EPOConfig.population must be >= 1, got 0
    """
    known = set(config.field_names())
    mapping = {flag: field for flag, field in flag_fields(fields).items() if field in known}
    settings = {field: getattr(args, flag.replace("-", "_")) for flag, field in mapping.items()}
    settings = {field: value for field, value in settings.items() if value is not None}
    settings.update(extra or {})
    try:
        return config.build(**settings)
    except ConfigError as error:
        message = str(error)
        named = [flag for flag, field in mapping.items() if re.search(rf"\b{config.__name__}\.{field}\b", message)]
        raise UsageError(f"--{named[0]}: {message}" if named else message) from error


def add_run_flags(parser: argparse.ArgumentParser, kind: str) -> None:
    """The flags every dream command (`image`, `prompt`) shares: the model, the targets, the output folder, how
    the run is packed and sharded, the maxima.

    Example:
        >>> parser = argparse.ArgumentParser(); add_run_flags(parser, "image")
        >>> args = parser.parse_args(["--out", "x"]); args.model, args.batch_targets, args.ray
        ('bundled:efficientnet-lite0', 8, None)
    """
    parser.add_argument("--model", default=DEFAULT_MODELS["image" if kind == "image" else "text"],
                        help="model name (default: %(default)s)")
    parser.add_argument("--target", action="append", default=[],
                        help="target spec; repeat for more; ranges like layer:0-63 expand")
    parser.add_argument("--out", required=True, help="output folder for results.json, index.html and PNGs")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resume", action="store_true", help="skip targets already finished in --out (same run only)")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of another run in --out")
    parser.add_argument("--batch-targets", type=pack_size, default=8, metavar="N|auto",
                        help="targets per shared batch, or auto: as many as the device's free memory holds at a "
                             "footprint measured on one step (default %(default)s)")
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="shard over a Ray cluster (no address: start a local one)")
    parser.add_argument("--workers", type=positive(int), default=None,
                        help="Ray workers (default: one per GPU of the cluster with --device cuda, each given one GPU; "
                             "else 2)")
    parser.add_argument("--maxima", default=None, metavar="DATASET",
                        help="also find dataset maxima (images: photos, fashion-mnist, a folder; text: fortunes, "
                             "bible-kjv, a file, a table: a datasets folder, .jsonl, .parquet or .csv, or hf:NAME[:SPLIT])")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
