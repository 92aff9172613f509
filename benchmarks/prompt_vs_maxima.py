"""Do prompt dreams beat the dataset where a researcher looks? `dream prompt --maxima` end to end, per --init.

The user's path through the same code the command line runs (`dreamy.cli.main`): 16 features of an SAE trained
on SmolLM2-135M's `model.layers.9` (`dream sae-train`, or the one cached from an earlier run) and 8 MLP neurons
drawn with a seed across depths, dreamed by `dream prompt --maxima CORPUS --init INIT` at a budget (the CLI's
defaults, or flags added to them). Per run it reads the records back and counts the targets where a frontier
prompt beats the best corpus window of the prompt's own length at or below that window's cross-entropy
(`dreamy.maxima.verdict`: the one yardstick the gallery shows), by how much, and how many of those winners
are not near copies of a window; and the seconds per target (the whole command's wall time over its targets:
the maxima scan, the search, the descriptions and the gallery). Writes `results/prompt_vs_maxima.json`.

    python -m benchmarks.prompt_vs_maxima                     # quick: 2 features + 2 neurons, short budget
    python -m benchmarks.prompt_vs_maxima --full              # 24 targets, every --init at the CLI's defaults
    python -m benchmarks.prompt_vs_maxima --full --inits random --budget iters=150 --subset 4
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common

SAE_DIR = Path(os.environ.get("DREAMY_BENCH_SAE", Path("~/.cache/dreamy/benchmarks/sae-l9").expanduser()))
SAE_TRAIN = {"quick": ["--features", "1024", "--k", "16", "--tokens", "100000"],
             "full": ["--features", "4096", "--k", "32", "--tokens", "1000000"]}
QUICK = {"features": 2, "neurons": 2, "inits": ["random", "mixed"], "budget": "iters=4,population=4,children=8",
         "max_words": 20_000}
FULL = {"features": 16, "neurons": 8, "inits": ["random", "maxima", "mixed"], "budget": "", "max_words": None}


def neuron_targets(n_layers: int, width: int, count: int, seed: int) -> list[str]:
    """`count` MLP neurons (`down_proj@in`), one per evenly spaced depth, each index drawn with `seed`.

    Example:
        >>> neuron_targets(30, 1536, 2, 0)
        ['model.layers.0.mlp.down_proj@in:788', 'model.layers.29.mlp.down_proj@in:861']
    """
    import random

    draw = random.Random(seed)
    layers = [round(i * (n_layers - 1) / max(1, count - 1)) for i in range(count)]
    return [f"model.layers.{layer}.mlp.down_proj@in:{draw.randrange(width)}" for layer in layers]


def budget_flags(budget: str) -> list[str]:
    """`"iters=150,population=4"` -> the `dream prompt` flags `--iters 150 --population 4` ("" = the defaults).

    Example:
        >>> budget_flags("iters=150,minutes=2.5"), budget_flags("")
        (['--iters', '150', '--minutes', '2.5'], [])
    """
    flags: list[str] = []
    for part in filter(None, budget.split(",")):
        key, value = part.split("=", 1)
        flags += [f"--{key.strip().replace('_', '-')}", value.strip()]
    return flags


def ensure_sae(model: str, site: str, corpus: str, flags: list[str], sae_dir: Path) -> Path:
    """The benchmark's SAE folder: the cached one when it exists, else trained now with `dream sae-train`."""
    from dreamy.cli import main

    if (sae_dir / "cfg.json").exists():
        return sae_dir
    code = main(["sae-train", "--model", model, "--site", site, "--corpus", corpus, *flags,
                 "--out", str(sae_dir), "--quiet"])
    if code != 0:
        raise SystemExit(f"dream sae-train exited {code}")
    return sae_dir


