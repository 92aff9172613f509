"""The `dream direction` command: learn a concept direction at a site from two example sets and write it as a
`dir=` file (`dreamy.directions.direction_from_examples` with a `DirectionConfig`).

    dream direction --positive good.txt --negative bad.txt --site model.layers.15 --out sentiment.pt
    dream direction --positive striped/ --negative plain/ --site _blocks.10 --out striped.pt [--model M]
        [--method logistic --method mean_diff --method pca] [--reduce mean|max|sum|center|pos=N] [--heldout 0.25]
        [--heldout-positive FILE --heldout-negative FILE] [--seed N] [--batch-size N] [--device D] [--overwrite]

Examples are text files (one example per line) or folders of images; without `--model` texts use
bundled:smollm2-135m and images bundled:efficientnet-lite0. Without `--method` the three methods run when the
sets are paired (the same number of examples, line i of each a pair) and `pca` is left out otherwise. Every
argument is checked before the model loads (an existing `--out` file or sidecar is refused unless `--overwrite`
asks to replace them); then the site is checked on the model, the directions are learned,
and the file (one unit vector per method) and its sidecar JSON are written. The accuracies, the cosines and the
spec of each direction are printed.

Example:
    >>> parser = argparse.ArgumentParser(prog="dream"); _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["direction", "--positive", "a.txt", "--negative", "b.txt", "--site", "x", "--out", "d.pt"])
    >>> args.method, args.heldout, args.reduce
    (None, 0.25, None)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dreamy.cli.arguments import UsageError, check_seed, positive
from dreamy.cli.flags import DEFAULT_MODELS
METHODS = ("logistic", "mean_diff", "pca")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `direction` subcommand to `subparsers` (from `ArgumentParser.add_subparsers`); returns it.

    Example:
        >>> add_parser(argparse.ArgumentParser().add_subparsers()).prog.endswith("direction")
        True
    """
    cmd = subparsers.add_parser("direction", help="learn a concept direction at a site from two example sets")
    cmd.add_argument("--positive", required=True, help="examples of the concept: a text file (one per line) or an image folder")
    cmd.add_argument("--negative", required=True, help="examples without it, of the same kind")
    cmd.add_argument("--site", required=True, help="site to read, e.g. model.layers.15 or _blocks.10 (see `dream sites MODEL`)")
    cmd.add_argument("--out", required=True, help="the direction file to write (.pt or .safetensors; a .json sidecar goes beside it)")
    cmd.add_argument("--model", default=None,
                     help=f"model name (default: {DEFAULT_MODELS['text']} for texts, {DEFAULT_MODELS['image']} for images)")
    cmd.add_argument("--method", action="append", choices=METHODS, default=None,
                     help="logistic (the CAV), mean_diff or pca (paired sets only); repeat for more (default: all that apply)")
    cmd.add_argument("--reduce", default=None,
                     help="how the site's positions become one vector: mean (default), max, sum, center or pos=N "
                          "(a token; pos=-1 the last)")
    cmd.add_argument("--heldout", type=float, default=0.25,
                     help="share of the examples (of the pairs, when paired) held out for the accuracy (default %(default)s)")
    cmd.add_argument("--heldout-positive", default=None, help="held-out positive examples of their own (with --heldout-negative)")
    cmd.add_argument("--heldout-negative", default=None, help="held-out negative examples of their own")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the held-out split (default %(default)s)")
    cmd.add_argument("--batch-size", type=positive(int), default=16, help="examples per forward (default %(default)s)")
    cmd.add_argument("--device", default="cpu")
    cmd.add_argument("--overwrite", action="store_true",
                     help="replace an existing --out file and its .json sidecar (without it they are refused)")
    return cmd


def _examples(flag: str, path: str | None) -> Any:
    from dreamy.directions import read_examples

    if path is None:
        return None
    try:
        return read_examples(path)
    except ValueError as error:
        raise UsageError(f"{flag}: {str(error).splitlines()[0]}") from error


