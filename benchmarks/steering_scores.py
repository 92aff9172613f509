"""Input and output scores of SAE features, and how often both are high (issue 21; Arad, Mueller & Belinkov 2025).

For `--features` features of the SAE at `--sae` (default: the SmolLM2 `model.layers.9` TopK SAE of 4096 features
that benchmarks/sae_train.py trains), drawn at random (seeded) among those that fire on the corpus: their top
activating windows in `--corpus` (fortunes, cut to `--max-words` words) give the input score (the share of
windows whose most activating token is among the feature's top-20 logit-lens tokens); steering along the
feature's decoder row at `--scale` times the site's activation norm (the default 1.5 is the paper's strength here:
10 times the largest SAE activation at the neutral prompts' last tokens, measured and printed) from the neutral
prompts gives the output score (the paper's `(1 - min_rank / V) * max_prob` of those tokens after the steered
forward), the promoted tokens' rise in the steered continuations and the fluency cost. "High" is
input score >= `--high-input` (0.5: half the top windows peak on a promoted token) and output score >=
`--high-output` (0.1: a promoted token gets at least a tenth of the next-token probability); the 2x2 table of
how often the two co-occur is the paper's finding (rarely), and a Spearman correlation goes with it.

    python -m benchmarks.steering_scores                      # the note's run (16 features, ~5 min on 2 cores)
    python -m benchmarks.steering_scores --features 4 --max-words 5000
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import common
from dreamy.datasets import open_text
from dreamy.maxima import text_maxima
from dreamy.maxima.records import canonical_target
from dreamy.models import load
from dreamy.sae.files import load as load_sae
from dreamy.steering import NEUTRAL_PROMPTS, SteerConfig, steer_many
from dreamy.steering.steer import site_activations
from dreamy.targets.saelens import read_sae_folder

DEFAULT_SAE = Path("~/.cache/dreamy/benchmarks/sae-l9")


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None for fewer than 3 points or a constant side.

    Example:
        >>> spearman([1.0, 2.0, 3.0], [0.1, 0.3, 0.2])
        0.5
    """
    if len(x) < 3:
        return None

    def ranks(values: list[float]) -> torch.Tensor:
        v = torch.tensor(values, dtype=torch.float64)
        out = torch.empty_like(v)
        for i in range(len(values)):
            out[i] = (v < v[i]).sum() + ((v == v[i]).sum() - 1) / 2
        return out

    a, b = ranks(x), ranks(y)
    a, b = a - a.mean(), b - b.mean()
    denominator = float(a.norm() * b.norm())
    return None if denominator == 0 else round(float((a * b).sum()) / denominator, 12)


