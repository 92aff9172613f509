"""A whole layer on one device: how the cost per target falls as the pack grows (issue 22).

Prompts: EPO on a list of MLP neurons (`language.epo_many`, one packed gradient pass and one packed scoring
forward per iteration for the pack) at each pack size; the figure is neuron-iterations per second and the
per-target cost against a pack of 1 (the same run, alone). Each target draws from its own generator, so the
first target of every pack must find the very prompts it finds alone, and the last target of the largest pack
is also run alone to check it. Images: `vision.dream` on a list of class logits at each pack size; the figure
is target-steps per second; the check dreams a pack from fixed pixel starts and compares its first image with
the same start dreamed alone (max absolute pixel difference).

    python -m benchmarks.layer_sweep                                   # CPU, small: packs 1,8,32; images 1,4,16
    python -m benchmarks.layer_sweep --kind prompt --packs 1,8,32 --iters 3 --threads 1
    python -m benchmarks.layer_sweep --device cuda --timing-only --tokenizer ~/.cache/dreamy/bundled_smollm2-135m \\
        --packs 1,8,32,128,512 --image-packs 1,32,256 --results-dir benchmarks/results/gpu
    python -m benchmarks.layer_sweep --kind prompt --lm tiny:lm --lm-site model.layers.1.mlp.down_proj --packs 1,2

`--timing-only` searches a random-init Llama of the SmolLM2-135M shape with the real tokenizer (`--tokenizer`
folder), so a GPU machine without the weights can run it (its prompts mean nothing; the cost per iteration is
the model's). `--full` uses the default EPO budget (population 8, 32 children) instead of the small one
(population 2, 8 children).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import torch

from benchmarks import common
from dreamy.core.memory import is_oom
from dreamy.models import LoadedModel, load

DEFAULT_PACKS = "1,8,32,128,512"
CPU_PACKS = "1,8,32"
CPU_IMAGE_PACKS = "1,4,16"
SMALL_BUDGET = {"n_tokens": 12, "population": 2, "children": 8}
DEFAULT_BUDGET = {"n_tokens": 12, "population": 8, "children": 32}


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _packs(text: str) -> list[int]:
    packs = sorted({int(part) for part in text.split(",") if part.strip()})
    if not packs or packs[0] < 1:
        raise SystemExit(f"--packs: give pack sizes >= 1 separated by commas, got {text!r}")
    return packs


def timing_lm(tokenizer_dir: str | os.PathLike, device: str) -> LoadedModel:
    """A random-init Llama of the SmolLM2-135M shape with the tokenizer of `tokenizer_dir` (timing only)."""
    return common.random_llama("llama-135m-shape", common.load_tokenizer(tokenizer_dir), device)


def _token_ids(result: Any) -> list[list[int]]:
    return [list(record["token_ids"]) for record in result.history]


def prompt_sweep(loaded: LoadedModel, site: str, packs: list[int], budget: dict[str, Any], iters: int,
                 device: str, saved: Callable[[list[dict[str, Any]]], None] = lambda rows: None,
                 repeats: int = 1) -> dict[str, Any]:
    """Neuron-iterations per second of packed EPO at each pack size, with the alone-equality checks
    (`saved(rows)` after each pack, so a run cut short by a time limit keeps its finished packs)."""
    from dreamy.language import epo_many

    width = loaded.model.model.layers[0].mlp.down_proj.in_features if hasattr(loaded.model, "model") else None
    if width is not None and packs[-1] > width:
        raise SystemExit(f"--packs: the largest pack ({packs[-1]}) has more targets than the layer's {width} neurons")
    targets = [f"{site}:{i}" for i in range(packs[-1])]
    settings = dict(budget, iters=iters, restart_every=None, seed=0, progress=False)
    rows, alone = [], None
    for pack in packs:
        try:
            epo_many(loaded, targets[:pack], **{**settings, "iters": 1})  # warm-up at this pack (allocations, graphs)
            times = []
            for _ in range(repeats):  # the fastest of `repeats` runs: a shared machine only ever slows a run down
                _sync(device)
                tick = time.perf_counter()
                result = epo_many(loaded, targets[:pack], **settings)
                _sync(device)
                times.append(time.perf_counter() - tick)
        except Exception as error:  # a pack too large for the device: said, and the larger ones skipped
            if not is_oom(error):
                raise
            rows.append({"pack": pack, "error": "out of memory"})
            print(rows[-1], flush=True)
            break
        seconds = min(times)
        if pack == packs[0] == 1:
            alone = result
        row = {"pack": pack, "seconds": seconds, "s_per_iteration": seconds / iters,
               "neuron_iterations_per_s": pack * iters / seconds, "s_per_neuron_iteration": seconds / (pack * iters),
               "loop_seconds": result[0].settings.get("loop_seconds"), "all_seconds": times}
        if alone is not None:
            row["first_target_same_as_alone"] = _token_ids(result[0]) == _token_ids(alone[0])
        if pack == packs[-1] and pack > 1:
            last = epo_many(loaded, targets[pack - 1:pack], **settings)
            row["last_target_same_as_alone"] = _token_ids(result[pack - 1]) == _token_ids(last[0])
        rows.append(row)
        print(row, flush=True)
        saved(rows)
    base = rows[0].get("s_per_neuron_iteration") if rows[0]["pack"] == 1 else None
    for row in rows:
        if "error" not in row:
            row["per_target_cost_vs_pack_1"] = None if base is None else row["s_per_neuron_iteration"] / base
    return {"rows": rows, "settings": {**settings, "site": site, "packs": packs, "model": loaded.name, "repeats": repeats}}


def image_sweep(loaded: LoadedModel, packs: list[int], steps: int, side: int | None, device: str,
                precision: str = "fp32", saved: Callable[[list[dict[str, Any]]], None] = lambda rows: None) -> dict[str, Any]:
    """Target-steps per second of packed class dreams at each pack size, and the alone-equality check
    (`saved(rows)` after each pack)."""
    from dreamy.vision import ImageParam, Transforms
    from dreamy.vision.render import dream

    classes = len(loaded.class_names) if loaded.class_names else None
    size = (side, side) if side else tuple(loaded.preprocess.size)
    targets = [f"logits:{i % classes if classes else i}" for i in range(packs[-1])]
    settings = dict(steps=steps, image_size=size, seed=0, progress=False, precision=precision)
    rows = []
    for pack in packs:
        try:
            dream(loaded, targets[:pack], **{**settings, "steps": 1})  # warm-up
            _sync(device)
            tick = time.perf_counter()
            result = dream(loaded, targets[:pack], **settings)
            _sync(device)
        except Exception as error:
            if not is_oom(error):
                raise
            rows.append({"pack": pack, "error": "out of memory"})
            print(rows[-1], flush=True)
            break
        seconds = time.perf_counter() - tick
        rows.append({"pack": pack, "seconds": seconds, "s_per_step": seconds / steps,
                     "target_steps_per_s": pack * steps / seconds, "s_per_target_step": seconds / (pack * steps),
                     "mean_activation": float(result.activation.mean())})
        print(rows[-1], flush=True)
        saved(rows)
    base = rows[0].get("s_per_target_step") if rows[0]["pack"] == 1 else None
    for row in rows:
        if "error" not in row:
            row["per_target_cost_vs_pack_1"] = None if base is None else row["s_per_target_step"] / base
    check_pack = min(packs[-1], 8)
    starts = torch.rand(check_pack, 3, *size, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    fixed = dict(steps=min(steps, 4), transforms=Transforms(), progress=False, seed=0, precision=precision)
    packed = dream(loaded, targets[:check_pack], param=ImageParam(starts.to(device)), **fixed)
    single = dream(loaded, targets[:1], param=ImageParam(starts[:1].to(device)), **fixed)
    diff = float((packed.images[0] - single.images[0]).abs().max())
    return {"rows": rows, "first_target_vs_alone": {"pack": check_pack, "max_abs_pixel_diff": diff,
                                                    "same": diff <= 1e-3, "transforms": "none", "param": "pixel starts"},
            "settings": {**settings, "image_size": list(size), "packs": packs, "model": loaded.name}}


def main(argv: list[str] | None = None) -> dict:
    made = common.parser(__doc__.splitlines()[0], threads=True)
    made.add_argument("--kind", choices=["prompt", "image", "both"], default="both")
    made.add_argument("--device", default="cpu")
    made.add_argument("--packs", default=None, help=f"prompt pack sizes (default {DEFAULT_PACKS} on cuda, {CPU_PACKS} on cpu)")
    made.add_argument("--image-packs", default=None,
                      help=f"image pack sizes (default {DEFAULT_PACKS} on cuda, {CPU_IMAGE_PACKS} on cpu)")
    made.add_argument("--iters", type=int, default=3, help="EPO iterations timed per pack (default %(default)s)")
    made.add_argument("--repeats", type=int, default=1, help="timed prompt runs per pack, the fastest kept (default %(default)s)")
    made.add_argument("--steps", type=int, default=None, help="image steps timed per pack (default 2 cpu / 16 cuda)")
    made.add_argument("--size", type=int, default=None, help="image side (default 64 cpu / the model's on cuda)")
    made.add_argument("--lm", default="bundled:smollm2-135m")
    made.add_argument("--lm-site", default="model.layers.15.mlp.down_proj@in", help="the MLP whose neurons are searched")
    made.add_argument("--model", default="bundled:efficientnet-lite0", help="image model (class logits are dreamed)")
    made.add_argument("--timing-only", action="store_true",
                      help="prompts on a random-init Llama of the SmolLM2-135M shape (no weights needed)")
    made.add_argument("--tokenizer", default="~/.cache/dreamy/bundled_smollm2-135m",
                      help="tokenizer folder for --timing-only (default %(default)s)")
    made.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                      help="image steps under a bf16 autocast (CUDA only; default %(default)s)")
    args = common.parse(made, argv)
    cuda = args.device.startswith("cuda")
    started = time.perf_counter()
    budget = DEFAULT_BUDGET if args.full else SMALL_BUDGET
    figures: dict[str, Any] = {}
    name = "layer_sweep" + ("_timing" if args.timing_only else "") + ("_bf16" if args.precision == "bf16" else "")
    settings = {"kind": args.kind, "device": args.device, "timing_only": args.timing_only, "budget": budget,
                "threads": torch.get_num_threads(), "precision": args.precision}

    def write(partial: dict[str, Any] | None = None) -> None:
        common.write_result(name, {**figures, **(partial or {})}, settings=settings, results_dir=args.results_dir,
                            device=args.device, started=started)

    if args.kind in ("prompt", "both"):
        loaded = timing_lm(args.tokenizer, args.device) if args.timing_only else load(args.lm, args.device)
        figures["prompt"] = prompt_sweep(loaded, args.lm_site, _packs(args.packs or (DEFAULT_PACKS if cuda else CPU_PACKS)),
                                         budget, args.iters, args.device,
                                         saved=lambda rows: write({"prompt": {"rows": rows, "partial": True}}),
                                         repeats=args.repeats)
        common.print_table(figures["prompt"]["rows"], title=f"prompts: EPO on {loaded.name} {args.lm_site}, "
                           f"{args.iters} iterations, {budget}")
        del loaded
    if args.kind in ("image", "both"):
        loaded = load(args.model, args.device)
        figures["image"] = image_sweep(loaded, _packs(args.image_packs or (DEFAULT_PACKS if cuda else CPU_IMAGE_PACKS)),
                                       args.steps or (16 if cuda else 2), args.size or (None if cuda else 64), args.device,
                                       args.precision, saved=lambda rows: write({"image": {"rows": rows, "partial": True}}))
        common.print_table(figures["image"]["rows"], title=f"images: class logits of {args.model}")
    for kind, part in figures.items():
        last = [row for row in part["rows"] if row.get("per_target_cost_vs_pack_1") is not None][-1:]
        if last:
            print(f"{kind}: per-target cost at a pack of {last[0]['pack']} is "
                  f"{last[0]['per_target_cost_vs_pack_1']:.3g}x that of one target alone")
    write()
    return figures


if __name__ == "__main__":
    main()
