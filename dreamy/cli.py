"""The `dream` command: list sites, dream images or prompts for many targets, write galleries.

    dream sites [MODEL]
    dream image  [--model M] [--target SPEC ...] --out DIR [--steps N] [--param fourier] [--resume] [--ray [ADDR]]
    dream prompt [--model M] --target SPEC [...] --out DIR [--method epo|gcg] [--iters N] [--resume] [--ray [ADDR]]

Without `--model`, `image` uses bundled:efficientnet-lite0 and `prompt` bundled:smollm2-135m.
Everything that can be checked before the work is checked first: the arguments, the device, the
output folder (a non-empty one needs `--resume`, for the same run only, or `--overwrite`), the
`--maxima` dataset, an image batch's memory, and every target against the loaded model. A bad one
prints one line and exits with code 2, with nothing written. A target that fails mid-run is recorded
with its error, the others go on, and the command exits with 1 at the end. Ctrl-C or SIGTERM stops
the run (exit 130); finished targets are saved and `--resume` completes the rest.

Example:
    >>> main(["image", "--model", "tiny:cnn", "--target", "head:1", "--steps", "2", "--out", __import__("tempfile").mkdtemp(), "--quiet"])  # doctest: +ELLIPSIS
    1 target(s) dreamed, 0 failed; gallery: .../index.html
    0
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from dreamy.arguments import MAX_SEED, UsageError, check_seed, non_negative, positive
from dreamy.sae import command as sae_command
from dreamy.targets import TargetError, expand

DEFAULT_MODELS = {"image": "bundled:efficientnet-lite0", "prompt": "bundled:smollm2-135m"}
DEMO_TARGETS = ["logits:285", "logits:1", "logits:130", "logits:948", "_blocks.8:10", "_blocks.8:12"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        raise UsageError(message)


MIN_IMAGE_SIDE = 16
# Image memory estimate: bytes per input value (3 x H x W per image) that a forward + backward keeps
# (activations of every layer, the parametrization, Adam's state); measured EfficientNet-Lite0 needs
# about a third of this, so the estimate refuses only sizes that cannot fit.
BYTES_PER_INPUT_VALUE = 1200


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `dream` (subcommands sites, image, prompt)."""
    parser = _Parser(prog="dream", description="Dream the inputs that drive units of vision and language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sites = sub.add_parser("sites", help="list a model's sites with their output shapes")
    sites.add_argument("model", nargs="?", default=DEFAULT_MODELS["image"])
    sites.add_argument("--device", default="cpu")
    for kind in ("image", "prompt"):
        cmd = sub.add_parser(kind, help=f"dream {'images' if kind == 'image' else 'prompts'} for targets")
        cmd.add_argument("--model", default=DEFAULT_MODELS[kind], help="model name (default: %(default)s)")
        cmd.add_argument("--target", action="append", default=[], help="target spec; repeat for more; ranges like layer:0-63 expand")
        cmd.add_argument("--out", required=True, help="output folder for results.json, index.html and PNGs")
        cmd.add_argument("--seed", type=int, default=0)
        cmd.add_argument("--device", default="cpu")
        cmd.add_argument("--resume", action="store_true", help="skip targets already finished in --out (same run only)")
        cmd.add_argument("--overwrite", action="store_true", help="replace the results of another run in --out")
        cmd.add_argument("--batch-targets", type=positive(int), default=8, help="targets per shared batch (default %(default)s)")
        cmd.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                         help="shard over a Ray cluster (no address: start a local one)")
        cmd.add_argument("--workers", type=positive(int), default=2, help="Ray workers (default %(default)s)")
        cmd.add_argument("--maxima", default=None, metavar="DATASET",
                         help="also find dataset maxima (images: photos, fashion-mnist, a folder; text: fortunes, bible-kjv, a file)")
        cmd.add_argument("--quiet", action="store_true", help="no progress bars")
    image = sub.choices["image"]
    image.add_argument("--steps", type=positive(int), default=128)
    image.add_argument("--param", default="fourier", choices=["fourier", "pixel", "maco", "dip", "decoder"])
    image.add_argument("--lr", type=positive(float), default=0.05)
    image.add_argument("--size", type=positive(int), default=None, help="image side (default: the model's input size)")
    image.add_argument("--per-target", type=positive(int), default=1, help="images per target (default %(default)s)")
    image.add_argument("--diversity", type=non_negative, default=0.0)
    image.add_argument("--judge", action="append", default=[], metavar="MODEL",
                       help="a classifier never optimized against that judges each class dream (repeatable), "
                            "e.g. bundled:efficientnet-lite1")
    for name in ("tv", "l1", "l2", "blur", "center"):
        image.add_argument(f"--{name}", type=non_negative, default=0.0, help=f"weight of the {name} regularizer")
    prompt = sub.choices["prompt"]
    prompt.add_argument("--method", default="epo", choices=["epo", "gcg"])
    prompt.add_argument("--iters", type=positive(int), default=50)
    prompt.add_argument("--tokens", type=positive(int), default=10, help="prompt length in tokens")
    prompt.add_argument("--population", type=positive(int), default=6, help="EPO slots")
    prompt.add_argument("--children", type=positive(int), default=32, help="children per EPO member / GCG batch size")
    prompt.add_argument("--topk", type=positive(int), default=None,
                        help="replacement tokens drawn from per position (default: the method's, EPO 128, GCG 64)")
    prompt.add_argument("--prefix", default="")
    prompt.add_argument("--suffix", default="")
    prompt.add_argument("--no-describe", dest="describe", action="store_false",
                        help="skip the output-side descriptions (VocabProj, TokenChange) of feature and neuron targets")
    sae_command.add_parser(sub)
    return parser


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "image":
        regs = {name: getattr(args, name) for name in ("tv", "l1", "l2", "blur", "center") if getattr(args, name)}
        return {"steps": args.steps, "param": args.param, "lr": args.lr, "n_per_target": args.per_target,
                "diversity": args.diversity, "regularizers": regs,
                **({"image_size": (args.size, args.size)} if args.size else {})}
    common = {"method": args.method, "n_tokens": args.tokens, "iters": args.iters,
              **({} if args.topk is None else {"topk": args.topk}),
              "prefix": args.prefix, "suffix": args.suffix, **({} if args.describe else {"describe": False})}
    if args.method == "epo":
        return {**common, "population": args.population, "children_per_member": args.children}
    return {**common, "batch_size": args.children}


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


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_image_memory(args: argparse.Namespace, n_targets: int, size: tuple[int, int], device: torch.device) -> None:
    """Refuse an image batch whose estimated memory exceeds what the device has free."""
    images = min(args.batch_targets, n_targets) * args.per_target
    need = images * 3 * size[0] * size[1] * BYTES_PER_INPUT_VALUE
    free = _available_bytes(device)
    if free is not None and need > free:
        raise UsageError(f"{images} image(s) of {size[0]}x{size[1]} need about {need / 2**30:.1f} GiB but "
                         f"{free / 2**30:.1f} GiB is free; lower --size, --batch-targets or --per-target")


