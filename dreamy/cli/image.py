"""The flags of `dream image` and the `DreamConfig` they ask for (the run itself is `cli.dream`).

Each `DreamConfig` field with a flag is listed in `FIELDS`; its help and default come from the config
(`cli.flags`), the command line's own default from `cli.flags.CLI_DEFAULTS`.

Example:
    >>> parser = argparse.ArgumentParser(prog="dream"); _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["image", "--out", "x", "--size", "64", "--tv", "0.1"])
    >>> config = config_of(args); config.steps, config.image_size, config.regularizers
    (128, (64, 64), {'tv': 0.1})
"""

from __future__ import annotations

import argparse
from typing import Any

from dreamy.cli.arguments import non_negative, positive
from dreamy.cli.flags import CLI_DEFAULTS, add_config_flags, add_run_flags, config_from_flags, field_help

# DreamConfig fields with a flag ("flag=field" where the flag is named otherwise); --size and the regularizer
# weights are flags of their own (one side of a square image; one flag per regularizer)
FIELDS = ["steps", "param", "lr", "precision", "per-target=n_per_target", "diversity", "seed"]
REGULARIZER_FLAGS = ("tv", "l1", "l2", "blur", "center")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `image` subcommand to `subparsers` (from `ArgumentParser.add_subparsers`); returns it.

    Example:
        >>> add_parser(argparse.ArgumentParser().add_subparsers()).prog.endswith("image")
        True
    """
    from dreamy.vision.config import PRECISIONS, DreamConfig
    from dreamy.vision.param import PARAMETRIZATIONS

    cmd = subparsers.add_parser("image", help="dream images for targets")
    add_run_flags(cmd, "image")
    add_config_flags(cmd, DreamConfig, FIELDS, cli_defaults=CLI_DEFAULTS["image"], options={
        "steps": {"type": positive(int)}, "param": {"choices": list(PARAMETRIZATIONS)},
        "lr": {"type": positive(float)}, "precision": {"choices": list(PRECISIONS)},
        "per-target": {"type": positive(int)}, "diversity": {"type": non_negative}})
    cmd.add_argument("--size", type=positive(int), default=None,
                     help=f"image side: {field_help(DreamConfig, 'image_size')}")
    cmd.add_argument("--judge", action="append", default=[], metavar="MODEL",
                     help="a classifier never optimized against that judges each class dream (repeatable), "
                          "e.g. bundled:efficientnet-lite1")
    for name in REGULARIZER_FLAGS:
        cmd.add_argument(f"--{name}", type=non_negative, default=0.0, help=f"weight of the {name} regularizer")
    # what `cli.dream.run` reads of a prompt run: an image run has no labels nor steering check, and is described
    cmd.set_defaults(describe=True, labels=False, steer=False)
    return cmd


def config_of(args: argparse.Namespace) -> Any:
    """The `DreamConfig` the flags of `dream image` ask for (`UsageError` naming the flag for a value it refuses).

    Example:
        >>> config_of(argparse.Namespace(steps=8, param="pixel", lr=0.1, precision="fp32", per_target=2,
        ...                              diversity=0.0, seed=0, size=None, **dict.fromkeys(REGULARIZER_FLAGS, 0.0))).steps
        8
    """
    from dreamy.vision.config import DreamConfig

    regularizers = {name: getattr(args, name) for name in REGULARIZER_FLAGS if getattr(args, name)}
    size = None if args.size is None else (args.size, args.size)
    return config_from_flags(args, DreamConfig, FIELDS, extra={"regularizers": regularizers, "image_size": size})
