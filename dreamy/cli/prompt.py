"""The flags of `dream prompt` and the `EPOConfig` or `GCGConfig` they ask for (the run itself is `cli.dream`).

Each config field with a flag is listed in `FIELDS`; its help and default come from the configs (`cli.flags`:
a flag whose default differs between EPO and GCG keeps each method's own), the command line's own defaults
from `cli.flags.CLI_DEFAULTS`. The steering check's flags read their defaults from `SteerConfig`.

Example:
    >>> parser = argparse.ArgumentParser(prog="dream"); _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["prompt", "--out", "x", "--target", "logits:3", "--method", "gcg"])
    >>> config = config_of(args); type(config).__name__, config.iters, config.topk
    ('GCGConfig', 50, 64)
"""

from __future__ import annotations

import argparse
from typing import Any

from dreamy.cli.arguments import add_corpus_flags, non_negative, positive
from dreamy.cli.flags import CLI_DEFAULTS, add_config_flags, add_run_flags, config_from_flags, library_default

# EPOConfig / GCGConfig fields with a flag ("flag=field" where the flag is named otherwise); --init is a flag of
# its own (its default depends on --maxima: `init_of`)
FIELDS = ["iters", "tokens=n_tokens", "population", "activation_slots", "fluency_weight_range", "children", "topk",
          "minutes", "plateau", "prefix", "suffix", "seed"]
# SteerConfig fields with a flag, and their help (the steering check's flags)
STEER_FIELDS = ["steer-scale=scale", "steer-alpha=alpha", "steer-tokens=new_tokens"]
STEER_HELP = {"steer-scale": "alpha as a multiple of the site's mean activation norm",
              "steer-alpha": "alpha itself (overrides --steer-scale)", "steer-tokens": "tokens per continuation"}


def init_of(args: argparse.Namespace) -> str:
    """Where a prompt search starts: `--init`, else "mixed" when `--maxima` gives windows to start from, else "random".

    Example:
        >>> init_of(argparse.Namespace(init=None, maxima="fortunes")), init_of(argparse.Namespace(init=None, maxima=None))
        ('mixed', 'random')
    """
    if args.init is not None:
        return args.init
    return "mixed" if args.maxima else "random"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `prompt` subcommand to `subparsers` (from `ArgumentParser.add_subparsers`); returns it.

    Example:
        >>> add_parser(argparse.ArgumentParser().add_subparsers()).prog.endswith("prompt")
        True
    """
    from dreamy.language.config import EPOConfig, GCGConfig
    from dreamy.steering.config import SteerConfig

    cmd = subparsers.add_parser("prompt", help="dream prompts for targets")
    add_run_flags(cmd, "prompt")
    cmd.add_argument("--method", default="epo", choices=["epo", "gcg"])
    add_config_flags(cmd, (EPOConfig, GCGConfig), FIELDS, cli_defaults=CLI_DEFAULTS["prompt"], options={
        **dict.fromkeys(["iters", "tokens", "population", "children", "topk", "plateau"], {"type": positive(int)}),
        "minutes": {"type": positive(float)}, "fluency-weight-range": {"metavar": "LOW,HIGH"}})
    cmd.add_argument("--init", default=None, choices=["random", "maxima", "mixed"],
                     help="where the search starts: random tokens, the target's --maxima windows of the prompt's length "
                          "(one per member), or those for half the members and random tokens for the rest (default: "
                          "mixed with --maxima, random without)")
    add_corpus_flags(cmd, budget=False)
    cmd.add_argument("--labels", action="store_true",
                     help="also search a one-token label per target (token-space gradient descent with the model "
                          "as the judge, on windows of the --maxima corpus) and show it with its held-out accuracy")
    cmd.add_argument("--no-describe", dest="describe", action="store_false",
                     help="skip the output-side descriptions (VocabProj, TokenChange) of feature and neuron targets")
    cmd.add_argument("--steer", action="store_true",
                     help="steering check: add alpha x the target's unit direction at its site while the model continues "
                          "neutral prompts; a few continuations, the input score (needs --maxima), the output score and the "
                          "fluency cost on each card (Arad et al. 2025)")
    add_config_flags(cmd, SteerConfig, STEER_FIELDS, options={
        "steer-scale": {"type": non_negative, "help": STEER_HELP["steer-scale"]},
        "steer-alpha": {"type": float, "help": STEER_HELP["steer-alpha"]},
        "steer-tokens": {"type": positive(int), "help": STEER_HELP["steer-tokens"]}})
    prompts = len(library_default(SteerConfig, "prompts"))
    cmd.add_argument("--steer-prompts", type=positive(int), default=CLI_DEFAULTS["prompt"]["steer-prompts"],
                     help=f"neutral prompts continued per target (default %(default)s of the library's {prompts})")
    cmd.set_defaults(judge=[])  # what `cli.dream.run` reads of an image run: a prompt run has no judges
    return cmd


def config_of(args: argparse.Namespace) -> Any:
    """The `EPOConfig` or `GCGConfig` the flags of `dream prompt` ask for (`UsageError` naming the flag for a value
    it refuses).

    Example:
        >>> parser = argparse.ArgumentParser(); _ = add_parser(parser.add_subparsers(dest="command"))
        >>> config_of(parser.parse_args(["prompt", "--out", "x", "--population", "2", "--activation-slots", "2"]))
        Traceback (most recent call last):
        ...
        dreamy.cli.arguments.UsageError: --activation-slots: EPOConfig.activation_slots (2) must leave at least one of the 2 population slots a fluency weight; lower it or raise population
    """
    from dreamy.language.config import EPOConfig, GCGConfig

    config = EPOConfig if args.method == "epo" else GCGConfig
    return config_from_flags(args, config, FIELDS, extra={"init": init_of(args)})
