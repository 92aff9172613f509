"""`dream image` and `dream prompt`: check everything knowable first, build the method's config, run, enrich.

Everything that can be checked before the work is checked first: the arguments (the config is built from the
flags, so a bad value is one line), the device, the output folder (a non-empty one needs `--resume`, for the
same run only, or `--overwrite`; another run holding it is refused), the `--maxima` dataset, an image batch's
memory, and every target against the loaded model. A bad one prints one line and exits with code 2, with
nothing written. A target that fails mid-run is recorded with its error, the others go on, and the command
exits with 1 at the end.

Example:
    >>> import tempfile
    >>> from dreamy.cli.parser import build_parser
    >>> args = build_parser().parse_args(["prompt", "--model", "tiny:lm", "--target", "logits:3", "--out",
    ...                                   tempfile.mkdtemp(), "--method", "gcg", "--children", "8"])
    >>> config_of(args)
    GCGConfig(n_tokens=10, iters=50, children=8, topk=64, n_swaps=1, prefix='', suffix='', init=None, ascii_only=True, retokenize=True, chunk_size=None, scoring='auto', minutes=None, plateau=None, seed=0, fluency_weight=0.0)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from dreamy.cli import image, prompt
from dreamy.cli.arguments import MAX_SEED, UsageError, check_resume_overwrite, check_seed
from dreamy.cli.flags import DEFAULT_MODELS
from dreamy.core.config import Config, ConfigError
from dreamy.targets import TargetError, expand

DEMO_TARGETS = ["logits:285", "logits:1", "logits:130", "logits:948", "_blocks.8:10", "_blocks.8:12"]

MIN_IMAGE_SIDE = 16


def config_of(args: argparse.Namespace) -> Config:
    """The method config the flags of `dream image|prompt` ask for (`UsageError` naming the flag for a value it
    refuses): `cli.image.config_of` or `cli.prompt.config_of`."""
    return (image if args.command == "image" else prompt).config_of(args)


def _targets(args: argparse.Namespace) -> list[str]:
    specs = args.target
    for spec in specs:
        if not isinstance(spec, str) or not spec.strip() or spec.strip() == "--":
            shown = spec if isinstance(spec, str) else "--"
            raise UsageError(f"--target {shown!r} is not a target spec; give one like --target 'conv3:1' (see `dream sites MODEL`)")
    if not specs:
        if args.command == "image" and args.model == DEFAULT_MODELS["image"]:
            specs = DEMO_TARGETS
        else:
            raise UsageError("give at least one --target SPEC (e.g. --target 'model.layers.5.mlp.down_proj@in:100')")
    try:
        return list(dict.fromkeys(str(t) for spec in specs for t in expand(spec)))
    except TargetError as error:
        raise UsageError(str(error).splitlines()[0]) from error


def steer_config_of(args: argparse.Namespace) -> Any:
    """The `SteerConfig` that `dream prompt --steer` asks for, or None without `--steer` (`UsageError` for a value
    it refuses).

    Example:
        >>> from dreamy.cli.parser import build_parser
        >>> args = build_parser().parse_args(["prompt", "--model", "tiny:lm", "--target", "logits:3", "--out", "x",
        ...                                   "--steer", "--steer-scale", "2", "--steer-prompts", "2"])
        >>> steer_config_of(args).scale, len(steer_config_of(args).prompts)
        (2.0, 2)
    """
    if not args.steer:
        return None
    from dreamy.steering import NEUTRAL_PROMPTS, SteerConfig

    settings: dict[str, Any] = {"new_tokens": args.steer_tokens, "prompts": NEUTRAL_PROMPTS[:args.steer_prompts],
                                "alpha": args.steer_alpha}
    if args.steer_scale is not None:
        settings["scale"] = args.steer_scale
    try:
        return SteerConfig(**settings)
    except ConfigError as error:
        raise UsageError(f"--steer: {error}") from error


def _check_dataset(args: argparse.Namespace) -> None:
    from dreamy.datasets import DatasetError, open_images, open_text

    if args.maxima is None:
        return
    try:
        if args.command == "image":
            open_images(args.maxima, limit=1)
        else:
            open_text(args.maxima, max_words=1, text_column=args.text_column)
    except DatasetError as error:
        raise UsageError(f"--maxima: {str(error).splitlines()[0]}") from error


def _check_arguments(args: argparse.Namespace) -> torch.device:
    """Everything about a dream command that is known before loading the model."""
    from dreamy.models import ModelLoadError, check_device, kind_of

    wanted = "vision" if args.command == "image" else "language"
    kind = kind_of(args.model)
    if kind is not None and kind != wanted:
        other = "prompt" if args.command == "image" else "image"
        example = DEFAULT_MODELS["image" if args.command == "image" else "text"]
        raise UsageError(f"--model {args.model} is a {kind} model; `{args.command}` needs a {wanted} model "
                         f"(use `dream {other}`, or e.g. --model {example})")
    try:
        device = check_device(args.device)
    except ModelLoadError as error:
        raise UsageError(f"--device: {error}") from error
    check_seed(args.seed)
    check_resume_overwrite(args)
    if args.command == "image" and args.precision == "bf16" and device.type != "cuda":
        raise UsageError(f"--precision bf16 autocasts on CUDA only, not on --device {args.device}; drop it (fp32 is "
                         "the default) or use --device cuda")
    if args.command == "image" and args.size is not None and args.size < MIN_IMAGE_SIDE:
        raise UsageError(f"--size must be >= {MIN_IMAGE_SIDE} pixels, got {args.size}")
    if args.labels and args.maxima is None:
        raise UsageError("--labels searches labels on dataset windows: add --maxima DATASET (e.g. --maxima fortunes)")
    for judge in args.judge:
        if kind_of(judge) != "vision":
            what = f"a {kind_of(judge)} model" if kind_of(judge) else "not a known model name"
            raise UsageError(f"--judge {judge} is {what}; a judge is an image classifier, e.g. --judge bundled:efficientnet-lite1")
    _check_dataset(args)
    return device


def _load_judges(args: argparse.Namespace, loaded: Any, device: torch.device) -> list[Any]:
    """Load the --judge models and check that each classifies the dreamed model's classes."""
    from dreamy.models import load
    from dreamy.vision.judges import JudgeError, check_judge

    judges = [load(name, device) for name in dict.fromkeys(args.judge)]
    for judge in judges:
        try:
            check_judge(judge, len(loaded.class_names) if loaded.class_names else None)
        except JudgeError as error:
            raise UsageError(f"--judge: {error}") from error
    return judges


