"""The argument parser of `dream`: one subcommand per module, each of which builds its own flags.

`sites`, `image`, `prompt`, `sae-train`, `export`, `direction` and `dashboard` each add their parser (`add_parser` in
`cli.sites`, `cli.image`, `cli.prompt`, ...); this module only assembles them. The method flags of `image` and
`prompt` come from the configs' fields (`cli.flags`), with the library's defaults except where `--help` says the
command line differs on purpose (`cli.flags.CLI_DEFAULTS`, a quicker first run).

Example:
    >>> args = build_parser().parse_args(["image", "--out", "x"])
    >>> args.command, args.steps, args.model
    ('image', 128, 'bundled:efficientnet-lite0')
"""

from __future__ import annotations

import argparse

from dreamy.cli import dashboard, direction, export, image, prompt, sae_train, sites
from dreamy.cli.arguments import UsageError


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one `UsageError` line (exit 2), not argparse's usage dump."""

    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `dream` (subcommands sites, image, prompt, sae-train, export, direction)."""
    parser = _Parser(prog="dream", description="Dream the inputs that drive units of vision and language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in (sites, image, prompt, sae_train, export, direction, dashboard):
        command.add_parser(sub)
    return parser
