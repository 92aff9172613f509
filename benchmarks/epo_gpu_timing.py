"""How fast is an EPO iteration, ours against the authors' reference, on a GPU at real model sizes?

Timing only, no weights needed: random-init Llama models of the SmolLM2-135M and SmolLM2-1.7B shapes with the
SmolLM2 tokenizer (`--tokenizer FOLDER`, default the `--model`'s), one MLP neuron of the middle layer. Per shape
and per scoring strategy of ours (`--scoring`, comma-separated), after a 2-iteration warm-up of each:
- `ours_s_per_iter`: wall time of one `epo` call / iterations (the result's frontier and attributions included);
- `ours_loop_s_per_iter`: our search loop alone (`settings["loop_seconds"]` of that call / iterations);
- `reference_s_per_iter`: wall time of one reference `epo` call / iterations (same span length, population,
  children, iterations and seed; the reference imported as `benchmarks.epo_vs_reference` does);
- with `--profile-launches`, kernel launches and host-device synchronizations per iteration of each: the
  profiler's counts of a 3-iteration and a 1-iteration call, their difference over 2 (what does not grow with
  the iterations, such as the warm-up of a call, cancels; ours includes the result's attribution pass, one
  gradient chunk at both lengths unless the frontier outgrows it).
Our settings: `EPOConfig` defaults changed with `--set KEY=VALUE` (iterations from `--iters`).

    python -m benchmarks.epo_gpu_timing --reference-src /tmp/dreamy-ref --tokenizer ~/.cache/dreamy/bundled_smollm2-135m
    python -m benchmarks.epo_gpu_timing --reference-src /tmp/dreamy-ref --scoring packed,full --profile-launches --iters 30
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

import torch

from benchmarks import common
from benchmarks.epo_vs_reference import load_reference, run_reference
from dreamy.language import EPOConfig, epo
from dreamy.models import LoadedModel, load

SHAPES = ("llama-135m-shape", "llama-1.7b-shape")


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA), so a wall time covers it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def launches(run: Callable[[int], Any], device: Any) -> dict[str, float]:
    """Kernel launches and host-device synchronizations per iteration of `run(iters)` (profiled at 3 and 1
    iterations; the difference over 2)."""
    from torch.profiler import ProfilerActivity, profile

    def count(iters: int) -> tuple[int, int]:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run(iters)
            sync(device)
        names = [e.name for e in prof.events()]
        kernels = sum(n in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx") for n in names)
        return kernels, sum(n in ("aten::item", "aten::_local_scalar_dense") for n in names)

    one, three = count(1), count(3)
    return {"launches_per_iter": (three[0] - one[0]) / 2, "syncs_per_iter": (three[1] - one[1]) / 2}


def time_shape(reference: Any, loaded: LoadedModel, config: EPOConfig, scorings: list[str],
               profile_launches: bool) -> list[dict[str, Any]]:
    """One row per scoring strategy: both methods' s/iter on `loaded` (see the module docstring)."""
    device, iters = loaded.device, config.iters
    layer = loaded.model.config.num_hidden_layers // 2
    target = f"model.layers.{layer}.mlp.down_proj@in:5"

    def reference_run(n: int) -> dict[str, Any]:
        done = run_reference(reference, loaded, layer, 5, EPOConfig.build(config, iters=n))
        sync(device)
        return done

    reference_run(2)  # warm-up
    ref_s = reference_run(iters)["seconds"] / iters
    ref_counts = launches(reference_run, device) if profile_launches else {}
    rows = []
    for scoring in scorings:
        ours = EPOConfig.build(config, scoring=scoring)
        epo(loaded, target, ours, iters=2, progress=False)  # warm-up
        sync(device)
        start = time.perf_counter()
        found = epo(loaded, target, ours, progress=False)
        sync(device)
        ours_s = (time.perf_counter() - start) / iters
        row = {"model": loaded.name, "device": str(device), "scoring": scoring, "iters": iters, "ours_s_per_iter": ours_s,
               "ours_loop_s_per_iter": found.settings["loop_seconds"] / iters, "reference_s_per_iter": ref_s,
               "ratio": ours_s / ref_s}
        if profile_launches:
            row.update(launches(lambda n: epo(loaded, target, ours, iters=n, progress=False), device))
            row.update({f"reference_{key}": value for key, value in ref_counts.items()})
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__.splitlines()[0], threads=True, config=EPOConfig)
    parser.add_argument("--reference-src", default=os.environ.get("DREAMY_REFERENCE_SRC"),
                        help="folder of a fetched Confirm-Solutions/dreamy (or its dreamy/epo.py); default $DREAMY_REFERENCE_SRC")
    parser.add_argument("--device", default="cuda", help="torch device (default %(default)s)")
    parser.add_argument("--model", default="bundled:smollm2-135m", help="whose tokenizer (default %(default)s)")
    parser.add_argument("--tokenizer", help="a tokenizer folder instead of the --model's")
    parser.add_argument("--iters", type=int, default=5, help="iterations timed (default %(default)s)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"model shapes, of {', '.join(common.LLAMA_SHAPES)}")
    parser.add_argument("--scoring", default="auto", help="our scoring strategies, comma-separated (default %(default)s)")
    parser.add_argument("--profile-launches", action="store_true", help="count kernel launches and syncs per iteration")
    args = common.parse(parser, argv)
    config = common.config_of(EPOConfig, args.sets, iters=args.iters)
    unknown = [shape for shape in args.shapes.split(",") if shape not in common.LLAMA_SHAPES]
    if unknown:
        raise SystemExit(f"--shapes: no shape {unknown[0]!r}; use some of {', '.join(common.LLAMA_SHAPES)}")
    if not args.reference_src:
        print("skipped: no reference EPO; fetch github.com/Confirm-Solutions/dreamy and pass --reference-src PATH")
        return
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        print(f"skipped: no CUDA device for --device {args.device} (--device cpu times on the CPU)")
        return
    reference = load_reference(args.reference_src)
    started = time.perf_counter()
    tokenizer = common.load_tokenizer(args.tokenizer) if args.tokenizer else load(args.model).tokenizer
    rows = []
    for shape in args.shapes.split(","):
        loaded = common.random_llama(shape, tokenizer, args.device)
        rows += time_shape(reference, loaded, config, args.scoring.split(","), args.profile_launches)
        del loaded
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()
    common.print_table(rows, title=f"EPO s/iter, random-init Llama models on {args.device}")
    path = common.write_result("epo_gpu_timing", {"rows": rows}, settings={
        "device": args.device, "shapes": args.shapes.split(","), "scoring": args.scoring.split(","),
        "epo": config.to_dict(), "reference_src": str(args.reference_src)},
        results_dir=args.results_dir, device=args.device, started=started)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
