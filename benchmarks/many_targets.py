"""How much does packing many targets into one batch save over dreaming them one at a time? (issue 7)

Dreams N channels of one block of the model: once packed (one batched forward+backward per step for
all N targets, `dream(model, targets)`), once one target per call. Same steps, image size and seed.

    python -m benchmarks.many_targets                        # bundled EfficientNet-Lite0, 16 channels, quick
    python -m benchmarks.many_targets --full                 # 64 channels, more steps
    python -m benchmarks.many_targets --model tiny:cnn --site conv3
"""

from __future__ import annotations

import time

from benchmarks import common
from dreamy.models import load
from dreamy.vision.render import dream


def main(argv: list[str] | None = None) -> dict:
    args_parser = common.parser(__doc__.splitlines()[0])
    args_parser.add_argument("--model", default="bundled:efficientnet-lite0")
    args_parser.add_argument("--site", default="_blocks.8", help="the block whose channels are dreamed")
    args_parser.add_argument("--targets", type=int, default=None, help="number of channels (default 16 quick / 64 full)")
    args_parser.add_argument("--steps", type=int, default=None)
    args_parser.add_argument("--size", type=int, default=None, help="image side (default: 128 quick, the model's size full)")
    args = args_parser.parse_args(argv)
    started = time.perf_counter()
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

    packed_mean = float(packed.activation.mean())
    single_mean = sum(float(r.activation[0]) for r in single) / n
    rows = [
        {"mode": "packed (one batch)", "targets": n, "seconds": packed_s, "s_per_target": packed_s / n,
         "mean_activation": packed_mean},
        {"mode": "one at a time", "targets": n, "seconds": single_s, "s_per_target": single_s / n,
         "mean_activation": single_mean},
    ]
    common.print_table(rows, title=f"{n} channels of {args.site} on {args.model}, {steps} steps, {side}px")
    speedup = single_s / packed_s
    print(f"\nspeed-up of packing: {speedup:.2f}x")
    figures = {"rows": rows, "speedup": speedup}
    common.write_result("many_targets", figures, settings={**settings, "model": args.model, "site": args.site, "targets": n},
                        results_dir=args.results_dir, started=started)
    return figures


if __name__ == "__main__":
    main()
