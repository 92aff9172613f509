"""Do class dreams transfer to models they were never optimized against? (issue 14)

Class dreams from EfficientNet-Lite0 (the source) for N ImageNet classes drawn with a seed, all N
packed into one batch, for each parametrization (`fourier`, `pixel`, `maco`, `dip`, `decoder`) with
the dream defaults (standard transforms, no regularizer, Adam), and lucent's `render_vis` with its
defaults (decorrelated FFT image, standard transforms) at the same steps, image size and learning
rate (when `torch-lucent` is installed). Judges, never optimized against: EfficientNet-Lite1 and
Lite2, each seeing the final images resized to its own input (240 and 260 px). Per method and judge:
top-1 and top-5 transfer rates (the target class ranked first / in the top 5) and the mean judge
probability of the target class; the source's own mean probability (white-box); seconds per class
(wall time of the packed batch / N; machine load from other work inflates it). With `--jobs 2` (the
default) the methods run in two worker processes of one thread each, most expensive first: EfficientNet's
depthwise convolutions and elementwise ops are memory-bound on a 2-core CPU, so two one-thread runs side
by side finish sooner than one two-thread run after another; s/class is then a one-thread figure.

lucent gets the workarounds of `benchmarks/vision_vs_lucent.py` (device, leaked hooks, the model's own
normalization instead of torchvision's ImageNet statistics); its objective is the target logit of row
i (`channel(LAYER, class, batch=i)` on the module that outputs the logits).

    python -m benchmarks.transfer                      # quick: 32 classes, 64 steps, 224 px (<= 20 min on 2 idle cores)
    python -m benchmarks.transfer --full               # 100 classes, 128 steps (the CLI's default steps)
    python -m benchmarks.transfer --classes 8 --steps 16 --params fourier,dip --no-lucent
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from benchmarks import common
from dreamy.models import LoadedModel, load
from dreamy.vision import dream
from dreamy.vision.judges import judge_images

MODEL = "bundled:efficientnet-lite0"
JUDGES = ("bundled:efficientnet-lite1", "bundled:efficientnet-lite2")
PARAMS = ("fourier", "pixel", "maco", "dip", "decoder")
LR = 0.05
LUCENT = "lucent render_vis"
RELATIVE_COST = {"dip": 2.0, "decoder": 2.0, LUCENT: 1.7}  # per class, against fourier (measured, 224 px)


def draw_classes(n: int, n_classes: int, seed: int) -> list[int]:
    """`n` distinct classes out of `n_classes`, drawn with `seed`, sorted.

    Example:
        >>> draw_classes(3, 10, 0)
        [0, 6, 9]
    """
    if not 1 <= n <= n_classes:
        raise ValueError(f"--classes must be in 1..{n_classes}, got {n}")
    return sorted(random.Random(seed).sample(range(n_classes), n))


def logits_layer(model: nn.Module) -> str:
    """The dotted name of the last `nn.Linear` (the module that outputs a classifier's logits).

    Example:
        >>> logits_layer(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4)))
        '2'
    """
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError("the model has no nn.Linear layer to read logits from")
    return names[-1]


def run_dreamy(loaded: LoadedModel, classes: Sequence[int], param: str, *, steps: int, size: int, seed: int) -> Tensor:
    """Our `dream` with its defaults for `param`, every class one row of one batch."""
    return dream(loaded, [f"logits:{c}" for c in classes], param=param, steps=steps, lr=LR, image_size=(size, size),
                 seed=seed, progress=False).images


def run_lucent(loaded: LoadedModel, classes: Sequence[int], *, steps: int, size: int, seed: int) -> Tensor:
    """lucent's `render_vis` with its defaults on the logits of `classes` (row i maximizes class i)."""
    from benchmarks import vision_vs_lucent

    layer = logits_layer(loaded.model)
    targets = tuple(f"{layer}:{c}" for c in classes)
    return vision_vs_lucent.run_lucent(loaded, targets, steps=steps, size=size, seed=seed)


def _run_method(job: dict[str, Any], source: LoadedModel | None = None) -> tuple[str, Tensor, float]:
    """One method: its images and wall seconds, on `job["threads"]` threads (a worker process of `--jobs`
    loads the source model itself; in this process pass the loaded `source`)."""
    torch.set_num_threads(job["threads"])
    source = source or load(job["model"], device=torch.device(job["device"]))
    start = time.perf_counter()
    if job["name"] == LUCENT:
        from benchmarks import vision_vs_lucent

        vision_vs_lucent.point_lucent_at(torch.device(job["device"]))
        images = run_lucent(source, job["classes"], steps=job["steps"], size=job["size"], seed=job["seed"])
    else:
        images = run_dreamy(source, job["classes"], job["name"], steps=job["steps"], size=job["size"], seed=job["seed"])
    return job["name"], images.detach().cpu(), time.perf_counter() - start


def balanced_order(names: Sequence[str], cost: dict[str, float]) -> list[str]:
    """Methods, most expensive first (workers of a pool take them in this order, so the long ones do not
    come last).

    Example:
        >>> balanced_order(["fourier", "dip", "pixel"], {"dip": 2.0})
        ['dip', 'fourier', 'pixel']
    """
    return sorted(names, key=lambda name: -cost.get(name, 1.0))


