"""The `dream sae-train` command: its arguments and what it runs (`dreamy.sae.train_sae` with an `SAETrainConfig`).

    dream sae-train --model bundled:smollm2-135m --site model.layers.9 --corpus fortunes --corpus bible-kjv \\
        --features 4096 --k 32 --tokens 1000000 --out sae-l9/ [--resume] [--seed N] [--batch-tokens N] [--lr X]
        [--window N] [--heldout-tokens N] [--device D] [--quiet] [--text-column COLUMN] [--max-tokens N]

Every argument is checked before the model loads (bad ones: one line, exit 2): the output folder with the
same check as `dream image|prompt` (unwritable, a dangling symlink or a loop, another run holding it; a
non-empty folder that holds no SAE run, with or without `--resume`), the corpora (text, not binary files; a table's
--text-column there and holding text; the same corpus given twice). Then, with the model loaded, the site (token ids or a tensor shared across
the batch are refused) and the memory training needs; only then does the SAE train (progress bar: tokens/s,
FVE, L0, dead fraction), holding the folder's lock, and its folder (`cfg.json`, `sae_weights.safetensors`,
`metrics.json`, `checkpoint.pt`) is written. The figures are printed. Training that diverges (a non-finite
loss or weight) stops with one line and exit code 1, keeping the last finite checkpoint; figures that are not
finite are printed as an error too (exit 1).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="dream"); _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["sae-train", "--site", "model.layers.9", "--corpus", "fortunes", "--out", "x"])
    >>> args.features, args.k, args.tokens, args.model
    (4096, 32, 1000000, 'bundled:smollm2-135m')
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dreamy.cli.arguments import UsageError, add_corpus_flags, check_seed, positive
from dreamy.cli.flags import DEFAULT_MODELS, add_config_flags

# SAETrainConfig fields with a flag (help here; default and type from the config)
CONFIG_FLAGS = ["features", "k", "tokens", "batch_tokens", "lr", "window", "heldout_tokens", "seed"]
DEFAULT_MODEL = DEFAULT_MODELS["text"]  # a language model: what an SAE is trained on
CORPUS_NAMES = ("fortunes", "bible-kjv", "bible")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `sae-train` subcommand to `subparsers` (from `ArgumentParser.add_subparsers`); returns it.

    Example:
        >>> add_parser(argparse.ArgumentParser().add_subparsers()).prog.endswith("sae-train")
        True
    """
    from dreamy.sae.config import SAETrainConfig

    cmd = subparsers.add_parser("sae-train", help="train a TopK sparse autoencoder on a language model's site")
    cmd.add_argument("--model", default=DEFAULT_MODEL, help="language model name (default: %(default)s)")
    cmd.add_argument("--site", required=True, help="site to read, e.g. model.layers.9 (see `dream sites MODEL`)")
    cmd.add_argument("--corpus", action="append", default=[], help="text corpus: fortunes, bible-kjv, a text file/folder, a table "
                     "(datasets folder, .jsonl, .parquet, .csv) or hf:NAME[:SPLIT]; repeat to combine")
    add_corpus_flags(cmd)
    library = SAETrainConfig()
    whole = {"type": positive(int)}
    add_config_flags(cmd, SAETrainConfig, CONFIG_FLAGS, options={
        "features": {**whole, "help": "SAE latents"}, "k": {**whole, "help": "active latents per token"},
        "tokens": {**whole, "help": "training tokens"}, "batch-tokens": {**whole, "help": "tokens per step"},
        "lr": {"type": positive(float), "help": f"Adam learning rate (default: {library.lr_or_default:g} at "
                                                f"{library.features} features, scaled by 1/sqrt(features/{library.features}))"},
        "window": {**whole, "help": "tokens per text window"},
        "heldout-tokens": {**whole, "help": "tokens held out of training for the figures"},
        "seed": {"type": int, "help": "seed of the windows and the initialization"}})
    cmd.add_argument("--out", required=True, help="output folder (SAELens layout + metrics.json + checkpoint.pt)")
    cmd.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    cmd.add_argument("--device", default="cpu")
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    return cmd


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse a bad command line before any model loads (`UsageError`, one line).

    Example:
        >>> check_arguments(argparse.Namespace(model="tiny:lm", site="model.layers.0", corpus=[], features=8, k=2,
        ...                 tokens=10, out="x", resume=False, seed=0, batch_tokens=8, window=4, device="cpu", text_column="text"))
        Traceback (most recent call last):
        ...
        dreamy.cli.arguments.UsageError: give at least one --corpus (fortunes, bible-kjv or a text file/folder)
    """
    from dreamy.datasets import DatasetError, open_text
    from dreamy.models import check_device, kind_of
    from dreamy.sae.train import SAERunError, check_out_dir
    from dreamy.targets import SpecError, parse

    if not args.corpus:
        raise UsageError("give at least one --corpus (fortunes, bible-kjv or a text file/folder)")
    seen: dict[str, str] = {}
    for corpus in args.corpus:
        if corpus not in CORPUS_NAMES and not corpus.startswith("hf:") and not Path(corpus).expanduser().exists():
            raise UsageError(f"--corpus {corpus!r} is neither fortunes, bible-kjv nor an existing file or folder "
                             "(nor hf:NAME[:SPLIT])")
        if corpus in CORPUS_NAMES:
            same = "bible-kjv" if corpus == "bible" else corpus
        else:
            try:
                if corpus.startswith("hf:"):  # its first rows: the column is there and holds text
                    open_text(corpus, max_words=1, text_column=args.text_column)
                    same = corpus
                else:  # text, not binary; a table's text column; the hash of the text it holds
                    same = open_text(corpus, text_column=args.text_column).name.partition("#")[2]
            except DatasetError as error:
                raise UsageError(f"--corpus: {str(error).splitlines()[0]}") from error
        if same in seen:
            raise UsageError(f"--corpus {corpus!r} is the same text as --corpus {seen[same]!r}; give each corpus once "
                             "(a duplicate would be trained on twice)")
        seen[same] = corpus
    if args.k > args.features:
        raise UsageError(f"--k {args.k} must be <= --features {args.features}")
    if args.window < 2:
        raise UsageError(f"--window must be >= 2 tokens, got {args.window}")
    if args.batch_tokens < args.window:
        raise UsageError(f"--batch-tokens {args.batch_tokens} must hold at least one --window of {args.window} tokens")
    check_seed(args.seed)
    kind = kind_of(args.model)
    if kind == "vision":
        raise UsageError(f"--model {args.model} is a vision model; sae-train needs a language model (e.g. {DEFAULT_MODEL})")
    try:
        target = parse(args.site)
    except SpecError as error:
        raise UsageError(f"--site: {str(error).splitlines()[0]}") from error
    term = target.terms[0]
    if len(target.terms) != 1 or term.unit is not None or term.reduce is not None or term.coef != 1 or term.site.is_logits:
        raise UsageError(f"--site {args.site!r} must be a bare hidden site like model.layers.9 (no unit, reduction, sum or logits)")
    try:
        check_device(args.device)
        folder = check_out_dir(args.out, args.resume)
    except (SAERunError, ValueError) as error:
        raise UsageError(str(error).splitlines()[0]) from error
    check_holds_no_other_files(folder, args.out)


def check_holds_no_other_files(folder: Path, shown: str) -> None:
    """Refuse (`UsageError`) an output folder that is not empty but holds no SAE run of ours (`checkpoint.pt`,
    `cfg.json`, `sae_weights.safetensors`): training would write among the user's files (and replace a
    `metrics.json` of theirs), with `--resume` too (there is nothing to continue). A new or empty folder, or
    one with an SAE run beside other files, passes.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()); _ = (folder / "metrics.json").write_text("{}")
        >>> check_holds_no_other_files(folder, "sae/")
        Traceback (most recent call last):
        ...
        dreamy.cli.arguments.UsageError: --out sae/ is not empty ('metrics.json') and holds no SAE run to continue (checkpoint.pt, cfg.json, sae_weights.safetensors); train into an empty or new folder
    """
    from dreamy.core.folders import foreign_entries
    from dreamy.sae.train import CHECKPOINT_NAME, METRICS_NAME
    from dreamy.targets.saelens import CFG_NAME, WEIGHTS_NAME

    run_files = (CHECKPOINT_NAME, CFG_NAME, WEIGHTS_NAME)
    others = foreign_entries(folder, run_files + (METRICS_NAME,))  # a killed run's temporary files are its own
    if (folder / METRICS_NAME).exists():
        others = sorted(others + [folder / METRICS_NAME], key=lambda entry: entry.name)  # but alone, the user's
    if others and not any((folder / name).exists() for name in run_files):
        shown_others = ", ".join(repr(entry.name) for entry in others[:3]) + (", ..." if len(others) > 3 else "")
        raise UsageError(f"--out {shown} is not empty ({shown_others}) and holds no SAE run to continue "
                         f"({', '.join(run_files)}); train into an empty or new folder")


def config_of(args: argparse.Namespace) -> Any:
    """The `SAETrainConfig` the flags ask for (`UsageError` for a value it refuses).

    Example:
        >>> config_of(argparse.Namespace(features=64, k=4, tokens=1024, batch_tokens=256, lr=None, window=16, seed=0,
        ...                              heldout_tokens=64)).features
        64
    """
    from dreamy.core.config import ConfigError
    from dreamy.sae.config import SAETrainConfig

    try:
        return SAETrainConfig(features=args.features, k=args.k, tokens=args.tokens, batch_tokens=args.batch_tokens,
                              lr=args.lr, window=args.window, seed=args.seed, heldout_tokens=args.heldout_tokens)
    except ConfigError as error:
        raise UsageError(str(error)) from error


def corpora_of(args: argparse.Namespace, tokenizer: Any) -> list[Any]:
    """The `--corpus` corpora read with `--text-column`, each cut to its first `--max-tokens` tokens when given
    (`UsageError` for one that cannot be read).

    Example:
        >>> from dreamy.models.tiny import tiny_tokenizer
        >>> args = argparse.Namespace(corpus=["fortunes"], text_column="text", max_tokens=50)
        >>> [corpus.name for corpus in corpora_of(args, tiny_tokenizer())]
        ['fortunes[:50tok]']
    """
    from dreamy.datasets import DatasetError, limit_tokens, open_text

    try:
        return [open_text(c, text_column=args.text_column) if args.max_tokens is None else
                limit_tokens(c, tokenizer, args.max_tokens, text_column=args.text_column) for c in args.corpus]
    except DatasetError as error:
        raise UsageError(f"--corpus: {str(error).splitlines()[0]}") from error


def summary(metrics: dict[str, Any], folder: Path) -> str:
    """The lines the command prints about a trained SAE.

    Example:
        >>> print(summary({"fve": 0.8, "l0": 32.0, "dead_fraction": 0.01, "loss_recovered": 0.9, "xentropy_clean": 3.0,
        ...                "xentropy_spliced": 3.5, "xentropy_zero": 8.0, "heldout_tokens": 100, "train_tokens": 1000,
        ...                "tokens_per_second": 500.0}, Path("sae")))
        SAE written to sae (1000 tokens at 500 tokens/s)
        held-out (100 tokens): FVE 0.800, L0 32.0, dead 1.0%, loss recovered 0.900 (cross-entropy clean 3.000, spliced 3.500, zero-ablated 8.000)
    """
    return (f"SAE written to {folder} ({metrics['train_tokens']} tokens at {metrics['tokens_per_second']:.0f} tokens/s)\n"
            f"held-out ({metrics['heldout_tokens']} tokens): FVE {metrics['fve']:.3f}, L0 {metrics['l0']:.1f}, "
            f"dead {metrics['dead_fraction']:.1%}, loss recovered {metrics['loss_recovered']:.3f} "
            f"(cross-entropy clean {metrics['xentropy_clean']:.3f}, spliced {metrics['xentropy_spliced']:.3f}, "
            f"zero-ablated {metrics['xentropy_zero']:.3f})")


def run(args: argparse.Namespace) -> int:
    """Run `dream sae-train` with parsed `args`; returns the exit code (bad arguments raise `UsageError`).

    Example:
        >>> run(argparse.Namespace(model="tiny:lm", site="model.layers.0", corpus=["fortunes"], features=8, k=16,
        ...                        tokens=10, out="unused", resume=False, seed=0, batch_tokens=64, window=16, device="cpu"))
        Traceback (most recent call last):
        ...
        dreamy.cli.arguments.UsageError: --k 16 must be <= --features 8
    """
    check_arguments(args)
    config = config_of(args)
    from dreamy.models import load
    from dreamy.sae.activations import check_site, site_probe
    from dreamy.sae.train import SAEDiverged, SAERunError, check_memory, train_sae

    loaded = load(args.model, args.device)
    if loaded.kind != "language" or loaded.tokenizer is None:
        raise UsageError(f"--model {args.model} is not a language model with a tokenizer")
    try:
        d_in = check_site(loaded, args.site, site_probe(loaded, args.site))
    except ValueError as error:  # a TargetError too
        raise UsageError(f"--site: {str(error).splitlines()[0]}") from error
    try:
        check_memory(d_in, config, loaded.device)
    except SAERunError as error:
        raise UsageError(str(error)) from error
    try:
        corpora = corpora_of(args, loaded.tokenizer)
        result = train_sae(loaded, args.site, corpora, config, out_dir=args.out, resume=args.resume,
                           progress=not args.quiet)
    except SAEDiverged as error:
        print(f"dream: error: {error}", file=sys.stderr)
        return 1
    print(summary(result.metrics, result.out_dir))
    if "error" in result.metrics:
        print(f"dream: error: {result.metrics['error']} (written to {result.out_dir / 'metrics.json'})", file=sys.stderr)
        return 1
    return 0
