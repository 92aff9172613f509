"""Token-space labels for SAE features: held-out accuracy of the best label against the most-frequent-token baseline.

For each of N features of the SAE trained on SmolLM2-135M's `model.layers.9` (the one `prompt_vs_maxima`
trains or reuses), `dreamy.labels.token_labels` searches a one-token label on windows of a corpus (the judge,
SmolLM2 itself, answers `Text: "..." Does the text mention{label}? Answer: Yes/No`), and reports the judge's
accuracy with the best label on held-out windows (balanced: chance is 0.5) beside the baseline rule "the window
holds the most frequent top-activating token" (its accuracy as a rule, and the judge's with that token as the
label). All windows are read in one pass for every feature; each feature's search is its own.

    python -m benchmarks.token_labels                 # quick: 4 features, 512 windows, 30 steps
    python -m benchmarks.token_labels --full          # 8 features, 2048 windows, 40 steps
    python -m benchmarks.token_labels --model tiny:lm --targets model.layers.1:3 --answers " the" " a"
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks import common

SAE_DIR = Path("~/.cache/dreamy/benchmarks/sae-l9").expanduser()
QUICK = {"features": 4, "windows": 512, "steps": 30, "max_words": 60_000}
FULL = {"features": 8, "windows": 2048, "steps": 40, "max_words": 200_000}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Label the features; print the table and write results/token_labels.json."""
    started = time.perf_counter()
    p = common.parser(__doc__.splitlines()[0], threads=True)
    p.add_argument("--model", default="bundled:smollm2-135m")
    p.add_argument("--sae", type=Path, default=SAE_DIR, help="SAE folder (default %(default)s)")
    p.add_argument("--site", default="model.layers.9")
    p.add_argument("--features", type=int, help="features 0..N-1 (default: 4 quick, 8 full)")
    p.add_argument("--targets", nargs="+", help="target specs instead of the SAE's features")
    p.add_argument("--corpus", default="fortunes")
    p.add_argument("--max-words", type=int)
    p.add_argument("--windows", type=int, help="corpus windows searched on")
    p.add_argument("--window-tokens", type=int, default=32)
    p.add_argument("--steps", type=int)
    p.add_argument("--answers", nargs=2, default=None, help="the judge's two single-token answers")
    p.add_argument("--seed", type=int, default=0)
    args = common.parse(p, argv)
    settings = dict(FULL if args.full else QUICK)
    for key in ("features", "windows", "steps", "max_words"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    from dreamy.labels import LabelConfig, token_labels, window_activations
    from dreamy.models import load
    from dreamy.report.html import short_target
    from dreamy.sae.activations import corpus_windows

    loaded = load(args.model)
    targets = args.targets or [f"{args.site}:sae={args.sae}#{i}" for i in range(settings["features"])]
    config = LabelConfig.build(None, steps=settings["steps"], seed=args.seed,
                               **({"answers": tuple(args.answers)} if args.answers else {}))
    split = corpus_windows(loaded.tokenizer, [args.corpus], window=args.window_tokens, heldout_windows=0,
                           seed=args.seed, max_words=settings["max_words"])
    ids = split.train[:settings["windows"]]
    began = time.perf_counter()
    values = window_activations(loaded, targets, ids, config.batch_size)
    read_seconds = time.perf_counter() - began
    rows, details = [], []
    for spec, value in zip(targets, values):
        began = time.perf_counter()
        try:
            found = token_labels(loaded, spec, ids, config, activations=value)
        except ValueError as error:
            rows.append({"target": short_target(spec), "error": str(error).splitlines()[0]})
            continue
        best, base = found.best, found.baseline
        rows.append({"target": short_target(spec), "active": found.counts["active"], "label": best.token,
                     "label acc": best.heldout_accuracy, "soft acc": found.soft_heldout_accuracy,
                     "baseline token": base.token, "baseline rule acc": base.heldout_accuracy,
                     "judge w/ baseline acc": base.judge_heldout_accuracy, "s": time.perf_counter() - began})
        record = found.to_records()[0]
        record["history"] = record["history"][-1:]
        details.append(record)
    common.print_table(rows, title=f"token labels on {ids.shape[0]} windows of {args.corpus} ({args.model}); "
                                   "held-out accuracy, chance 0.5")
    scored = [r for r in rows if "error" not in r]
    summary = {"features": len(rows), "labelled": len(scored)}
    if scored:
        summary.update({
            "mean label acc": statistics.mean(r["label acc"] for r in scored),
            "mean baseline rule acc": statistics.mean(r["baseline rule acc"] for r in scored),
            "mean judge w/ baseline acc": statistics.mean(r["judge w/ baseline acc"] for r in scored),
            "label beats baseline rule": sum(r["label acc"] > r["baseline rule acc"] for r in scored),
            "label ties baseline rule": sum(r["label acc"] == r["baseline rule acc"] for r in scored),
            "label is the baseline token": sum(r["label"] == r["baseline token"] for r in scored)})
    common.print_table([summary], title="summary")
    figures = {"rows": rows, "summary": summary, "labels": details, "targets": targets,
               "seconds": {"read_windows": read_seconds, "total": time.perf_counter() - started}}
    common.write_result("token_labels", figures, settings={**settings, "model": args.model, "corpus": args.corpus,
                                                           "window_tokens": args.window_tokens, "seed": args.seed,
                                                           "threads": args.threads, "config": config.to_dict()},
                        results_dir=args.results_dir, started=started)
    return figures


if __name__ == "__main__":
    main()
