"""How do our image dreams compare with lucent's `render_vis`, run side by side? (issue 3)

Same model (bundled EfficientNet-Lite0 with its own preprocessing, mean = std = 0.5), same targets,
steps, image size, parametrization (decorrelated Fourier, init std 0.01), optimizer (Adam, lr 0.05)
and transform ranges. Per scenario and library: seconds per step (wall time of the whole call /
steps; median over repeats, the two libraries alternating so that machine load hits both alike) and
the final activation, measured the same way for both: our `Probe` on the un-transformed final image
after the model's preprocessing (plus p(class) for logit targets).

Transforms. lucent's standard set: constant pad 12 (0.5), jitter 8, scale 0.9..1.1 (11 values),
rotation -10..10 degrees, jitter 4, one draw for the whole batch; its jitter translates by 0..d-1 pixels
in ONE direction, so the two jitters span 0..10 pixels. Ours: pad 12, jitter +-5 (the same 10-pixel
span, centred), scale 0.9..1.1, rotation +-10, one affine warp with its own draw per batch item.

lucent's defects, worked around here only: its modules fix `device = cuda:0` at import (we point them
at the benchmark's device); `render_vis` hooks every module and never removes the hooks (we remove
every hook it added after each call); its `preprocess=True` normalizes with torchvision's ImageNet
statistics, wrong for this model (we pass `preprocess=False` and append the model's own mean/std
normalization as the last transform); `show_image` opens a window (off). As in lucent, its transformed
images are not cropped back: the model sees the padded/zoomed size (248 px and up for 224 px images;
EfficientNet pools adaptively), where ours samples a 224 px window per item.

    pip install torch-lucent                                # optional extra; pulls kornia 0.4.1
    python -m benchmarks.vision_vs_lucent                   # quick (a couple of minutes on 2 cores)
    python -m benchmarks.vision_vs_lucent --full            # 256 steps, 3 repeats, a batch scenario
    python -m benchmarks.vision_vs_lucent --steps 128 --repeats 2 --size 224 --device cpu
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks import common
from dreamy.models import LoadedModel, load
from dreamy.targets import Probe
from dreamy.vision import Transforms, dream

MODEL = "bundled:efficientnet-lite0"
LR = 0.05


@dataclass(frozen=True)
class Scenario:
    """Targets dreamed together in one batch (one row each)."""

    name: str
    targets: tuple[str, ...]


QUICK = (Scenario("logit (cat 285)", ("logits:285",)), Scenario("middle-block channel", ("_blocks.8:23",)))
FULL = QUICK + (Scenario("4 channels, one batch", ("_blocks.8:23", "_blocks.8:10", "_blocks.10:34", "_blocks.6:42")),)


def lucent_layer(site: str) -> str:
    """lucent's name for a module path: `_`-joined (`_blocks.8` -> `_blocks_8`); logits are the `_fc` output."""
    return "_fc" if site == "logits" else site.replace(".", "_")


def point_lucent_at(device: torch.device) -> None:
    """Work around lucent's `cuda:0` fixed at import: point its module globals at `device`, and (only when
    lucent's own pick differs) replace its colour decorrelation, which picks `cuda:0` inside the
    function, by the same matrix product on the image's device."""
    import lucent.optvis.param.color as color
    import lucent.optvis.param.spatial as spatial
    import lucent.optvis.transform as transform

    for module in (color, spatial, transform):
        module.device = device
    if device != torch.device("cuda:0" if torch.cuda.is_available() else "cpu"):
        matrix = torch.tensor(color.color_correlation_normalized.T)

        def decorrelate(image: Tensor) -> Tensor:
            return (image.permute(0, 2, 3, 1) @ matrix.to(image.device)).permute(0, 3, 1, 2)

        color._linear_decorrelate_color = decorrelate


def remove_added_hooks(model: nn.Module, before: dict[int, set[int]]) -> int:
    """Work around lucent's leaked hooks: remove every forward hook added since `before`; returns how many."""
    removed = 0
    for module in model.modules():
        for key in set(module._forward_hooks) - before.get(id(module), set()):
            del module._forward_hooks[key]
            removed += 1
    return removed


def run_lucent(loaded: LoadedModel, targets: tuple[str, ...], *, steps: int, size: int, seed: int) -> Tensor:
    """lucent's `render_vis` on `targets` (row i maximizes target i); returns the final images `[n, 3, H, W]`."""
    from lucent.optvis import objectives, param, render, transform

    torch.manual_seed(seed)
    import numpy as np
    np.random.seed(seed)  # lucent draws its transforms from numpy's global RNG
    objective = None
    for row, spec in enumerate(targets):
        site, unit = spec.rsplit(":", 1)
        term = objectives.channel(lucent_layer(site), int(unit), batch=row if len(targets) > 1 else None)
        objective = term if objective is None else objective + term
    mean = torch.tensor(loaded.preprocess.mean, device=loaded.device)[:, None, None]
    std = torch.tensor(loaded.preprocess.std, device=loaded.device)[:, None, None]
    normalize = lambda images: (images - mean) / std  # noqa: E731 (no resize: lucent feeds its padded size)
    before = {id(m): set(m._forward_hooks) for m in loaded.model.modules()}
    try:
        images = render.render_vis(
            loaded.model, objective, lambda: param.image(size, batch=len(targets), fft=True, decorrelate=True),
            optimizer=lambda params: torch.optim.Adam(params, lr=LR),
            transforms=transform.standard_transforms + [normalize], thresholds=(steps,), preprocess=False,
            progress=False, show_image=False)
    finally:
        remove_added_hooks(loaded.model, before)
    return torch.as_tensor(images[-1]).permute(0, 3, 1, 2).contiguous()