def score_run(out: Path, kinds: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary row and per-target details of one finished `dream prompt` folder."""
    from dreamy.maxima.verdict import verdict_of

    records = json.loads((out / "results.json").read_text())["records"]
    details = []
    for record in records:
        verdict = verdict_of(record) if "error" not in record else None
        details.append({"target": record["target"], "kind": kinds.get(record["target"], "?"), "error": record.get("error"),
                        "best_dream": record.get("activation"), "verdict": verdict,
                        "stopped": (record.get("settings") or {}).get("stopped"),
                        "iterations_run": (record.get("settings") or {}).get("iterations_run")})
    wins = [d for d in details if d["verdict"] and d["verdict"]["beats"]]
    ratios = [d["verdict"]["ratio"] for d in wins if d["verdict"]["ratio"] is not None]
    row = {"targets": len(details), "beats": len(wins),
           "features beaten": sum(d["kind"] == "feature" for d in wins),
           "neurons beaten": sum(d["kind"] == "neuron" for d in wins),
           "winners not near copies": sum(d["verdict"]["beats_without_copying"] for d in wins),
           "median ratio": statistics.median(ratios) if ratios else None,
           "no verdict": sum(d["verdict"] is None for d in details)}
    return row, details


def main(argv: list[str] | None = None) -> dict:
    """Run `dream prompt --maxima` for every --init at one budget; print the table; write the JSON."""
    p = common.parser(__doc__.splitlines()[0], threads=True)
    p.add_argument("--model", default="bundled:smollm2-135m")
    p.add_argument("--corpus", default="fortunes", help="the --maxima corpus (and the SAE's training corpus)")
    p.add_argument("--site", default="model.layers.9", help="the SAE's site (default %(default)s)")
    p.add_argument("--sae", type=Path, default=None, help=f"SAE folder (default {SAE_DIR}; trained there when missing)")
    p.add_argument("--sae-train", help="`dream sae-train` flags as key=value,... when the SAE is trained here")
    p.add_argument("--features", type=int, help="SAE features 0..N-1 to dream")
    p.add_argument("--neurons", type=int, help="MLP neurons to draw across depths")
    p.add_argument("--subset", type=int, help="only the first N targets: half features, half neurons")
    p.add_argument("--inits", help="comma-separated --init values (default: every one in --full)")
    p.add_argument("--budget", help="flags added to the CLI defaults, as key=value,... (e.g. iters=150)")
    p.add_argument("--max-words", type=int, help="cut the corpus for the maxima (default: all of it in --full)")
    p.add_argument("--seed", type=int, default=0, help="seed of the neuron draw and of the runs")
    p.add_argument("--keep", type=Path, help="keep each run's output folder under this folder")
    args = common.parse(p, argv)
    started = time.perf_counter()
    size = "full" if args.full else "quick"
    settings = dict(FULL if args.full else QUICK)
    for key in ("features", "neurons", "budget", "max_words"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.inits:
        settings["inits"] = args.inits.split(",")
    from dreamy.cli import main as dream
    from dreamy.models import load

    loaded = load(args.model)
    config = loaded.model.config
    train = budget_flags(args.sae_train) if args.sae_train else SAE_TRAIN[size]
    sae = ensure_sae(args.model, args.site, args.corpus, train, args.sae or SAE_DIR)
    features = [f"{args.site}:sae={sae}#{i}" for i in range(settings["features"])]
    neurons = neuron_targets(config.num_hidden_layers, config.intermediate_size, settings["neurons"], args.seed)
    if args.subset:  # half features (the first), half neurons (spread over the depths)
        m = args.subset // 2
        features = features[:args.subset - m]
        neurons = [neurons[round(i * (len(neurons) - 1) / max(1, m - 1))] for i in range(m)] if m > 1 else neurons[:m]
    from dreamy.targets import parse

    kinds = {**{str(parse(t)): "feature" for t in features}, **{str(parse(t)): "neuron" for t in neurons}}
    corpus = args.corpus
    if settings["max_words"]:
        from dreamy.datasets import open_text

        text = open_text(args.corpus, settings["max_words"])
        corpus_file = Path(tempfile.mkdtemp()) / f"{args.corpus}-{settings['max_words']}w.txt"
        corpus_file.write_text(text.text)
        corpus = str(corpus_file)
    rows, runs = [], []
    for init in settings["inits"]:
        out = (args.keep / f"{init}-{settings['budget'] or 'defaults'}") if args.keep else Path(tempfile.mkdtemp()) / init
        command = ["prompt", "--model", args.model, "--out", str(out), "--maxima", corpus, "--init", init,
                   "--seed", str(args.seed), "--quiet", "--overwrite", *budget_flags(settings["budget"])]
        command += [flag for target in features + neurons for flag in ("--target", target)]
        began = time.perf_counter()
        code = dream(command)
        seconds = time.perf_counter() - began
        row, details = score_run(out, kinds)
        row = {"init": init, "budget": settings["budget"] or "CLI defaults", **row,
               "s/target": seconds / max(1, row["targets"]), "exit": code}
        rows.append(row)
        runs.append({"init": init, "command": "dream " + " ".join(command), "seconds": seconds, "targets": details})
        common.print_table([row], title=f"--init {init}")
    common.print_table(rows, title=f"dreams vs the best corpus window of the prompt's length, at or below its "
                                   f"cross-entropy ({len(features)} SAE features, {len(neurons)} neurons)")
    figures = {"rows": rows, "runs": runs, "features": features, "neurons": neurons, "sae": str(sae)}
    common.write_result("prompt_vs_maxima", figures, settings={**settings, "model": args.model, "corpus": args.corpus,
                                                               "seed": args.seed, "threads": args.threads},
                        results_dir=args.results_dir, started=started)
    return figures


if __name__ == "__main__":
    main()
