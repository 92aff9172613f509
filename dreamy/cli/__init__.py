"""The `dream` command: list sites, dream images or prompts for many targets, train SAEs, write galleries.

    dream sites [MODEL]
    dream image  [--model M] [--target SPEC ...] --out DIR [--steps N] [--param fourier] [--resume] [--ray [ADDR]]
    dream prompt [--model M] --target SPEC [...] --out DIR [--method epo|gcg] [--iters N] [--resume] [--ray [ADDR]]
    dream sae-train --site SITE --corpus NAME --out DIR [...]
    dream direction --positive FILE|DIR --negative FILE|DIR --site SITE --out FILE.pt [...]

Without `--model`, `image` uses bundled:efficientnet-lite0 and `prompt` bundled:smollm2-135m. One module
per subcommand (`cli.sites`, `cli.dream`, `cli.sae_train`, `cli.direction`); flags in `cli.parser`. A bad command line is one
line on stderr and exit code 2, before any model loads where it can be known then. Ctrl-C or SIGTERM stops
the run (exit 130); finished targets are saved and `--resume` completes the rest. This package is the only
place that prints, parses arguments or names a flag.

Example:
    >>> main(["image", "--model", "tiny:cnn", "--target", "head:1", "--steps", "2", "--out", __import__("tempfile").mkdtemp(), "--quiet"])  # doctest: +ELLIPSIS
    1 target(s) dreamed, 0 failed; gallery: .../index.html
    0
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any, Sequence

from dreamy.cli.arguments import UsageError


def _interrupt_on_sigterm() -> Any:
    """SIGTERM stops a run the way Ctrl-C does (finished targets saved, the current batch not recorded).
    Returns the previous handler (None when SIGTERM cannot be set here, off the main thread)."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run `dream` with `argv` (default: the command line); returns the exit code."""
    previous = _interrupt_on_sigterm()  # first: a SIGTERM during start-up is an interrupt too
    logging.basicConfig(level=logging.WARNING, format="dream: %(message)s")
    try:
        from dreamy.cli import direction, dream, sae_train, sites
        from dreamy.cli.parser import build_parser

        args = build_parser().parse_args(argv)
        if args.command == "sites":
            return sites.run(args)
        if args.command == "sae-train":
            return sae_train.run(args)
        if args.command == "direction":
            return direction.run(args)
        return dream.run(args)
    except UsageError as error:
        print(f"dream: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # a TargetError, ConfigError, OutDirError... known too late for a UsageError
        print(f"dream: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dream: interrupted; finished targets are saved (rerun with --resume)", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


