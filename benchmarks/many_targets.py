"""How much does packing many targets into one batch save over dreaming them one at a time? (issue 7)

Images: N channels of one block, once packed (one batched forward+backward per step for all N targets,
`vision.dream(model, targets)`), once one target per call. Same steps, image size and seed.
Prompts: N MLP neurons searched with EPO, once packed (`language.epo_many`: one gradient pass and one
scoring call per iteration for all N, children of different targets that swap the same position
sharing a forward), once one target per `epo` call. Each target draws from its own seeded generator,
so both modes must find the very same prompts; the table says whether they did.

    python -m benchmarks.many_targets                        # both kinds on the bundled models, quick
    python -m benchmarks.many_targets --full                 # 64 channels / 16 neurons, more steps
    python -m benchmarks.many_targets --kind image --model tiny:cnn --site conv3
    python -m benchmarks.many_targets --kind prompt --lm tiny:lm --lm-site model.layers.1.mlp.down_proj
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks import common
from dreamy.models import load


def _row(mode: str, n: int, seconds: float, mean_activation: float) -> dict[str, Any]:
    return {"mode": mode, "targets": n, "seconds": seconds, "s_per_target": seconds / n, "mean_activation": mean_activation}


def image_packing(args: argparse.Namespace) -> dict[str, Any]:
    """Packed vs one-at-a-time channel dreams; returns rows, speed-up and settings."""
    from dreamy.vision.render import dream

    loaded = load(args.model)
    n = args.targets or (64 if args.full else 16)
    steps = args.steps or (64 if args.full else 8)
    side = args.size or (loaded.preprocess.size[0] if args.full else min(128, loaded.preprocess.size[0]))
    targets = [f"{args.site}:{i}" for i in range(n)]
    settings = dict(steps=steps, image_size=(side, side), seed=0, progress=False)

    dream(loaded, targets[:2], **{**settings, "steps": 2})  # warm-up: first-call allocations
    tick = time.perf_counter()
    packed = dream(loaded, targets, **settings)
    packed_s = time.perf_counter() - tick
    tick = time.perf_counter()
    single = [dream(loaded, [t], **settings) for t in targets]
    single_s = time.perf_counter() - tick

    rows = [_row("packed (one batch)", n, packed_s, float(packed.activation.mean())),
            _row("one at a time", n, single_s, sum(float(r.activation[0]) for r in single) / n)]
    common.print_table(rows, title=f"images: {n} channels of {args.site} on {args.model}, {steps} steps, {side}px")
    return {"rows": rows, "speedup": single_s / packed_s,
            "settings": {**settings, "model": args.model, "site": args.site, "targets": n}}


def prompt_packing(args: argparse.Namespace) -> dict[str, Any]:
    """Packed vs one-at-a-time EPO on MLP neurons; returns rows, speed-up, agreement and settings."""
    from dreamy.language import epo, epo_many

    loaded = load(args.lm)
    n = args.lm_targets or (16 if args.full else 4)
    iters = args.iters or (10 if args.full else 3)
    targets = [f"{args.lm_site}:{i}" for i in range(n)]
    settings = dict(n_tokens=10, iters=iters, population=4, children=16, restart_every=None, seed=0,
                    progress=False)

    epo(loaded, targets[0], **{**settings, "iters": 1})  # warm-up
    tick = time.perf_counter()
    packed = epo_many(loaded, targets, **settings)
    packed_s = time.perf_counter() - tick
    tick = time.perf_counter()
    single = [epo(loaded, t, **settings) for t in targets]
    single_s = time.perf_counter() - tick

    same = sum([r["token_ids"] for r in a.history] == [r["token_ids"] for r in b.history] for a, b in zip(packed, single))
    rows = [_row("packed (epo_many)", n, packed_s, sum(r.best.activation for r in packed) / n),
            _row("one at a time (epo)", n, single_s, sum(r.best.activation for r in single) / n)]
    for row in rows:
        row["same prompts as the other mode"] = f"{same}/{n}"
    common.print_table(rows, title=f"prompts: EPO on {n} neurons of {args.lm_site} on {args.lm}, {iters} iterations, "
                                   f"population 4 x 16 children, 10 tokens")
    return {"rows": rows, "speedup": single_s / packed_s, "same_prompts": same,
            "settings": {**settings, "model": args.lm, "site": args.lm_site, "targets": n}}


def main(argv: list[str] | None = None) -> dict:
    args_parser = common.parser(__doc__.splitlines()[0])
    args_parser.add_argument("--kind", choices=["image", "prompt", "both"], default="both")
    args_parser.add_argument("--model", default="bundled:efficientnet-lite0", help="image model")
    args_parser.add_argument("--site", default="_blocks.8", help="the block whose channels are dreamed")
    args_parser.add_argument("--targets", type=int, default=None, help="number of channels (default 16 quick / 64 full)")
    args_parser.add_argument("--steps", type=int, default=None)
    args_parser.add_argument("--size", type=int, default=None, help="image side (default: 128 quick, the model's size full)")
    args_parser.add_argument("--lm", default="bundled:smollm2-135m", help="language model")
    args_parser.add_argument("--lm-site", default="model.layers.5.mlp.down_proj@in", help="the MLP whose neurons are searched")
    args_parser.add_argument("--lm-targets", type=int, default=None, help="number of neurons (default 4 quick / 16 full)")
    args_parser.add_argument("--iters", type=int, default=None, help="EPO iterations (default 3 quick / 10 full)")
    args = args_parser.parse_args(argv)
    started = time.perf_counter()
    figures: dict[str, Any] = {}
    if args.kind in ("image", "both"):
        figures["image"] = image_packing(args)
    if args.kind in ("prompt", "both"):
        figures["prompt"] = prompt_packing(args)
    print()
    for kind, part in figures.items():
        print(f"{kind}: packing is {part['speedup']:.2f}x faster than one target at a time")
    common.write_result("many_targets", figures, settings={"kind": args.kind}, results_dir=args.results_dir, started=started)
    return figures


if __name__ == "__main__":
    main()
