"""Command-line argument types and the usage error shared by every `dream` subcommand.

Each type refuses non-numbers and non-finite values with a message argparse prints as one line.

Example:
    >>> positive(int)("3"), non_negative("0.5")
    (3, 0.5)
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32 (torch.finfo(torch.float32).tiny)
FLOAT32_MAX = 3.4028234663852886e38  # the largest float32
MAX_SEED = 2**63 - 1  # torch generators take seeds below 2**63 (and batch k adds k)


class UsageError(Exception):
    """A bad command line: one line on stderr and exit code 2."""


def _number(kind: type, text: str) -> float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive(kind: type) -> Callable[[str], float]:
    """An argparse type: a finite number of `kind` (int or float) > 0.

    Example:
        >>> positive(float)("2.5")
        2.5
    """
    def convert(text: str):
        value = _number(kind, text)
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0 and finite, got {text}")
        return value
    return convert


def pack_size(text: str) -> int | str:
    """An argparse type for `--batch-targets`: a whole number > 0, or "auto" (sized to the device's free memory).

    Example:
        >>> pack_size("32"), pack_size("auto")
        (32, 'auto')
    """
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return positive(int)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a number of targets > 0 or auto, got {text!r}") from None


def non_negative(text: str) -> float:
    """An argparse type: a finite float >= 0 (a weight).

    Example:
        >>> non_negative("0")
        0.0
    """
    value = _number(float, text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 and finite, got {text}")
    return value


def weight_range(text: str) -> tuple[float, float]:
    """An argparse type for `--fluency-weight-range`: LOW,HIGH with 0 < LOW <= HIGH, both finite and within what
    a float32 holds (normal numbers: no weight underflows to 0 or overflows to inf).

    Example:
        >>> weight_range("0.3,30")
        (0.3, 30.0)
    """
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (e.g. 0.3,30), got {text!r}")
    low, high = (_number(float, part.strip()) for part in parts)
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH, both finite, got {text!r}")
    if low < FLOAT32_TINY or high > FLOAT32_MAX:  # the weights are float32: 0 or inf otherwise
        raise argparse.ArgumentTypeError(f"expected LOW and HIGH between {FLOAT32_TINY:.2g} and {FLOAT32_MAX:.2g} "
                                         f"(the weights are float32), got {text!r}")
    return low, high


def check_seed(seed: int) -> None:
    """Refuse a seed torch cannot take (`UsageError`).

    Example:
        >>> check_seed(0)
    """
    if not 0 <= seed <= MAX_SEED:
        raise UsageError(f"--seed must be in 0..{MAX_SEED}, got {seed}")


def add_corpus_flags(parser: argparse.ArgumentParser, *, budget: bool = True) -> None:
    """Add `--text-column` and `--max-tokens` to a subcommand that takes a text corpus: the column of a table corpus
    (a `datasets` folder, .jsonl, .parquet, .csv or hf:NAME[:SPLIT]) that holds the text, and a budget of tokens
    (counted with the model's tokenizer) the corpus is cut to; `dreamy.datasets.open_text` and `token_stream` take
    them as `text_column` and `max_tokens`.

    Example:
        >>> parser = argparse.ArgumentParser(); add_corpus_flags(parser)
        >>> args = parser.parse_args(["--max-tokens", "100000"])
        >>> args.text_column, args.max_tokens
        ('text', 100000)
    """
    parser.add_argument("--text-column", default="text", metavar="COLUMN",
                        help="the column holding the text in a table corpus (a datasets folder, .jsonl, .parquet, "
                             ".csv or hf:NAME[:SPLIT]) (default %(default)s)")
    if not budget:  # a command that cannot cut the corpus by tokens before its model loads
        return
    parser.add_argument("--max-tokens", type=positive(int), default=None, metavar="N",
                        help="use only the corpus' first N tokens (counted with the model's tokenizer; a hub dataset "
                             "streams no further); default: all of it")


def check_resume_overwrite(args: argparse.Namespace) -> None:
    """Refuse `--resume` with `--overwrite` (`UsageError`): one keeps the finished records in --out, the other
    deletes them. A command without one of the flags passes.

    Example:
        >>> check_resume_overwrite(argparse.Namespace(resume=True, overwrite=True))
        Traceback (most recent call last):
        ...
        dreamy.cli.arguments.UsageError: --resume keeps the finished records in --out and --overwrite deletes them; give one of the two, not both
    """
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        raise UsageError("--resume keeps the finished records in --out and --overwrite deletes them; give one of the two, "
                         "not both")
