"""What does the probe cost, and what does stopping the forward early save? (issue 2)

For each model: a bare forward; the probe reading the last block with the full forward
(`need_output=True`: hook and scoring overhead); and the probe reading a block at 25/50/75/100% depth
with early exit (time and FLOP saving against the bare forward).

    python -m benchmarks.probe_overhead                       # both bundled models, quick
    python -m benchmarks.probe_overhead --full                # more repeats, bigger batches
    python -m benchmarks.probe_overhead --model tiny:cnn      # any model name of dreamy.models.load
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks import common
from dreamy.models import LoadedModel, load
from dreamy.targets import Probe

DEFAULT_MODELS = ("bundled:efficientnet-lite0", "bundled:smollm2-135m")
DEPTHS = (0.25, 0.5, 0.75, 1.0)


def example_input(loaded: LoadedModel, batch: int, tokens: int) -> dict[str, Tensor]:
    """A seeded random batch for the model: images `[B, 3, H, W]` or token ids `[B, T]` as forward kwargs."""
    gen = torch.Generator().manual_seed(0)
    if loaded.kind == "vision":
        images = torch.rand(batch, 3, *loaded.preprocess.size, generator=gen)
        return {"x": loaded.preprocess.normalize(images).to(loaded.device)}
    vocab = loaded.model.get_input_embeddings().weight.shape[0]
    return {"input_ids": torch.randint(0, vocab, (batch, tokens), generator=gen).to(loaded.device)}


def _call(model: nn.Module, inputs: dict[str, Tensor]) -> Any:
    return model(inputs["x"]) if "x" in inputs else model(**inputs)


def measure(loaded: LoadedModel, *, batch: int, tokens: int, repeats: int) -> list[dict[str, Any]]:
    """Rows of the table for one model."""
    inputs = example_input(loaded, batch, tokens)
    model = loaded.model
    blocks = common.block_paths(model)
    sequence_reduce = "pos=-1" if loaded.kind == "language" else "mean"

    def probe_call(site: str, need_output: bool) -> Any:
        probe = Probe(model, [f"{site}:0"], sequence_reduce=sequence_reduce)
        return lambda: probe(inputs["x"], need_output=need_output) if "x" in inputs else probe(**inputs, need_output=need_output)

    with torch.no_grad():
        bare = common.time_call(lambda: _call(model, inputs), repeats=repeats)
        bare_flops = common.count_flops(lambda: _call(model, inputs))
        last = blocks[-1]
        full = common.time_call(probe_call(last, True), repeats=repeats)
        rows = [{"model": loaded.name, "probe": "none (bare forward)", "ms": 1e3 * bare["median_s"], "vs bare": 1.0,
                 "GFLOP": bare_flops / 1e9, "FLOP saving": 0.0},
                {"model": loaded.name, "probe": f"{last}:0, full forward", "ms": 1e3 * full["median_s"],
                 "vs bare": full["median_s"] / bare["median_s"], "GFLOP": bare_flops / 1e9, "FLOP saving": 0.0}]
        for depth in DEPTHS:
            site = blocks[max(0, round(depth * len(blocks)) - 1)]
            timed = common.time_call(probe_call(site, False), repeats=repeats)
            flops = common.count_flops(probe_call(site, False))
            rows.append({"model": loaded.name, "probe": f"{site}:0, early exit ({depth:.0%} depth)", "ms": 1e3 * timed["median_s"],
                         "vs bare": timed["median_s"] / bare["median_s"], "GFLOP": flops / 1e9,
                         "FLOP saving": 1 - flops / bare_flops})
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Measure the probe's overhead and early-exit saving; print a table; write results/probe_overhead.json."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help=f"model name (repeatable; default {', '.join(DEFAULT_MODELS)})")
    args = p.parse_args(argv)
    started = time.perf_counter()
    settings = {"batch": 16 if args.full else 4, "tokens": 64, "repeats": 15 if args.full else 5,
                "models": args.model or list(DEFAULT_MODELS)}
    rows = []
    for name in settings["models"]:
        rows += measure(load(name), batch=settings["batch"], tokens=settings["tokens"], repeats=settings["repeats"])
    overhead = {r["model"]: r["vs bare"] - 1 for r in rows if r["probe"].endswith("full forward")}
    common.print_table(rows, ["model", "probe", "ms", "vs bare", "GFLOP", "FLOP saving"],
                       title=f"probe overhead and early exit (batch {settings['batch']}, median of {settings['repeats']})")
    common.write_result("probe_overhead", {"rows": rows, "full_forward_overhead": overhead}, settings=settings,
                        results_dir=args.results_dir, started=started)
    return {"rows": rows}


if __name__ == "__main__":
    main()