def _kind(examples: Any) -> str:
    return "text" if isinstance(examples, list) else "image"


def check_not_taken(out: Path, *, overwrite: bool) -> None:
    """Refuse (`UsageError`) an `--out` direction file or its `.json` sidecar that already exists, unless
    `overwrite` (`--overwrite`) asks to replace them; nothing of a user's is replaced without a word.

    Example:
        >>> import tempfile
        >>> taken = Path(tempfile.mkdtemp(), "d.pt"); _ = taken.write_bytes(b"mine")
        >>> check_not_taken(taken, overwrite=True)
        >>> check_not_taken(taken, overwrite=False)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        dreamy.cli.arguments.UsageError: --out ...d.pt already exists; add --overwrite to replace it (and its .json sidecar), or choose another name
    """
    from dreamy.directions.files import sidecar_path

    if overwrite:
        return
    side = sidecar_path(out)
    if out.exists() or out.is_symlink():
        raise UsageError(f"--out {out} already exists; add --overwrite to replace it (and its .json sidecar), "
                         "or choose another name")
    if side.exists() or side.is_symlink():
        raise UsageError(f"--out {out}: its sidecar {side} already exists; add --overwrite to replace it, "
                         "or choose another name")


def check_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """Refuse a bad command line before any model loads (`UsageError`, one line); returns the example sets read
    (`positive`, `negative`, `heldout`), the model name and the `DirectionConfig`.

    Example:
        >>> check_arguments(argparse.Namespace(positive="a.txt", negative="b.txt", site="x", out="d.npy", model=None,
        ...                 method=None, reduce=None, heldout=0.25, heldout_positive=None, heldout_negative=None, seed=0,
        ...                 batch_size=16, device="cpu"))
        Traceback (most recent call last):
        ...
        dreamy.cli.arguments.UsageError: --out d.npy must end in .pt or .safetensors (the target grammar reads both)
    """
    from dreamy.core.config import ConfigError
    from dreamy.core.folders import OutDirError, check_out_folder
    from dreamy.directions import DirectionConfig
    from dreamy.directions.examples import bare_site
    from dreamy.models import check_device, kind_of
    from dreamy.targets import SpecError

    out = Path(args.out).expanduser()
    if out.suffix.lower() not in (".pt", ".safetensors"):
        raise UsageError(f"--out {args.out} must end in .pt or .safetensors (the target grammar reads both)")
    if out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; give a file name ending in .pt or .safetensors")
    check_not_taken(out, overwrite=getattr(args, "overwrite", False))
    try:  # its folder: writable (or makeable), so the file can be written once the directions are learned
        check_out_folder(out.parent)
    except OutDirError as error:
        raise UsageError(f"--out {args.out}: {str(error).splitlines()[0]}") from error
    check_seed(args.seed)
    if (args.heldout_positive is None) != (args.heldout_negative is None):
        raise UsageError("give both --heldout-positive and --heldout-negative, or neither")
    try:
        bare_site(args.site)
    except (SpecError, ValueError) as error:
        raise UsageError(f"--site: {str(error).splitlines()[0]}") from error
    positive, negative = _examples("--positive", args.positive), _examples("--negative", args.negative)
    for flag, examples in (("--positive", positive), ("--negative", negative)):
        if len(examples) < 2:
            raise UsageError(f"{flag} {getattr(args, flag[2:])} holds {len(examples)} example; a direction needs at "
                             "least 2 in each set")
    heldout = None
    if args.heldout_positive is not None:
        heldout = (_examples("--heldout-positive", args.heldout_positive), _examples("--heldout-negative", args.heldout_negative))
    kinds = {_kind(e) for e in (positive, negative, *(heldout or ()))}
    if len(kinds) != 1:
        raise UsageError("--positive and --negative (and the held-out sets) must be of one kind: text files or image folders")
    kind = kinds.pop()
    model = args.model or DEFAULT_MODELS[kind]
    model_kind = kind_of(model)
    wanted = "language" if kind == "text" else "vision"
    if model_kind is not None and model_kind != wanted:
        raise UsageError(f"--model {model} is a {model_kind} model but the examples are {kind}s; "
                         f"use a {wanted} model (e.g. {DEFAULT_MODELS[kind]})")
    paired = len(positive) == len(negative)
    methods = tuple(args.method) if args.method else (METHODS if paired else ("logistic", "mean_diff"))
    if "pca" in methods and not paired:
        raise UsageError(f"--method pca needs paired sets (the same number of examples, line i of each a pair); "
                         f"got {len(positive)} positive and {len(negative)} negative")
    try:
        check_device(args.device)
        config = DirectionConfig(methods=methods, heldout=args.heldout, reduce=args.reduce, batch_size=args.batch_size,
                                 seed=args.seed)
    except ConfigError as error:
        message = str(error).replace("DirectionConfig.heldout", "--heldout").replace("DirectionConfig.reduce", "--reduce")
        raise UsageError(message) from error
    except ValueError as error:
        raise UsageError(str(error).splitlines()[0]) from error
    return {"positive": positive, "negative": negative, "heldout": heldout, "model": model, "config": config,
            "paired": paired}