def run_methods(names: Sequence[str], jobs: int, common_job: dict[str, Any],
                source: LoadedModel | None = None) -> dict[str, tuple[Tensor, float]]:
    """Every method's (images, seconds): in this process (`jobs` 1) or in `jobs` worker processes of
    `max(1, cores // jobs)` threads each (EfficientNet's depthwise convolutions and elementwise ops are
    memory-bound on a small CPU, so two one-thread processes get more done than one two-thread process).
    `source`, the already loaded model, serves the in-process runs."""
    if jobs <= 1:
        return {name: _run_method({**common_job, "name": name, "threads": torch.get_num_threads()}, source)[1:]
                for name in names}
    import concurrent.futures
    import multiprocessing
    import os

    threads = max(1, (os.cpu_count() or 1) // jobs)
    order = balanced_order(names, RELATIVE_COST)
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = pool.map(_run_method, [{**common_job, "name": name, "threads": threads} for name in order])
        out = {name: (images, seconds) for name, images, seconds in done}
    return {name: out[name] for name in names}


def verdicts(judges: Sequence[LoadedModel], source: LoadedModel, images: Tensor, classes: Sequence[int]) -> dict[str, Any]:
    """Per judge: top-1 / top-5 transfer rates, mean probability of the target class, and per-class figures."""
    figures: dict[str, Any] = {}
    for model in [source, *judges]:
        judged = judge_images(model, images, list(classes))
        figures[model.name] = {"top1": statistics.fmean(v.rank == 1 for v in judged),
                               "top5": statistics.fmean(v.rank <= 5 for v in judged),
                               "p": statistics.fmean(v.probability for v in judged),
                               "per_class": [{"class": v.target, "label": v.label, "p": v.probability, "rank": v.rank,
                                              "top5": v.top5} for v in judged]}
    return figures


def short(name: str) -> str:
    """A judge's column label: `bundled:efficientnet-lite1` -> `lite1`.

    Example:
        >>> short("bundled:efficientnet-lite1"), short("tiny:cnn")
        ('lite1', 'cnn')
    """
    return name.split(":", 1)[-1].replace("efficientnet-", "")


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, help="classes drawn with --seed (quick 32, full 100)")
    parser.add_argument("--steps", type=int, help="optimizer steps for every method (quick 64, full 128)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="draws the classes and seeds every dream (default %(default)s)")
    parser.add_argument("--params", default=",".join(PARAMS), help="parametrizations, comma-separated (default %(default)s)")
    parser.add_argument("--no-lucent", action="store_true", help="skip lucent even when it is installed")
    parser.add_argument("--model", default=MODEL, help="the source model dreams are made on (default %(default)s)")
    parser.add_argument("--judge", action="append", help=f"judge models (default {', '.join(JUDGES)})")
    parser.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="methods run in this many worker processes, one thread "
                        "each on a 2-core CPU (default %(default)s; 1 runs them here; use 1 on a GPU)")
    args = parser.parse_args()
    steps = args.steps or (128 if args.full else 64)
    device = torch.device(args.device)
    started = time.perf_counter()
    source = load(args.model, device=device)
    judges = [load(name, device=device) for name in (args.judge or JUDGES)]
    classes = draw_classes(args.classes or (100 if args.full else 32), len(source.class_names or []), args.seed)
    names = [p for p in args.params.split(",") if p]
    lucent_note = "skipped (--no-lucent)" if args.no_lucent else "not installed (pip install torch-lucent)"
    if not args.no_lucent:
        try:
            from benchmarks import vision_vs_lucent  # noqa: F401  (lucent importable)
            import lucent  # noqa: F401

            names.append(LUCENT)
            lucent_note = "render_vis defaults: param.image(fft=True, decorrelate=True), standard_transforms, Adam lr 0.05"
        except ImportError:
            pass
    made = run_methods(names, args.jobs, {"model": args.model, "device": args.device, "classes": classes, "steps": steps,
                                          "size": args.size, "seed": args.seed}, source)
    rows = []
    for name in names:
        images, elapsed = made[name]
        figures = verdicts(judges, source, images.to(device), classes)
        row: dict[str, Any] = {"method": name, "s/class": elapsed / len(classes), "seconds": elapsed,
                               f"p {short(source.name)} (source)": figures[source.name]["p"]}
        for judge in judges:
            tag = short(judge.name)
            row.update({f"top1 {tag}": figures[judge.name]["top1"], f"top5 {tag}": figures[judge.name]["top5"],
                        f"p {tag}": figures[judge.name]["p"]})
        row["p judges"] = statistics.fmean(figures[j.name]["p"] for j in judges)
        row["judged"] = figures
        rows.append(row)
        common.print_table([{k: v for k, v in row.items() if k != "judged"}], title=f"{name}: {len(classes)} classes, {steps} steps")
    columns = [k for k in rows[0] if k not in ("judged", "seconds")] if rows else None
    common.print_table(rows, columns, title=f"transfer of {args.model} class dreams ({len(classes)} classes, {steps} steps, "
                                            f"{args.size} px, seed {args.seed}) to {', '.join(j.name for j in judges)}")
    settings = {"model": args.model, "judges": [j.name for j in judges], "classes": classes, "steps": steps,
                "size": args.size, "lr": LR, "seed": args.seed, "params": args.params.split(","), "lucent": lucent_note,
                "jobs": args.jobs,
                "dreamy": "vision.dream defaults: Transforms.standard(size), no regularizer, Adam, all classes in one batch"}
    path = common.write_result("transfer", {"rows": rows}, settings=settings, results_dir=args.results_dir,
                               device=device, started=started)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
