"""The `dream` command: list sites, dream images or prompts for many targets, train SAEs, write galleries.

    dream sites [MODEL]
    dream image  [--model M] [--target SPEC ...] --out DIR [--steps N] [--param fourier] [--resume] [--ray [ADDR]]
    dream prompt [--model M] --target SPEC [...] --out DIR [--method epo|gcg] [--iters N] [--resume] [--ray [ADDR]]
    dream sae-train --site SITE --corpus NAME --out DIR [...]
    dream export --neuronpedia OUT RUN_DIR [...]
    dream dashboard --target SPEC [...] --corpus PATH --out DIR [--k N] [--max-tokens N] [--resume]
    dream direction --positive FILE|DIR --negative FILE|DIR --site SITE --out FILE.pt [...]

Without `--model`, `image` uses bundled:efficientnet-lite0 and `prompt` bundled:smollm2-135m. One module
per subcommand (`cli.sites`, `cli.image` and `cli.prompt` with `cli.dream`, `cli.sae_train`, `cli.export`, `cli.direction`),
each building its own flags (`cli.parser` assembles them). A bad command line is one
line on stderr and exit code 2, before any model loads where it can be known then. Ctrl-C or SIGTERM stops
the run (exit 130, from the first moment `main` runs: the handler is set before anything heavy is imported);
finished targets (`sae-train`: the last SAE checkpoint) are saved and `--resume` completes the rest. This package
is the only place that prints, parses arguments or names a flag.

Example:
    >>> main(["image", "--model", "tiny:cnn", "--target", "head:1", "--steps", "2", "--out", __import__("tempfile").mkdtemp(), "--quiet"])  # doctest: +ELLIPSIS
    1 target(s) dreamed, 0 failed; gallery: .../index.html
    0
"""

from __future__ import annotations

import signal  # nothing heavier before the handlers are set: a SIGTERM while starting is an interrupt too
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

RETRY_SECONDS = 0.02  # an interrupt that arrives while a module is importing is delivered this long after


def _importing(frame: object) -> bool:
    """Whether `frame` (a signal handler's) runs inside an import: an interrupt there would leave a half-made
    module behind (a later RecursionError, or an abort inside torch), so it waits until the import is done."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _interrupt_handler(signum: int, frame: object) -> None:
    """Raise `KeyboardInterrupt`, or, inside an import, deliver the same signal again a moment later."""
    if _importing(frame) and hasattr(signal, "pthread_kill"):
        main = threading.main_thread().ident
        timer = threading.Timer(RETRY_SECONDS, signal.pthread_kill, (main, signum))
        timer.daemon = True
        timer.start()
        return
    raise KeyboardInterrupt


def _interrupt_on_signals() -> dict[int, object]:
    """SIGTERM (and SIGINT, unless it is ignored, as in a shell's background job) stop a run the way Ctrl-C does
    (finished targets saved, the current batch not recorded), never in the middle of an import. Returns the
    previous handlers to restore (empty when they cannot be set here, off the main thread)."""
    previous = {}
    try:
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, _interrupt_handler)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            previous[signal.SIGINT] = signal.signal(signal.SIGINT, _interrupt_handler)
    except ValueError:
        pass
    return previous


INTERRUPTED = {
    None: "dream: interrupted",
    "sites": "dream: interrupted",
    "sae-train": "dream: interrupted; the SAE checkpoint (checkpoint.pt in --out) keeps the training up to its last "
                 "save (rerun with --resume to continue)",
    "dashboard": "dream: interrupted; the scan's checkpoint (.scan in --out) keeps its progress (rerun with --resume)",
}
INTERRUPTED_RUN = "dream: interrupted; finished targets are saved (rerun with --resume)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run `dream` with `argv` (default: the command line); returns the exit code."""
    previous = _interrupt_on_signals()  # first: a SIGTERM during start-up is an interrupt too
    state: dict[str, str | None] = {"command": None}
    try:
        return _run(argv, state)
    except KeyboardInterrupt:
        print(INTERRUPTED.get(state["command"], INTERRUPTED_RUN), file=sys.stderr)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(argv: Sequence[str] | None, state: dict[str, str | None]) -> int:
    """`main` once the interrupt handlers are set: parse, dispatch, and turn known errors into one line."""
    import logging

    from dreamy.cli.arguments import UsageError

    logging.basicConfig(level=logging.WARNING, format="dream: %(message)s")
    try:
        from dreamy.cli import dashboard, direction, dream, export, sae_train, sites
        from dreamy.cli.parser import build_parser

        args = build_parser().parse_args(argv)
        state["command"] = args.command
        if args.command == "sites":
            return sites.run(args)
        if args.command == "sae-train":
            return sae_train.run(args)
        if args.command == "export":
            return export.run(args)
        if args.command == "direction":
            return direction.run(args)
        if args.command == "dashboard":
            return dashboard.run(args)
        return dream.run(args)
    except UsageError as error:
        print(f"dream: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # a TargetError, ConfigError, OutDirError... known too late for a UsageError
        print(f"dream: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
