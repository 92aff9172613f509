"""Do dreams beat the real inputs? Per target, the dream's activation against the dataset maximum.

Vision: `dreamy.vision.dream` (Fourier, default transforms) for channels of a middle and a late block
and two logits, against the top image of the bundled photos and Fashion-MNIST (`image_maxima`); the
dream's activation is that of its un-transformed final image, the number the scan measures.
Text (issue 4's check): EPO for MLP neurons at three depths against the 64-token windows of a corpus
(`text_maxima`), compared in (cross-entropy, activation): a target counts as beaten "at matched
fluency" when some frontier prompt has a higher activation than the best window and a cross-entropy
no higher than that window's. Also reported: the best of each at or below the corpus median
cross-entropy. By default EPO optimizes a 64-token prompt that starts as the best window itself (`--epo-init
window`; "EPO start" is that seed's score, equal to the window's) and must climb from there on both
axes; `--epo-init random` starts a 16-token prompt (`--n-tokens`) from random tokens, as in the EPO
paper, whose cross-entropy over fewer tokens with less context is not directly comparable.

    python -m benchmarks.dream_vs_maxima              # quick: 64 steps, 1k Fashion-MNIST, 20k words, 6 EPO iters
    python -m benchmarks.dream_vs_maxima --full       # 512 steps, 10k images, 200k words (issue 4), 40 EPO iters
    python -m benchmarks.dream_vs_maxima --vision-model tiny:cnn --lm-model tiny:lm --corpus FILE
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks import common
from dreamy.maxima import Maxima, default_cache_dir, image_maxima, text_maxima
from dreamy.models import LoadedModel, load

# epo_fluency_weight_range: the range these figures were measured at (EPOConfig's default before (0.1, 30))
QUICK = {"steps": 64, "fashion_mnist_images": 1000, "corpus_words": 20_000, "text_k": 8, "xent_windows": 32,
         "epo_iters": 6, "epo_population": 4, "epo_children": 16, "n_tokens": 64, "epo_init": "window",
         "epo_fluency_weight_range": (0.3, 30.0)}
FULL = {"steps": 512, "fashion_mnist_images": 10_000, "corpus_words": 200_000, "text_k": 16, "xent_windows": 128,
        "epo_iters": 40, "epo_population": 4, "epo_children": 16, "n_tokens": 64, "epo_init": "window",
        "epo_fluency_weight_range": (0.3, 30.0)}


def vision_targets(loaded: LoadedModel) -> list[str]:
    """Three channels of the block at 50% depth, three at 75%, and two logits."""
    blocks = common.block_paths(loaded.model)
    middle, late = blocks[len(blocks) // 2], blocks[(3 * len(blocks)) // 4]
    n_classes = len(loaded.class_names or []) or 10
    logits = [285, 1] if n_classes > 285 else [n_classes // 2, 1]
    return [f"{middle}:{c}" for c in range(3)] + [f"{late}:{c}" for c in range(3)] + [f"logits:{c}" for c in logits]


def _ratio(dream: float, data: float) -> float | None:
    return dream / data if data > 0 else None


def run_vision(loaded: LoadedModel, settings: dict[str, Any], cache_dir: Any, seed: int) -> dict[str, Any]:
    """Dream every vision target once and compare with the best image of each data set."""
    from dreamy.vision import dream

    targets = vision_targets(loaded)
    maxima: dict[str, list[Maxima]] = {t: [] for t in targets}
    for name in settings["images"]:
        limit = settings["fashion_mnist_images"] if name.startswith("fashion-mnist") else None
        for target, found in image_maxima(loaded, targets, name, k=9, limit=limit, cache_dir=cache_dir, progress=False).items():
            maxima[target].append(found)
    start = time.perf_counter()
    result = dream(loaded, targets, steps=settings["steps"], seed=seed, progress=False)
    dream_seconds = time.perf_counter() - start
    rows = []
    for i, target in enumerate(targets):
        best = max(maxima[target], key=lambda m: m.best_activation)
        top = best.examples[0]
        activation = float(result.activation[i])
        rows.append({"target": target, "dream": activation, "dataset max": top.activation, "dream / max": _ratio(activation, top.activation),
                     "beats": activation > top.activation, "best image": f"{top.source} [{best.dataset}]"})
    return {"rows": rows, "dream_seconds": dream_seconds, "share_beating_max": sum(r["beats"] for r in rows) / len(rows)}


def _point(activation: float | None, xentropy: float | None) -> str:
    return "-" if activation is None else f"{activation:.3g} @ {xentropy:.2f}"


def run_text(loaded: LoadedModel, settings: dict[str, Any], corpus: str, cache_dir: Any, seed: int) -> dict[str, Any]:
    """EPO on each MLP neuron, compared with the corpus windows in (cross-entropy, activation)."""
    from dreamy.language import epo

    targets = common.mlp_neuron_targets(loaded.model)
    found = text_maxima(loaded, targets, corpus, k=settings["text_k"], max_words=settings["corpus_words"],
                        xent_windows=settings["xent_windows"], seed=seed, cache_dir=cache_dir, progress=False)
    rows, details = [], []
    for target in targets:
        windows = found[target]
        best = windows.examples[0]
        median = windows.stats["xentropy"]["median"]
        start = time.perf_counter()
        init = best.token_ids[-settings["n_tokens"]:] if settings["epo_init"] == "window" and best.token_ids else None
        result = epo(loaded, target, n_tokens=settings["n_tokens"], iters=settings["epo_iters"], population=settings["epo_population"],
                     children=settings["epo_children"], fluency_weight_range=settings["epo_fluency_weight_range"],
                     init=init, seed=seed, progress=False)
        seconds = time.perf_counter() - start
        seed_row = result.history[0]
        matched = [p for p in result.frontier if p.xentropy <= best.xentropy and p.activation > best.activation]
        fluent_dream, fluent_window = result.best_below(median), windows.best_below(median)
        rows.append({"target": target, "EPO start": _point(seed_row["activation"], seed_row["xentropy"]),
                     "EPO best": _point(result.best.activation, result.best.xentropy),
                     "best window": _point(best.activation, best.xentropy), "dream / max": _ratio(result.best.activation, best.activation),
                     "beats max": result.best.activation > best.activation, "beats at matched fluency": bool(matched),
                     "EPO at <= median xent": _point(fluent_dream.activation if fluent_dream else None,
                                                     fluent_dream.xentropy if fluent_dream else None),
                     "window at <= median xent": _point(fluent_window.activation if fluent_window else None,
                                                        fluent_window.xentropy if fluent_window else None),
                     "EPO s": seconds})
        details.append({"target": target, "corpus": windows.dataset, "corpus_xentropy": windows.stats["xentropy"],
                        "best_window": {"text": best.text, "activation": best.activation, "xentropy": best.xentropy},
                        "window_frontier": [{"activation": e.activation, "xentropy": e.xentropy, "text": e.text} for e in windows.frontier],
                        "epo_frontier": [{"activation": p.activation, "xentropy": p.xentropy, "text": p.text} for p in result.frontier],
                        "matched_fluency_points": [{"activation": p.activation, "xentropy": p.xentropy, "text": p.text} for p in matched]})
    n = len(rows)
    return {"rows": rows, "details": details, "corpus_words": found[targets[0]].settings["n_words"],
            "share_beating_max": sum(r["beats max"] for r in rows) / n,
            "share_beating_at_matched_fluency": sum(r["beats at matched fluency"] for r in rows) / n}


def main(argv: list[str] | None = None) -> dict:
    """Compare dreams with dataset maxima; print tables; write results/dream_vs_maxima.json."""
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--vision-model", default="bundled:efficientnet-lite0")
    p.add_argument("--lm-model", default="bundled:smollm2-135m")
    p.add_argument("--corpus", default="fortunes", help="text corpus name or path (dreamy.datasets.open_text)")
    p.add_argument("--images", action="append", help="image set for the maxima (repeatable; default photos and fashion-mnist)")
    p.add_argument("--skip-vision", action="store_true")
    p.add_argument("--skip-text", action="store_true")
    p.add_argument("--steps", type=int, help="override the dream steps")
    p.add_argument("--epo-iters", type=int, help="override the EPO iterations")
    p.add_argument("--epo-init", choices=["window", "random"], help="EPO's start: the best window's tail (default) or random tokens")
    p.add_argument("--corpus-words", type=int, help="override the corpus size in words")
    p.add_argument("--n-tokens", type=int, help="EPO prompt length (default 64 from a window, 16 from random)")
    p.add_argument("--cache-dir", default=str(default_cache_dir()), help="maxima cache ('none' disables; default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    started = time.perf_counter()
    settings = dict(FULL if args.full else QUICK)
    if args.epo_iters:
        settings["epo_iters"] = args.epo_iters
    if args.steps:
        settings["steps"] = args.steps
    if args.epo_init:
        settings["epo_init"] = args.epo_init
        if args.epo_init == "random":
            settings["n_tokens"] = 16
    if args.n_tokens:
        settings["n_tokens"] = args.n_tokens
    if args.corpus_words:
        settings["corpus_words"] = args.corpus_words
    cache_dir = None if args.cache_dir.lower() == "none" else os.path.expanduser(args.cache_dir)
    settings.update(vision_model=args.vision_model, lm_model=args.lm_model, corpus=args.corpus, seed=args.seed,
                    images=args.images or ["photos", "fashion-mnist"])
    figures: dict[str, Any] = {}
    if not args.skip_vision:
        vision = run_vision(load(args.vision_model), settings, cache_dir, args.seed)
        figures["vision"] = vision
        common.print_table(vision["rows"], title=f"vision: dream ({settings['steps']} steps) vs best dataset image, "
                                                 f"{vision['share_beating_max']:.0%} of targets beaten")
    if not args.skip_text:
        text = run_text(load(args.lm_model), settings, args.corpus, cache_dir, args.seed)
        figures["text"] = text
        common.print_table(text["rows"], ["target", "EPO start", "EPO best", "best window", "beats max", "beats at matched fluency",
                                          "EPO at <= median xent", "window at <= median xent", "EPO s"],
                           title=f"text: EPO ({settings['epo_iters']} iters, {settings['epo_init']} start) vs best 64-token window of {text['corpus_words']} words "
                                 f"(activation @ cross-entropy); {text['share_beating_max']:.0%} beat the max, "
                                 f"{text['share_beating_at_matched_fluency']:.0%} at matched fluency")
    common.write_result("dream_vs_maxima", figures, settings=settings, results_dir=args.results_dir, started=started)
    return figures


if __name__ == "__main__":
    main()
