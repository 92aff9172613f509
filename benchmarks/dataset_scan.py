"""How close does dataset scanning come to the machine's limit? Model FLOP/s of maxima scans vs matmul peak.

Scans an image set with `image_maxima` (8 channels of a middle block) and a text corpus with
`text_maxima` (MLP neurons at three depths), uncached, and reports items/s and the model FLOP/s
they reach (FLOPs of the early-exiting forward, counted by torch) against the measured fp32 matmul peak.

    python -m benchmarks.dataset_scan                 # photos + 512 Fashion-MNIST, 3k words of fortunes
    python -m benchmarks.dataset_scan --full          # photos + 10k Fashion-MNIST, 20k words
    python -m benchmarks.dataset_scan --vision-model tiny:cnn --lm-model tiny:lm
"""

from __future__ import annotations

import time
from typing import Any

import torch

from benchmarks import common
from dreamy.datasets import open_images, open_text
from dreamy.maxima import image_maxima, text_maxima
from dreamy.language.layout import start_token
from dreamy.maxima.text import tokenize_corpus
from dreamy.models import LoadedModel, load
from dreamy.targets import Probe


def middle_channels(loaded: LoadedModel, n: int = 8) -> list[str]:
    """`n` channels (0..n-1) of the model's middle block."""
    blocks = common.block_paths(loaded.model)
    return [f"{blocks[len(blocks) // 2]}:{c}" for c in range(n)]


def scan_images(loaded: LoadedModel, datasets: list[tuple[str, int | None]], batch_size: int, peak: float) -> list[dict[str, Any]]:
    """One row per image set: images/s and model GFLOP/s of an uncached `image_maxima` scan."""
    targets = middle_channels(loaded)
    probe = Probe(loaded.model, targets)
    one = loaded.preprocess.normalize(torch.rand(1, 3, *loaded.preprocess.size, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        flops = common.count_flops(lambda: probe(one))
    rows = []
    for name, limit in datasets:
        images = open_images(name, limit)
        start = time.perf_counter()
        found = image_maxima(loaded, targets, images, k=9, batch_size=batch_size, cache_dir=None, progress=False)
        total = time.perf_counter() - start
        seconds = next(iter(found.values())).stats["seconds"]
        rate = len(images) / seconds
        rows.append({"scan": "images", "model": loaded.name, "dataset": images.name, "targets": len(targets),
                     "items": len(images), "scan s": seconds, "total s": total, "items/s": rate,
                     "GFLOP/item": flops / 1e9, "GFLOP/s": rate * flops / 1e9, "% of peak": 100 * rate * flops / 1e9 / peak})
    return rows


def scan_text(loaded: LoadedModel, corpus: str, max_words: int, batch_size: int, peak: float) -> dict[str, Any]:
    """Tokens/s and model GFLOP/s of an uncached `text_maxima` scan (64-token windows)."""
    targets = common.mlp_neuron_targets(loaded.model)
    window = 64
    text = open_text(corpus, max_words)
    n_tokens = len(tokenize_corpus(loaded.tokenizer, text))
    probe = Probe(loaded.model, targets, sequence_reduce="pos=-1")
    ids = torch.full((1, window + 1), start_token(loaded.tokenizer), device=loaded.device)
    with torch.no_grad():
        flops = common.count_flops(lambda: probe(input_ids=ids, keep_activations=True)) / (window + 1)
    start = time.perf_counter()
    found = text_maxima(loaded, targets, text, k=8, window=window, candidates=2, xent_windows=16, batch_size=batch_size,
                        cache_dir=None, progress=False)
    total = time.perf_counter() - start
    seconds = next(iter(found.values())).stats["seconds"]
    scanned = (n_tokens // window) * (window + 1)  # every window runs with its BOS token
    rate = scanned / seconds
    return {"scan": "text", "model": loaded.name, "dataset": text.name, "targets": len(targets), "items": scanned,
            "scan s": seconds, "total s": total, "items/s": rate, "GFLOP/item": flops / 1e9, "GFLOP/s": rate * flops / 1e9,
            "% of peak": 100 * rate * flops / 1e9 / peak}


def main(argv: list[str] | None = None) -> dict:
    """Measure scan throughput; print a table; write results/dataset_scan.json."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--vision-model", default="bundled:efficientnet-lite0")
    p.add_argument("--lm-model", default="bundled:smollm2-135m")
    p.add_argument("--corpus", default="fortunes", help="text corpus name or path (dreamy.datasets.open_text)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    settings = {"fashion_mnist_images": 10_000 if args.full else 512, "corpus_words": 20_000 if args.full else 3_000,
                "image_batch": 32, "text_batch": 16, "vision_model": args.vision_model, "lm_model": args.lm_model,
                "corpus": args.corpus}
    peak = common.measure_matmul_peak((512, 1024), seconds=1.0)
    datasets: list[tuple[str, int | None]] = [("photos", None), ("fashion-mnist", settings["fashion_mnist_images"])]
    rows = scan_images(load(args.vision_model), datasets, settings["image_batch"], peak["peak_gflops"])
    rows.append(scan_text(load(args.lm_model), args.corpus, settings["corpus_words"], settings["text_batch"], peak["peak_gflops"]))
    peak = common.stable_peak(peak)
    for row in rows:
        row["% of peak"] = 100 * row["GFLOP/s"] / peak["peak_gflops"]
    common.print_table(rows, ["scan", "model", "dataset", "targets", "items", "scan s", "items/s", "GFLOP/item", "GFLOP/s", "% of peak"],
                       title=f"dataset scan throughput (fp32 matmul peak {peak['peak_gflops']:.1f} GFLOP/s; text items are tokens)")
    common.write_result("dataset_scan", {"matmul_peak": peak, "rows": rows}, settings=settings, results_dir=args.results_dir,
                        started=started)
    return {"rows": rows}


if __name__ == "__main__":
    main()
