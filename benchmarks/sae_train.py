"""How fast does a TopK SAE train on this machine, and how good is it? (issue 13)

Trains `dreamy.sae.train_sae` on SmolLM2 at about a third of its depth (`model.layers.9` of 30) on text
windows of fortunes + bible-kjv, and reports training tokens/s, the model FLOP/s reached (the
early-exiting LM forward, counted by torch, plus the SAE step) against the measured fp32 matmul peak,
the minutes 1M tokens would take at that rate, and the held-out figures: FVE, L0, dead fraction,
cross-entropy clean / spliced / zero-ablated and loss recovered. Target: 1M tokens in <= 20 minutes
on 2 CPU cores, FVE >= 0.7 and < 10% dead features.

    python -m benchmarks.sae_train                       # quick: 20k tokens
    python -m benchmarks.sae_train --full                # 1M tokens (the issue's target run)
    python -m benchmarks.sae_train --tokens 200000 --out sae-l9/ [--resume]

Tokens/s counts training steps only (LM forward to the site + SAE step), not tokenizing or the held-out
figures; after `--resume` it covers every session's steps.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import torch

from benchmarks import common
from dreamy.models import LoadedModel, load
from dreamy.sae import train_sae
from dreamy.sae.activations import site_activations, site_probe

QUICK_TOKENS = 20_000
FULL_TOKENS = 1_000_000
TARGET_MINUTES_PER_MILLION = 20.0
TARGET_FVE = 0.7
TARGET_DEAD = 0.1


def third_depth_site(loaded: LoadedModel) -> str:
    """The block at about a third of the model's depth (`model.layers.9` of SmolLM2's 30).

    Example:
        >>> third_depth_site(load("tiny:lm"))
        'model.layers.0'
    """
    blocks = common.block_paths(loaded.model)
    return blocks[max(0, len(blocks) // 3 - 1)]


def lm_flops_per_token(loaded: LoadedModel, site: str, window: int, windows: int) -> float:
    """FLOPs per token of the LM forward that stops at `site` (torch's count), for batches of `windows` windows.

    Example:
        >>> lm_flops_per_token(load("tiny:lm"), "model.layers.0", window=8, windows=2) > 0
        True
    """
    probe = site_probe(loaded, site)
    rows = torch.randint(100, loaded.model.get_input_embeddings().weight.shape[0], (windows, window),
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        flops = common.count_flops(lambda: site_activations(loaded, site, rows, probe=probe))
    return flops / (windows * window)


def sae_flops_per_token(d_in: int, features: int, k: int) -> float:
    """FLOPs per token of one training step of the TopK SAE: the dense encoder (`2 d F`), the sparse decoder
    forward and its two gradients, and the encoder's sparse gradient (`8 k d` in all); AuxK not counted.

    Example:
        >>> sae_flops_per_token(576, 4096, 32)
        4866048.0
    """
    return float(2 * d_in * features + 8 * k * d_in)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, measure, print a table, write results/sae_train.json."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled:smollm2-135m")
    p.add_argument("--site", default=None, help="default: the block at a third of the depth")
    p.add_argument("--corpus", action="append", default=None, help="default: fortunes and bible-kjv")
    p.add_argument("--tokens", type=int, default=None, help=f"training tokens (quick {QUICK_TOKENS}, full {FULL_TOKENS})")
    p.add_argument("--features", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch-tokens", type=int, default=2048)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--heldout-tokens", type=int, default=8192)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--out", default=None, help="keep the SAE folder here (default: a temporary folder)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    args = p.parse_args(argv)
    started = time.perf_counter()
    loaded = load(args.model)
    site = args.site or third_depth_site(loaded)
    tokens = args.tokens or (FULL_TOKENS if args.full else QUICK_TOKENS)
    corpora = args.corpus or ["fortunes", "bible-kjv"]
    settings = {"model": args.model, "site": site, "corpora": corpora, "tokens": tokens, "features": args.features,
                "k": args.k, "batch_tokens": args.batch_tokens, "window": args.window,
                "heldout_tokens": args.heldout_tokens, "lr": args.lr, "threads": torch.get_num_threads()}
    peak = common.measure_matmul_peak((512, 1024), seconds=1.0)
    windows_per_step = max(1, args.batch_tokens // args.window)
    lm_flops = lm_flops_per_token(loaded, site, args.window, windows_per_step)
    out = args.out or tempfile.mkdtemp(prefix="sae-bench-")
    result = train_sae(loaded, site, corpora, features=args.features, k=args.k, tokens=tokens, out_dir=out,
                       batch_tokens=args.batch_tokens, window=args.window, heldout_tokens=args.heldout_tokens,
                       lr=args.lr, resume=args.resume, progress=False)
    peak = common.stable_peak(peak)
    metrics = result.metrics
    d_in = result.sae.d_in
    sae_flops = sae_flops_per_token(d_in, args.features, args.k)
    tokens_per_second = metrics["train_tokens"] / metrics["train_seconds"]
    achieved = tokens_per_second * (lm_flops + sae_flops) / 1e9
    figures = {
        "train_tokens": metrics["train_tokens"], "train_seconds": metrics["train_seconds"],
        "tokens_per_second": tokens_per_second,
        "minutes_per_million_tokens": 1e6 / tokens_per_second / 60,
        "lm_gflop_per_token": lm_flops / 1e9, "sae_gflop_per_token": sae_flops / 1e9,
        "achieved_gflops": achieved, "peak_gflops": peak["peak_gflops"], "share_of_peak": achieved / peak["peak_gflops"],
        "peak": peak,
        "fve": metrics["fve"], "l0": metrics["l0"], "dead_fraction": metrics["dead_fraction"],
        "dead_window_tokens": metrics["dead_window_tokens"],
        "xentropy_clean": metrics["xentropy_clean"], "xentropy_spliced": metrics["xentropy_spliced"],
        "xentropy_zero": metrics["xentropy_zero"], "loss_recovered": metrics["loss_recovered"],
        "heldout_tokens": metrics["heldout_tokens"], "sae_dir": str(result.out_dir),
    }
    figures["meets_targets"] = {
        "speed": figures["minutes_per_million_tokens"] <= TARGET_MINUTES_PER_MILLION,
        "fve": figures["fve"] >= TARGET_FVE, "dead": figures["dead_fraction"] < TARGET_DEAD,
    }
    common.print_table([{"tokens": figures["train_tokens"], "s": figures["train_seconds"], "tok/s": tokens_per_second,
                         "min/1M tok": figures["minutes_per_million_tokens"], "GFLOP/s": achieved,
                         "peak GFLOP/s": peak["peak_gflops"], "of peak": figures["share_of_peak"]}],
                       title=f"SAE training speed: {args.model} {site}, {args.features} features, k={args.k}")
    common.print_table([{"FVE": figures["fve"], "L0": figures["l0"], "dead": figures["dead_fraction"],
                         "xent clean": figures["xentropy_clean"], "xent spliced": figures["xentropy_spliced"],
                         "xent zero": figures["xentropy_zero"], "loss recovered": figures["loss_recovered"]}],
                       title=f"held-out figures ({figures['heldout_tokens']} tokens)")
    common.write_result("sae_train", figures, settings=settings, results_dir=args.results_dir, started=started)
    return figures


if __name__ == "__main__":
    main()