@torch.no_grad()
def paper_strength(loaded: Any, sae_folder: Path, site: str, prompts: tuple[str, ...]) -> dict[str, float]:
    """The paper's steering strength at the prompts' last tokens: 10 x the largest SAE activation there, and the
    site's activation norm at those tokens."""
    sae = load_sae(sae_folder, loaded.device)
    x = torch.cat([activation[:, -1].float() for activation in site_activations(loaded, site, prompts)])
    max_act = sae.encode(x).max(dim=-1).values
    return {"paper_alpha": float(10 * max_act.mean()), "max_sae_activation": float(max_act.mean()),
            "last_token_norm": float(x.norm(dim=-1).mean())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Score the features; print the tables and write results/steering_scores.json."""
    started = time.perf_counter()
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled:smollm2-135m")
    p.add_argument("--sae", type=Path, default=DEFAULT_SAE, help="an SAE folder (SAELens layout; default %(default)s)")
    p.add_argument("--features", type=int, default=16, help="how many features (default %(default)s)")
    p.add_argument("--candidates", type=int, default=24, help="features drawn before dropping those that never fire")
    p.add_argument("--seed", type=int, default=0, help="draws the features (default %(default)s)")
    p.add_argument("--corpus", default="fortunes")
    p.add_argument("--max-words", type=int, default=30000, help="corpus words scanned (default %(default)s)")
    p.add_argument("--windows", type=int, default=32, help="top activating windows per feature (default %(default)s)")
    p.add_argument("--window", type=int, default=32, help="window length in tokens (default %(default)s)")
    p.add_argument("--scale", type=float, default=SteerConfig().scale, help="alpha / the site's mean activation norm")
    p.add_argument("--prompts", type=int, default=len(NEUTRAL_PROMPTS), help="neutral prompts used (default all)")
    p.add_argument("--new-tokens", type=int, default=20)
    p.add_argument("--high-input", type=float, default=0.5)
    p.add_argument("--high-output", type=float, default=0.1)
    args = p.parse_args(argv)

    loaded = load(args.model)
    folder = args.sae.expanduser()
    weights = read_sae_folder(folder)
    site = weights.cfg.get("hook_name") or "model.layers.9"
    timings: dict[str, float] = {"load": time.perf_counter() - started}
    draw = torch.randperm(weights.d_sae, generator=torch.Generator().manual_seed(args.seed))[:args.candidates].tolist()
    specs = [f"{site}:sae={folder}#{i}" for i in draw]

    mark = time.perf_counter()
    corpus = open_text(args.corpus, max_words=args.max_words)
    found = text_maxima(loaded, specs, corpus, k=args.windows, window=args.window, candidates=2, xent_windows=8,
                        cache_dir=None, progress=False)
    timings["maxima"] = time.perf_counter() - mark
    fired = [s for s in specs if (found[canonical_target(s)].best_activation or 0.0) > 0]
    chosen = fired[:args.features]
    windows = {s: found[canonical_target(s)].gallery_items() for s in chosen}

    mark = time.perf_counter()
    prompts = tuple(NEUTRAL_PROMPTS[:args.prompts])
    strength = paper_strength(loaded, folder, site, prompts)
    config = SteerConfig(scale=args.scale, prompts=prompts, new_tokens=args.new_tokens)
    results = steer_many(loaded, chosen, config, windows=windows)
    timings["steer"] = time.perf_counter() - mark

    rows = []
    for result in results:
        feature = int(result.target.rsplit("#", 1)[1])
        rows.append({"feature": feature, "input_score": result.input_score, "output_score": result.output_score,
                     "unsteered": result.output_score_unsteered, "rise": result.promoted_rise,
                     "share": result.promoted_share, "fluency_cost": result.fluency_cost,
                     "top_tokens": " ".join(repr(t[0]) for t in result.promoted[:4]),
                     "steered": result.continuations[0]["steered"][:60]})
    alpha = results[0].alpha if results else None
    common.print_table(rows, title=f"{len(rows)} features of {folder.name} at {site}, steered with alpha {alpha:.4g} "
                                   f"({results[0].alpha_source if results else ''}); the paper's 10 x max SAE "
                                   f"activation here: {strength['paper_alpha']:.4g}")
    high_in = [r["input_score"] is not None and r["input_score"] >= args.high_input for r in rows]
    high_out = [r["output_score"] >= args.high_output for r in rows]
    table = {"high_input_high_output": sum(a and b for a, b in zip(high_in, high_out)),
             "high_input_low_output": sum(a and not b for a, b in zip(high_in, high_out)),
             "low_input_high_output": sum(b and not a for a, b in zip(high_in, high_out)),
             "low_input_low_output": sum(not a and not b for a, b in zip(high_in, high_out))}
    scored = [r for r in rows if r["input_score"] is not None]
    rho = spearman([r["input_score"] for r in scored], [r["output_score"] for r in scored])
    common.print_table([{"": "high input", "high output": table["high_input_high_output"],
                         "low output": table["high_input_low_output"]},
                        {"": "low input", "high output": table["low_input_high_output"],
                         "low output": table["low_input_low_output"]}],
                       title=f"co-occurrence (high input >= {args.high_input}, high output >= {args.high_output}); "
                             f"Spearman(input, output) = {rho}")
    timings["total"] = time.perf_counter() - started
    print(f"\ntotal {timings['total']:.0f} s", flush=True)

    figures = {"site": site, "sae": str(folder), "candidates": len(specs), "fired": len(fired), "features": rows,
               "alpha": alpha, "scale": args.scale, "strength": strength,
               "paper_scale": strength["paper_alpha"] / results[0].alpha * args.scale if results else None,
               "thresholds": {"high_input": args.high_input, "high_output": args.high_output},
               "cooccurrence": table, "spearman_input_output": rho,
               "results": [r.to_records()[0] for r in results], "seconds": timings}
    common.write_result("steering_scores", figures, settings=vars(args) | {"sae": str(folder)},
                        results_dir=args.results_dir, started=started)
    return figures


if __name__ == "__main__":
    main()