def _check_dataset(args: argparse.Namespace) -> None:
    from dreamy.datasets import DatasetError, open_images, open_text

    if args.maxima is None:
        return
    try:
        if args.command == "image":
            open_images(args.maxima, limit=1)
        else:
            open_text(args.maxima, max_words=1)
    except DatasetError as error:
        raise UsageError(f"--maxima: {str(error).splitlines()[0]}") from error


def _check_arguments(args: argparse.Namespace) -> torch.device:
    """Everything about a dream command that is known before loading the model."""
    from dreamy.models import ModelLoadError, check_device, kind_of

    wanted = "vision" if args.command == "image" else "language"
    kind = kind_of(args.model)
    if kind is not None and kind != wanted:
        other = "prompt" if args.command == "image" else "image"
        raise UsageError(f"--model {args.model} is a {kind} model; `{args.command}` needs a {wanted} model "
                         f"(use `dream {other}`, or e.g. --model {DEFAULT_MODELS[args.command]})")
    try:
        device = check_device(args.device)
    except ModelLoadError as error:
        raise UsageError(f"--device: {error}") from error
    check_seed(args.seed)
    if args.command == "image" and args.size is not None and args.size < MIN_IMAGE_SIDE:
        raise UsageError(f"--size must be >= {MIN_IMAGE_SIDE} pixels, got {args.size}")
    for judge in getattr(args, "judge", []):
        if kind_of(judge) != "vision":
            what = f"a {kind_of(judge)} model" if kind_of(judge) else "not a known model name"
            raise UsageError(f"--judge {judge} is {what}; a judge is an image classifier, e.g. --judge bundled:efficientnet-lite1")
    _check_dataset(args)
    return device


def _attach_maxima(args: argparse.Namespace, loaded: Any, out: Path) -> None:
    """Find (or read cached) dataset maxima for the finished targets and put them in their records."""
    from dreamy.scale import attach_maxima

    attach_maxima(out, loaded, args.command, args.maxima, model=args.model, describe=getattr(args, "describe", True),
                  progress=not args.quiet)


