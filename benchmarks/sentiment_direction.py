"""Is there a linear sentiment direction in SmolLM2, and does it act? (issue 21; Tigges et al. 2023)

End to end, offline, from the contrast pairs the project ships (dreamy/directions/data/sentiment.tsv: 64 training
and 32 held-out positive/negative sentence pairs): learns a sentiment direction at a middle layer
(`model.layers.15` of SmolLM2's 30, the mean over each sentence's tokens) by logistic regression, difference of
means and PCA of the paired differences; reports each one's accuracy on the held-out pairs and the cosines
between them; writes the `dir=` file and its sidecar; runs the ablation check (the direction projected out of the
site at every token, and from the site and every later block: how much of the model's above-chance accuracy at
telling the held-out pairs apart is lost, and how much of the logit-difference gap between a pair's members,
reading " positive" minus " negative" after "Review: ...\\nSentiment:"; random directions as the control); and
dreams the direction with EPO (a wall-clock budget keeps the whole run under 5 minutes on 2 CPU cores).

    python -m benchmarks.sentiment_direction                 # the README's run (SmolLM2, < 5 min)
    python -m benchmarks.sentiment_direction --method logistic --out /tmp/sentiment.pt
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import common
from dreamy.directions import direction_from_examples
from dreamy.directions.ablation import ablation_check
from dreamy.directions.contrast import contrast_set
from dreamy.directions.examples import token_rows
from dreamy.language import EPOConfig, epo
from dreamy.models import LoadedModel, load
from dreamy.targets import Probe

TEMPLATE = "Review: {text}\nSentiment:"
ANSWERS = (" positive", " negative")
DEFAULT_OUT = Path("~/.cache/dreamy/benchmarks/sentiment-direction.pt")


def middle_site(loaded: LoadedModel) -> str:
    """The block at the middle of the model's depth (`model.layers.15` of SmolLM2's 30).

    Example:
        >>> middle_site(load("tiny:lm"))
        'model.layers.1'
    """
    blocks = common.block_paths(loaded.model)
    return blocks[len(blocks) // 2]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Learn, check, dream; print the tables and write results/sentiment_direction.json."""
    started = time.perf_counter()
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled:smollm2-135m")
    p.add_argument("--site", default=None, help="default: the block at the middle of the depth")
    p.add_argument("--pairs", default="sentiment", help="a shipped contrast set or a .tsv of pairs (default %(default)s)")
    p.add_argument("--reduce", default="mean", help="mean (over the tokens) or pos=N (default %(default)s)")
    p.add_argument("--method", default="mean_diff", choices=["logistic", "mean_diff", "pca"],
                   help="the direction the ablation check and the dream use (default %(default)s)")
    p.add_argument("--answers", nargs=2, default=list(ANSWERS), help="the two single-token answers read after the template")
    p.add_argument("--template", default=TEMPLATE)
    p.add_argument("--random-directions", type=int, default=2, help="random directions ablated as the control")
    p.add_argument("--iters", type=int, default=40, help="EPO iterations at most (default %(default)s)")
    p.add_argument("--dream-minutes", type=float, default=1.5, help="EPO wall-clock budget (default %(default)s)")
    p.add_argument("--tokens", type=int, default=8, help="EPO prompt length (default %(default)s)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the direction file (default %(default)s)")
    args = p.parse_args(argv)

    loaded = load(args.model)
    site = args.site or middle_site(loaded)
    pairs = contrast_set(args.pairs)
    timings: dict[str, float] = {"load": time.perf_counter() - started}

    mark = time.perf_counter()
    result = direction_from_examples(
        loaded, site, pairs.positives("train"), pairs.negatives("train"), reduce=args.reduce,
        heldout_examples=(pairs.positives("heldout"), pairs.negatives("heldout")),
        sources={"positive": f"{pairs.name} train positive", "negative": f"{pairs.name} train negative",
                 "heldout": f"{pairs.name} heldout pairs"})
    out, sidecar = result.save(args.out.expanduser())
    timings["learn"] = time.perf_counter() - mark
    rows = [{"method": m, "heldout_accuracy": result.heldout_accuracy[m], "train_accuracy": result.train_accuracy[m]}
            for m in result.methods]
    common.print_table(rows, title=f"sentiment direction at {site} ({result.counts['positive']} train pairs, "
                                   f"{result.counts['heldout_positive']} held-out pairs, reduce {result.reduce})")
    common.print_table([{"methods": pair, "cosine": value} for pair, value in result.cosines.items()],
                       title="cosine between the methods")

    mark = time.perf_counter()
    blocks = common.block_paths(loaded.model)
    onward = blocks[blocks.index(site):] if site in blocks else [site]
    checks = {where: ablation_check(loaded, sites, result.directions[args.method], pairs.heldout, template=args.template,
                                    answers=args.answers, random_directions=args.random_directions)
              for where, sites in (("site", [site]), ("site_and_later_blocks", onward))}
    timings["ablation"] = time.perf_counter() - mark
    clean = checks["site"]
    ablation_rows = [{"ablated at": "-", "direction": "none (clean)", "accuracy": clean.accuracy_clean,
                      "share_lost": None, "pair_accuracy": clean.pair_accuracy_clean, "mean_gap": clean.gap_clean,
                      "gap_lost": None}]
    for where, check in checks.items():
        label = site if where == "site" else f"{site} .. {onward[-1]} ({len(onward)} blocks)"
        ablation_rows.append({"ablated at": label, "direction": args.method, "accuracy": check.accuracy_ablated,
                              "share_lost": check.share_lost, "pair_accuracy": check.pair_accuracy_ablated,
                              "mean_gap": check.gap_ablated, "gap_lost": check.gap_lost})
        ablation_rows += [{"ablated at": label, "direction": f"random {i}", "accuracy": acc, "share_lost": lost,
                           "pair_accuracy": pair, "mean_gap": gap,
                           "gap_lost": 1 - gap / check.gap_clean if check.gap_clean > 0 else None}
                          for i, (acc, lost, pair, gap) in enumerate(zip(check.accuracy_random, check.random_share_lost,
                                                                        check.pair_accuracy_random, check.gap_random))]
    common.print_table(ablation_rows, title=f"ablation check on {clean.n_pairs} held-out pairs ({args.answers[0]!r} vs "
                                            f"{args.answers[1]!r} after the template; accuracy: the model's answer; pair "
                                            "accuracy: the positive sentence reads higher; chance 0.5 for both)")

    mark = time.perf_counter()
    spec = f"{result.spec(out, args.method)}/mean" if args.reduce == "mean" else result.spec(out, args.method)
    probe = Probe(loaded.model, [spec], sequence_reduce="pos=-1")
    with torch.no_grad():
        sentences = {kind: [probe(input_ids=torch.tensor([row], device=loaded.device)).scores[0, 0].item()
                            for row in token_rows(loaded, texts)]
                     for kind, texts in (("positive", pairs.positives("heldout")), ("negative", pairs.negatives("heldout")))}
    reference = {f"heldout_{kind}_mean": sum(v) / len(v) for kind, v in sentences.items()}
    reference.update({f"heldout_{kind}_max": max(v) for kind, v in sentences.items()})
    dream = epo(loaded, spec, EPOConfig(n_tokens=args.tokens, iters=args.iters, population=4, children=16,
                                        fluency_weight_range=(0.3, 30.0),  # the range its figures were measured at
                                        minutes=args.dream_minutes, seed=0), progress=False)
    timings["dream"] = time.perf_counter() - mark
    frontier = sorted(dream.frontier, key=lambda point: -point.activation)
    common.print_table([{"activation": point.activation, "xentropy": point.xentropy, "text": point.text}
                        for point in frontier[:5]], title=f"EPO dream of {spec} ({len(dream.history)} prompts scored; "
                                                          f"held-out sentences: positive mean "
                                                          f"{reference['heldout_positive_mean']:.2f}, max "
                                                          f"{reference['heldout_positive_max']:.2f}; negative mean "
                                                          f"{reference['heldout_negative_mean']:.2f})")
    timings["total"] = time.perf_counter() - started
    print(f"\ntotal {timings['total']:.0f} s; direction file {out}", flush=True)

    figures = {
        "site": site, "reduce": result.reduce, "direction_file": str(out), "sidecar": str(sidecar),
        "heldout_accuracy": result.heldout_accuracy, "train_accuracy": result.train_accuracy, "cosines": result.cosines,
        "counts": result.counts,
        "ablation": {where: {key: value for key, value in check.to_records()[0].items() if key != "readouts"}
                     for where, check in checks.items()},
        "dream": {"spec": spec, "heldout_sentences": reference, "iterations": dream.settings.get("iterations_run", args.iters),
                  "stopped": dream.settings.get("stopped"),
                  "frontier": [{"text": point.text, "activation": point.activation, "xentropy": point.xentropy}
                               for point in frontier[:8]]},
        "seconds": timings, "under_5_minutes": timings["total"] < 300,
    }
    settings = {"model": args.model, "pairs": args.pairs, "method": args.method, "template": args.template,
                "answers": list(args.answers), "iters": args.iters, "dream_minutes": args.dream_minutes,
                "tokens": args.tokens, "random_directions": args.random_directions}
    common.write_result("sentiment_direction", figures, settings=settings, results_dir=args.results_dir, started=started)
    return figures


if __name__ == "__main__":
    main()