def run_ours(loaded: LoadedModel, targets: tuple[str, ...], *, steps: int, size: int, seed: int) -> Tensor:
    """Our `dream` with the matched settings; returns the final images `[n, 3, H, W]`."""
    transforms = Transforms(pad=12, jitter=5.0, scale=(0.9, 1.1), rotate=10.0)
    result = dream(loaded, list(targets), param="fourier", steps=steps, lr=LR, image_size=(size, size),
                   transforms=transforms, seed=seed, progress=False)
    return result.images


RUNNERS = {"dreamy": run_ours, "lucent": run_lucent}


def final_scores(loaded: LoadedModel, targets: tuple[str, ...], images: Tensor) -> dict[str, list[float]]:
    """Activation of row i's target on its un-transformed image (and p(class) for logit targets)."""
    with torch.no_grad():
        batch = loaded.preprocess.normalize(images.to(loaded.device))
        scores = Probe(loaded.model, list(targets))(batch, row_targets=list(range(len(targets)))).row_scores
        probs = loaded.model(batch).softmax(-1)
    result = {"activation": scores.cpu().tolist()}
    if all(t.startswith("logits:") for t in targets):
        result["p_class"] = [float(probs[i, int(t.split(":")[1])]) for i, t in enumerate(targets)]
    return result


def measure(loaded: LoadedModel, scenario: Scenario, *, steps: int, size: int, repeats: int) -> list[dict[str, Any]]:
    """Both libraries on one scenario, alternating, `repeats` seeds; one row per library."""
    for runner in RUNNERS.values():  # warm-up: first-call costs (allocations, lazy imports) are not per step
        runner(loaded, scenario.targets, steps=2, size=size, seed=0)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in RUNNERS}
    for seed in range(repeats):
        for name, runner in RUNNERS.items():
            start = time.perf_counter()
            images = runner(loaded, scenario.targets, steps=steps, size=size, seed=seed)
            elapsed = time.perf_counter() - start
            runs[name].append({"seed": seed, "seconds": elapsed, "seconds_per_step": elapsed / steps,
                               **final_scores(loaded, scenario.targets, images)})
    rows = []
    for name, done in runs.items():
        activations = [statistics.fmean(run["activation"]) for run in done]
        row = {"scenario": scenario.name, "library": name, "targets": list(scenario.targets), "rows": len(scenario.targets),
               "s/step": statistics.median(run["seconds_per_step"] for run in done),
               "activation": statistics.fmean(activations),
               "activation min": min(activations), "activation max": max(activations), "runs": done}
        if "p_class" in done[0]:
            row["p(class)"] = statistics.fmean(statistics.fmean(run["p_class"]) for run in done)
        rows.append(row)
    ours, theirs = rows
    ours["speed-up"] = theirs["s/step"] / ours["s/step"]
    return rows


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="optimizer steps per render (quick 64, full 256)")
    parser.add_argument("--repeats", type=int, help="seeds per library and scenario (quick 1, full 3)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    args = parser.parse_args()
    try:
        import lucent  # noqa: F401
    except ImportError:
        parser.error("lucent is not installed: pip install torch-lucent (the optional extra 'lucent')")
    steps = args.steps or (256 if args.full else 64)
    repeats = args.repeats or (3 if args.full else 1)
    scenarios = FULL if args.full else QUICK
    device = torch.device(args.device)
    started = time.perf_counter()
    point_lucent_at(device)
    loaded = load(MODEL, device=device)
    rows = []
    for scenario in scenarios:
        rows += measure(loaded, scenario, steps=steps, size=args.size, repeats=repeats)
        common.print_table([{k: v for k, v in r.items() if k not in ("runs", "targets")} for r in rows[-2:]],
                           title=f"{scenario.name}: {', '.join(scenario.targets)}")
    columns = ["scenario", "library", "rows", "s/step", "speed-up", "activation", "activation min", "activation max", "p(class)"]
    common.print_table(rows, columns, title=f"{MODEL}, {steps} steps, {args.size}px, {repeats} seed(s), {device}")
    settings = {"model": MODEL, "steps": steps, "repeats": repeats, "size": args.size, "lr": LR, "param": "fourier (decorrelated)",
                "transforms": {"lucent": "standard_transforms: pad 12, jitter 8, scale 0.9-1.1, rotate +-10, jitter 4 (one draw per batch)",
                               "dreamy": "Transforms(pad=12, jitter=5, scale=(0.9, 1.1), rotate=10) (one draw per item)"},
                "scenarios": {s.name: list(s.targets) for s in scenarios}}
    path = common.write_result("vision_vs_lucent", {"rows": rows}, settings=settings, results_dir=args.results_dir,
                               device=device, started=started)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