def _load_judges(args: argparse.Namespace, loaded: Any, device: torch.device) -> list[Any]:
    """Load the --judge models and check that each classifies the dreamed model's classes."""
    from dreamy.models import load
    from dreamy.vision.judges import JudgeError, check_judge

    judges = [load(name, device) for name in dict.fromkeys(getattr(args, "judge", []))]
    for judge in judges:
        try:
            check_judge(judge, len(loaded.class_names) if loaded.class_names else None)
        except JudgeError as error:
            raise UsageError(f"--judge: {error}") from error
    return judges


def _attach_judges(args: argparse.Namespace, judges: list[Any], out: Path) -> None:
    """Add the judges' verdicts to every finished class-logit record and rewrite the gallery."""
    from dreamy.gallery import write_index
    from dreamy.results import ResultsStore
    from dreamy.scale import gallery_title
    from dreamy.vision.judges import judge_records

    store = ResultsStore(out)
    updated = {r["target"]: r for r in judge_records(judges, store.records, out)}
    if updated:
        store.add_many([updated.get(r["target"], r) for r in store.records])  # keeps the gallery's order
        write_index(out, store.records, gallery_title(args.command, args.model))


def _sites(args: argparse.Namespace) -> int:
    from dreamy.models import load
    from dreamy.targets import list_sites

    loaded = load(args.model, args.device)
    if loaded.kind == "vision":
        example = (torch.zeros(1, 3, *loaded.preprocess.size, device=loaded.device),)
        listed = list_sites(loaded.model, *example)
    else:
        ids = loaded.tokenizer("Hello world", return_tensors="pt").input_ids.to(loaded.device)
        listed = list_sites(loaded.model, input_ids=ids)
    width = max(len(name) for name, _ in listed)
    for name, shape in listed:
        print(f"{name:<{width}}  {list(shape) if shape else '-'}")
    return 0


def _dream(args: argparse.Namespace) -> int:
    from dreamy.batches import plan_batches, unusable_targets
    from dreamy.models import load
    from dreamy.results import OutDirError, prepare_out_dir, run_info, run_lock
    from dreamy.scale import dream_targets

    device = _check_arguments(args)
    specs = _targets(args)
    if args.seed + len(plan_batches(specs, args.batch_targets)) > MAX_SEED:
        raise UsageError(f"--seed {args.seed} is too large: batch k uses seed + k, which must stay <= {MAX_SEED}")
    settings = _settings(args)
    out = Path(args.out)
    try:
        prepare_out_dir(args.out, run_info(args.model, args.command, settings, args.seed), resume=args.resume,
                        overwrite=args.overwrite)
    except OutDirError as error:
        raise UsageError(str(error)) from error
    loaded = load(args.model, device)
    if args.command == "image":
        _check_image_memory(args, len(specs), tuple(settings.get("image_size") or loaded.preprocess.size), device)
    bad = unusable_targets(loaded, args.command, specs, settings)
    if bad:
        more = f" (and {len(bad) - 1} more bad target(s))" if len(bad) > 1 else ""
        raise UsageError(f"target {bad[0][0]}: {bad[0][1]}{more}")
    judges = _load_judges(args, loaded, device)
    try:
        with run_lock(out):  # one run per folder, for the dreams, the judges and the maxima alike
            records = dream_targets(args.model, specs, kind=args.command, settings=settings, out_dir=out,
                                    resume=args.resume, overwrite=args.overwrite, seed=args.seed,
                                    batch_targets=args.batch_targets, use_ray=args.ray is not None,
                                    ray_address=args.ray or None, workers=args.workers, device=str(device),
                                    progress=not args.quiet, loaded=loaded)
            if judges:
                _attach_judges(args, judges, out)
            _attach_maxima(args, loaded, out)
    except OutDirError as error:
        raise UsageError(str(error)) from error
    failed = [r for r in records if "error" in r]
    for record in failed:
        print(f"dream: target {record['target']} failed: {record['error']}", file=sys.stderr)
    print(f"{len(records) - len(failed)} target(s) dreamed, {len(failed)} failed; gallery: {out / 'index.html'}")
    return 1 if failed else 0


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
    logging.basicConfig(level=logging.WARNING, format="dream: %(message)s")
    previous = _interrupt_on_sigterm()
    try:
        args = build_parser().parse_args(argv)
        if args.command == "sites":
            return _sites(args)
        if args.command == "sae-train":
            return sae_command.run(args)
        return _dream(args)
    except UsageError as error:
        print(f"dream: error: {error}", file=sys.stderr)
        return 2
    except (TargetError, ValueError) as error:
        print(f"dream: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dream: interrupted; finished targets are saved (rerun with --resume)", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