def summary(result: Any, files: tuple[Path, Path]) -> str:
    """The lines the command prints about the learned directions.

    Example:
        >>> import torch
        >>> from dreamy.directions import learn_direction
        >>> result = learn_direction(torch.ones(4, 2), torch.zeros(4, 2), methods=("mean_diff",), heldout=0.5)
        >>> result.site = "fc"
        >>> print(summary(result, (Path("d.pt"), Path("d.pt.json"))))
        mean_diff  held-out accuracy 1.000 (2+2 examples), fitted 1.000  -> fc:dir=d.pt#mean_diff
        written d.pt and d.pt.json
    """
    counts = result.counts
    lines = []
    for method in result.methods:
        held = result.heldout_accuracy[method]
        held_text = "-" if held is None else f"{held:.3f}"
        lines.append(f"{method:<10} held-out accuracy {held_text} ({counts['heldout_positive']}+{counts['heldout_negative']} "
                     f"examples), fitted {result.train_accuracy[method]:.3f}  -> {result.spec(files[0], method)}")
    if result.cosines:
        lines.append("cosines: " + ", ".join(f"{pair} {value:.3f}" for pair, value in result.cosines.items()))
    lines.append(f"written {files[0]} and {files[1]}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run `dream direction` with parsed `args`; returns the exit code (bad arguments raise `UsageError`).

    Example:
        >>> run(argparse.Namespace(positive="/no/such.txt", negative="b.txt", site="x", out="d.pt", model=None,
        ...                        method=None, reduce=None, heldout=0.25, heldout_positive=None, heldout_negative=None,
        ...                        seed=0, batch_size=16, device="cpu"))
        Traceback (most recent call last):
        ...
        dreamy.cli.arguments.UsageError: --positive: example set '/no/such.txt' is neither a text file (one example per line) nor a folder of images
    """
    checked = check_arguments(args)
    from dreamy.directions import direction_from_examples
    from dreamy.models import load
    from dreamy.targets import TargetError

    loaded = load(checked["model"], args.device)
    sources = {"positive": str(args.positive), "negative": str(args.negative)}
    if checked["heldout"] is not None:
        sources.update({"heldout_positive": str(args.heldout_positive), "heldout_negative": str(args.heldout_negative)})
    try:
        result = direction_from_examples(loaded, args.site, checked["positive"], checked["negative"], checked["config"],
                                         heldout_examples=checked["heldout"], sources=sources)
    except TargetError as error:
        raise UsageError(f"--site: {str(error).splitlines()[0]}") from error
    check_not_taken(Path(args.out).expanduser(), overwrite=getattr(args, "overwrite", False))  # made meanwhile?
    try:
        files = result.save(Path(args.out).expanduser())
    except OSError as error:
        print(f"dream: error: cannot write --out {args.out} ({error.strerror or error})",
              file=sys.stderr)
        return 1
    print(summary(result, files))
    return 0
