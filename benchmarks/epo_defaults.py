"""Which EPO defaults find the best fluent prompts? A sweep of topk, fluency weight range and restart period.

Our EPO only (the reference's numbers come from `benchmarks/epo_vs_reference.py`), on the same seeded
MLP neurons and budget as that benchmark (SmolLM2-135M, one neuron per depth quarter, 12 tokens,
population 8 x 32 children, seed 0, random starts). Each setting is scored like the reference
comparison: per neuron the best activation at prompt cross-entropy <= 4.5, 5, 6 and 7, and the sum over
neurons at each cut-off; the winner is the setting with the highest sum of those sums (the
fluency-weighted quality the defaults are for), the highest activation reported beside it.

    python -m benchmarks.epo_defaults                    # quick: 10 iterations, 5 settings (~25 min on 2 idle cores)
    python -m benchmarks.epo_defaults --full             # 30 iterations
    python -m benchmarks.epo_defaults --settings "topk=32;topk=128" --iters 2 --neurons 1
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

from benchmarks import common
from benchmarks.epo_vs_reference import CUTOFFS, NEURONS, our_bests, pick_neurons
from dreamy.language import EPOConfig, epo
from dreamy.models import load

BUDGET = {"n_tokens": 12, "population": 8, "children": 32, "seed": 0, "neurons": NEURONS}
SETTINGS = ("topk=64", "topk=16", "topk=256", "fluency_weight_range=0.3,30", "fluency_weight_range=0.03,3")


def parse_setting(text: str) -> dict[str, Any]:
    """`"topk=32,restart_every=10"`-style text to EPO keyword arguments, each checked by `EPOConfig.build` (a name
    it lacks is refused with its "did you mean"; a comma before a `KEY=` starts the next pair).

    Example:
        >>> parse_setting("topk=32")
        {'topk': 32}
        >>> parse_setting("fluency_weight_range=0.3,30,restart_every=10")
        {'fluency_weight_range': (0.3, 30.0), 'restart_every': 10}
    """
    pairs = [pair for pair in re.split(r",(?=\s*\w+=)", text) if pair]
    config = common.config_of(EPOConfig, pairs, flag="--settings")
    return {pair.partition("=")[0].strip(): getattr(config, pair.partition("=")[0].strip()) for pair in pairs}


def sweep(loaded: Any, settings: list[str], budget: dict[str, Any]) -> list[dict[str, Any]]:
    """Every setting on every drawn neuron: per-cut-off bests, their sums, s/iter."""
    neurons = pick_neurons(loaded, budget["neurons"], budget["seed"])
    rows = []
    for text in settings:
        options = parse_setting(text)
        per_neuron, seconds = [], 0.0
        for layer, neuron in neurons:
            target = f"model.layers.{layer}.mlp.down_proj@in:{neuron}"
            start = time.perf_counter()
            found = epo(loaded, target, iters=budget["iters"], n_tokens=budget["n_tokens"], population=budget["population"],
                        children=budget["children"], seed=budget["seed"], progress=False, **options)
            seconds += time.perf_counter() - start
            per_neuron.append({"target": target, **our_bests(found.history)})
        sums = {str(cut): sum(r[str(cut)] or 0.0 for r in per_neuron) for cut in CUTOFFS}
        row = {"setting": text, "sums": sums, "score": sum(sums.values()),
               "max_sum": sum(r["max"] for r in per_neuron), "s_per_iter": seconds / (budget["iters"] * len(neurons)),
               "neurons": per_neuron}
        rows.append(row)
        print(f"{text}: sums {', '.join(f'<={c}: {v:.3g}' for c, v in sums.items())}; max sum {row['max_sum']:.3g}; "
              f"{row['s_per_iter']:.2f} s/iter", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__.splitlines()[0], threads=True)
    parser.add_argument("--model", default="bundled:smollm2-135m", help="language model (default %(default)s)")
    parser.add_argument("--settings", help=f"EPOConfig settings KEY=VALUE,..., separated by ';' (default {';'.join(SETTINGS)})")
    parser.add_argument("--iters", type=int, help="iterations (quick 10, full 30)")
    parser.add_argument("--neurons", type=int, help=f"neurons, one per depth range (default {BUDGET['neurons']})")
    args = common.parse(parser, argv)
    budget = dict(BUDGET, iters=args.iters or (30 if args.full else 10))
    if args.neurons:
        budget["neurons"] = args.neurons
    settings = args.settings.split(";") if args.settings else list(SETTINGS)
    started = time.perf_counter()
    loaded = load(args.model)
    rows = sweep(loaded, settings, budget)
    table = [{"setting": r["setting"], **{f"sum xent<={c}": r["sums"][str(c)] for c in CUTOFFS}, "score": r["score"],
              "max sum": r["max_sum"], "s/iter": r["s_per_iter"]} for r in rows]
    common.print_table(table, title=f"EPO settings on {budget['neurons']} neurons, {budget['iters']} iterations")
    best = max(rows, key=lambda r: r["score"])
    print(f"\nbest: {best['setting']} (score {best['score']:.3g})")
    path = common.write_result("epo_defaults", {"rows": rows, "best": best["setting"]},
                               settings={"model": args.model, "settings": settings, **budget},
                               results_dir=args.results_dir, started=started)
    print(f"wrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