def run(args: argparse.Namespace) -> int:
    """Run `dream image|prompt` with parsed `args`; returns the exit code (bad arguments raise `UsageError`).

    The run is checked once: the arguments here, then `runs.local.claim` before the model loads (a seeded
    search's corpus; the output folder, taken and held until the gallery is done) and `runs.local.prepare`
    once it has loaded (model, targets, pack, memory); a target it finds unusable is refused here."""
    from dreamy.models import load
    from dreamy.runs import plan_batches
    from dreamy.runs.enrich import EnrichSteps, MaximaStep, enrich
    from dreamy.runs.labeling import LabelStep
    from dreamy.runs.local import claim, execute, prepare
    from dreamy.runs.options import MaximaScan, RunOptions
    from dreamy.runs.store import OutDirError

    device = _check_arguments(args)
    specs = _targets(args)
    if args.seed + len(plan_batches(specs, 1 if args.batch_targets == "auto" else args.batch_targets)) > MAX_SEED:
        raise UsageError(f"--seed {args.seed} is too large: batch k uses seed + k, which must stay <= {MAX_SEED}")
    config = config_of(args)
    steering = steer_config_of(args)
    out = Path(args.out)
    maxima = args.maxima
    if args.command == "prompt" and maxima is not None and args.text_column != "text":
        from dreamy.datasets import open_text

        maxima = open_text(maxima, text_column=args.text_column)  # a table's other column (checked above)
    seeded = args.command == "prompt" and maxima is not None
    options = RunOptions(out_dir=args.out, resume=args.resume, overwrite=args.overwrite,
                         batch_targets=args.batch_targets, describe=args.describe,
                         describe_later=args.maxima is not None,  # the enrich pass below describes over the maxima
                         use_ray=args.ray is not None, ray_address=args.ray or None, workers=args.workers,
                         progress=not args.quiet, maxima=MaximaScan(maxima) if seeded else None)
    try:
        claimed = claim(args.model, config, options)
    except ValueError as error:  # OutDirError too
        raise UsageError(str(error)) from error
    try:
        with claimed:  # one run per folder, for the dreams, the judges and the maxima alike
            loaded = load(args.model, device)
            try:
                prepared = prepare(loaded, specs, config, options, claimed)
            except ValueError as error:
                raise UsageError(str(error).splitlines()[0]) from error
            if prepared.unusable:
                more = f" (and {len(prepared.unusable) - 1} more bad target(s))" if len(prepared.unusable) > 1 else ""
                raise UsageError(f"target {prepared.unusable[0][0]}: {prepared.unusable[0][1]}{more}")
            if prepared.choice is not None and not args.quiet:
                print(f"dream: {prepared.choice.summary()}", file=sys.stderr)
            judges = _load_judges(args, loaded, device)
            records = execute(prepared)
            enrich(out, loaded, EnrichSteps(maxima=MaximaStep(maxima), describe=args.describe,
                                            labels=LabelStep(maxima) if args.labels else None,
                                            judges=tuple(judges), steering=steering, progress=not args.quiet))
    except OutDirError as error:
        raise UsageError(str(error)) from error
    failed = [r for r in records if "error" in r]
    for record in failed:
        print(f"dream: target {record['target']} failed: {record['error']}", file=sys.stderr)
    print(f"{len(records) - len(failed)} target(s) dreamed, {len(failed)} failed; gallery: {out / 'index.html'}")
    return 1 if failed else 0
