"""The argument parser of `dream`: subcommands sites, image, prompt, sae-train and export, with every flag and default.

Defaults are the method configs' own (`DreamConfig`, `EPOConfig`, `GCGConfig`, `SAETrainConfig`) except where
`--help` says the command line differs on purpose (a quicker first run).

Example:
    >>> args = build_parser().parse_args(["image", "--out", "x"])
    >>> args.command, args.steps, args.model
    ('image', 128, 'bundled:efficientnet-lite0')
"""

from __future__ import annotations

import argparse

from dreamy.cli import dashboard, direction, export, sae_train
from dreamy.cli.arguments import UsageError, non_negative, pack_size, positive, weight_range

DEFAULT_MODELS = {"image": "bundled:efficientnet-lite0", "prompt": "bundled:smollm2-135m"}
REGULARIZER_FLAGS = ("tv", "l1", "l2", "blur", "center")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one `UsageError` line (exit 2), not argparse's usage dump."""

    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `dream` (subcommands sites, image, prompt, sae-train, export)."""
    parser = _Parser(prog="dream", description="Dream the inputs that drive units of vision and language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sites = sub.add_parser("sites", help="list a model's sites with their output shapes")
    sites.add_argument("model", nargs="?", default=DEFAULT_MODELS["image"])
    sites.add_argument("--device", default="cpu")
    sites.add_argument("--names", default="modules", choices=["modules", "transformerlens"],
                       help="module paths (default), or the TransformerLens hook names a Llama-, Gemma-3-, GPT-2- or "
                            "GPT-NeoX-style language model gives (blocks.L.hook_resid_post, ...)")
    for kind in ("image", "prompt"):
        cmd = sub.add_parser(kind, help=f"dream {'images' if kind == 'image' else 'prompts'} for targets")
        cmd.add_argument("--model", default=DEFAULT_MODELS[kind], help="model name (default: %(default)s)")
        cmd.add_argument("--target", action="append", default=[], help="target spec; repeat for more; ranges like layer:0-63 expand")
        cmd.add_argument("--out", required=True, help="output folder for results.json, index.html and PNGs")
        cmd.add_argument("--seed", type=int, default=0)
        cmd.add_argument("--device", default="cpu")
        cmd.add_argument("--resume", action="store_true", help="skip targets already finished in --out (same run only)")
        cmd.add_argument("--overwrite", action="store_true", help="replace the results of another run in --out")
        cmd.add_argument("--batch-targets", type=pack_size, default=8, metavar="N|auto",
                         help="targets per shared batch, or auto: as many as the device's free memory holds at a "
                              "footprint measured on one step (default %(default)s)")
        cmd.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                         help="shard over a Ray cluster (no address: start a local one)")
        cmd.add_argument("--workers", type=positive(int), default=None,
                         help="Ray workers (default: one per GPU of the cluster with --device cuda, each given one GPU; else 2)")
        cmd.add_argument("--maxima", default=None, metavar="DATASET",
                         help="also find dataset maxima (images: photos, fashion-mnist, a folder; text: fortunes, bible-kjv, a file)")
        cmd.add_argument("--quiet", action="store_true", help="no progress bars")
    image = sub.choices["image"]
    image.add_argument("--steps", type=positive(int), default=128,
                       help="optimizer steps (default %(default)s, a quick first gallery; the library's DreamConfig: 256)")
    image.add_argument("--param", default="fourier", choices=["fourier", "pixel", "maco", "dip", "decoder"])
    image.add_argument("--lr", type=positive(float), default=0.05)
    image.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                       help="bf16: each step under a bfloat16 autocast, CUDA only (default %(default)s)")
    image.add_argument("--size", type=positive(int), default=None, help="image side (default: the model's input size)")
    image.add_argument("--per-target", type=positive(int), default=1, help="images per target (default %(default)s)")
    image.add_argument("--diversity", type=non_negative, default=0.0)
    image.add_argument("--judge", action="append", default=[], metavar="MODEL",
                       help="a classifier never optimized against that judges each class dream (repeatable), "
                            "e.g. bundled:efficientnet-lite1")
    for name in REGULARIZER_FLAGS:
        image.add_argument(f"--{name}", type=non_negative, default=0.0, help=f"weight of the {name} regularizer")
    prompt = sub.choices["prompt"]
    prompt.add_argument("--method", default="epo", choices=["epo", "gcg"])
    prompt.add_argument("--iters", type=positive(int), default=50,
                        help="search iterations (default %(default)s; the library's EPOConfig/GCGConfig: 100)")
    prompt.add_argument("--tokens", type=positive(int), default=10,
                        help="prompt length in tokens (default %(default)s; the library's: EPO 12, GCG 16)")
    prompt.add_argument("--population", type=positive(int), default=6,
                        help="EPO slots (default %(default)s; the library's EPOConfig: 8)")
    prompt.add_argument("--activation-slots", type=int, default=None,
                        help="EPO slots with fluency weight 0, holding the frontier's high-activation end (default: "
                             "the library's EPOConfig, one, none for a population of one)")
    prompt.add_argument("--fluency-weight-range", type=weight_range, default=None, metavar="LOW,HIGH",
                        help="EPO's fluency weights of the other slots, spread log-uniformly over LOW..HIGH (default: "
                             "the library's EPOConfig, 0.1,30)")
    prompt.add_argument("--children", type=positive(int), default=32,
                        help="children per EPO member per iteration, or GCG children per iteration (default %(default)s; "
                             "the library's: EPO 32, GCG 128)")
    prompt.add_argument("--topk", type=positive(int), default=None,
                        help="replacement tokens drawn from per position (default: the method's, EPO 128, GCG 64)")
    prompt.add_argument("--init", default=None, choices=["random", "maxima", "mixed"],
                        help="where the search starts: random tokens, the target's --maxima windows of the prompt's length "
                             "(one per member), or those for half the members and random tokens for the rest (default: "
                             "mixed with --maxima, random without; benchmarks/prompt_vs_maxima: from random tokens 0 of 4 "
                             "targets beat the corpus at matched length in 30 iterations, seeded 4 of 4; mixed at the defaults 23 of 24)")
    prompt.add_argument("--minutes", type=positive(float), default=None,
                        help="wall-clock budget per batch of targets; a search that reaches it stops and says so")
    prompt.add_argument("--plateau", type=positive(int), default=None,
                        help="stop a batch's search once no target's frontier has moved for this many iterations")
    prompt.add_argument("--prefix", default="")
    prompt.add_argument("--suffix", default="")
    prompt.add_argument("--labels", action="store_true",
                        help="also search a one-token label per target (token-space gradient descent with the model "
                             "as the judge, on windows of the --maxima corpus) and show it with its held-out accuracy")
    prompt.add_argument("--no-describe", dest="describe", action="store_false",
                        help="skip the output-side descriptions (VocabProj, TokenChange) of feature and neuron targets")
    prompt.add_argument("--steer", action="store_true",
                        help="steering check: add alpha x the target's unit direction at its site while the model continues "
                             "neutral prompts; a few continuations, the input score (needs --maxima), the output score and the "
                             "fluency cost on each card (Arad et al. 2025)")
    prompt.add_argument("--steer-scale", type=non_negative, default=None,
                        help="alpha as a multiple of the site's mean activation norm (default: the library's SteerConfig, 1.5)")
    prompt.add_argument("--steer-alpha", type=float, default=None, help="alpha itself (overrides --steer-scale)")
    prompt.add_argument("--steer-tokens", type=positive(int), default=20, help="tokens per continuation (default %(default)s)")
    prompt.add_argument("--steer-prompts", type=positive(int), default=4,
                        help="neutral prompts continued per target (default %(default)s of the library's 8)")
    sae_train.add_parser(sub)
    export.add_parser(sub)
    direction.add_parser(sub)
    dashboard.add_parser(sub)
    return parser


