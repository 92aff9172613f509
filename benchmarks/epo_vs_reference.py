"""dreamy's EPO against the authors' reference EPO (Confirm-Solutions/dreamy, `dreamy/epo.py`), side by side.

Same model, same MLP neurons (drawn with a seeded generator, one per depth quarter), same budget: a 12-token
span, population 8, 32 children per member, 30 iterations, seed 0, random starts. The reference is imported
from a fetched copy given with `--reference-src PATH` (the folder holding its `dreamy/epo.py`, or the file;
default: `$DREAMY_REFERENCE_SRC`); its code is never copied here, and without it the script says so and
exits. Its package is also named `dreamy`, so its `epo.py` is loaded under another module name.

One yardstick for both. The reference sees the span with the model's BOS token in front (its `cache_run`,
written here, prepends it), so both optimize the same activation: the neuron's value (`down_proj` input)
at the span's last token. Its own cross-entropy skips the first span token (it pairs `logits[:, :-1]` with
`ids[:, 1:]`: 11 terms for 12 tokens); "prompt cross-entropy" here is dreamy's, the mean over all 12 span
tokens, the first predicted from BOS. The reference's evaluated prompts are rescored with it (exactly:
since dreamy's value is at least 11/12 of the reference's, only prompts whose own cross-entropy is at most
12/11 of a cut-off can pass it; those are rescored from the highest activation down until one passes).
The reference draws from the whole vocabulary (special and non-ASCII tokens included, no retokenization
check); dreamy keeps its defaults (printable-ASCII tokens whose text re-encodes to the same tokens).

The reference also keeps token sequences that are not the tokens of their own text (decoded and encoded
again they give other ids): what such a prompt does is not what its text does when a user feeds it back; and
its tokens may lie outside dreamy's vocabulary (printable ASCII by default). Each reference column is therefore
given three times: over every prompt it evaluated ("reference"), over those that are the tokens of their own
text ("reference_text"), and over those that are also made of the tokens dreamy's search may use
("reference_allowed": the prompts either method could have returned, the like-for-like column).

Reported per neuron: the best activation at prompt cross-entropy <= 4.5, 5, 6 and 7 for each method, and
s/iter (wall time of the whole call / iterations; the two runs of a neuron run back to back, their order
alternating between neurons). `--device cuda` adds timing-only runs on random-init Llama models of the
SmolLM2-135M and SmolLM2-1.7B shapes.

    python -m benchmarks.epo_vs_reference --reference-src /tmp/dreamy-ref            # CPU, 4 neurons, 30 iterations
    python -m benchmarks.epo_vs_reference --reference-src /tmp/dreamy-ref --device cuda
    python -m benchmarks.epo_vs_reference --reference-src /tmp/dreamy-ref --model tiny:lm --iters 2 --children 4   # smoke
    python -m benchmarks.epo_vs_reference --reference-src /tmp/dreamy-ref --merge s01/epo_vs_reference.json,s23/epo_vs_reference.json
    python -m benchmarks.epo_vs_reference --reference-src /tmp/dreamy-ref --seeds 0,1,2,3 --fluency-weight-range 0.3,30 \
        --reference-from benchmarks/results/epo_vs_reference.json   # ours only, under other settings

`--reference-from RESULTS_JSON` runs only ours and takes the reference's columns (and s/iter) of each neuron and
seed from an earlier results file of the same budget: the reference's runs do not depend on our settings, so a
trial of our settings costs our searches alone (the reference takes ~2.5x ours per iteration on a CPU). A file of
another budget, or one without the seed or neuron asked for, is refused by name.

Each reference column is also given per neuron over the seeds (`per_neuron*`): seed s of ours and seed s of the
reference are unrelated draws, so a neuron's wins over its seeds and the means of its bests say more than any
one pairing. `per_neuron_means*` gives those means at every cut-off, with their spread and the number of seeds
with a prompt there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from benchmarks import common
from dreamy.language import epo
from dreamy.language.search import SearchSetup
from dreamy.language.tokens import survives_retokenization
from dreamy.models import LoadedModel, load

CUTOFFS = (4.5, 5.0, 6.0, 7.0)
BUDGET = {"n_tokens": 12, "population": 8, "children": 32, "iters": 30, "seed": 0, "neurons": 4}
SHAPES = {  # random-init Llama models for GPU timing (SmolLM2 shapes)
    "llama-135m-shape": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                             num_key_value_heads=3),
    "llama-1.7b-shape": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                             num_key_value_heads=32),
    "llama-tiny-shape": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2),  # smoke tests only
}
TIMED_SHAPES = ("llama-135m-shape", "llama-1.7b-shape")


def load_reference(src: str | os.PathLike) -> Any:
    """The reference's `epo.py` as a module named `reference_epo` (its package name `dreamy` is ours)."""
    path = Path(src)
    if path.is_dir():
        path = path / "dreamy" / "epo.py" if (path / "dreamy" / "epo.py").exists() else path / "epo.py"
    if not path.is_file():
        raise SystemExit(f"no reference epo.py under {src!r}; fetch Confirm-Solutions/dreamy and pass its folder")
    spec = importlib.util.spec_from_file_location("reference_epo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def pick_neurons(loaded: LoadedModel, n: int, seed: int) -> list[tuple[int, int]]:
    """(layer, neuron) pairs: one layer drawn in each of `n` equal depth ranges, a neuron drawn in it (seeded).

    Example:
        >>> pick_neurons(load("tiny:lm"), 4, 0)[0][0] in (0, 1)
        True
    """
    layers = len(loaded.model.model.layers)
    width = loaded.model.config.intermediate_size
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for q in range(n):
        low, high = q * layers // n, max(q * layers // n + 1, (q + 1) * layers // n)
        layer = int(torch.randint(low, high, (1,), generator=gen))
        picks.append((layer, int(torch.randint(width, (1,), generator=gen))))
    return picks


def epo_budget(budget: dict[str, Any]) -> dict[str, Any]:
    """Our `epo` keyword arguments for a budget (all but `iters`).

    Example:
        >>> sorted(epo_budget(BUDGET))
        ['children', 'n_tokens', 'population', 'progress', 'seed']
    """
    return dict(n_tokens=budget["n_tokens"], population=budget["population"], children=budget["children"],
                seed=budget["seed"], progress=False)


def reference_cache_run(model: torch.nn.Module, layer: int, neuron: int, bos: int) -> Callable[..., dict[str, Any]]:
    """The reference's `cache_run`: BOS + span in, {"target": neuron at the last token, "logits": one per span token}."""
    module = model.model.layers[layer].mlp.down_proj

    def run(input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None) -> dict[str, Any]:
        captured: dict[str, torch.Tensor] = {}
        handle = module.register_forward_hook(lambda mod, args, out: captured.__setitem__("x", args[0]))
        try:
            n = (input_ids if input_ids is not None else inputs_embeds).shape[0]
            start = torch.full((n, 1), bos, dtype=torch.long, device=model.device)
            if input_ids is not None:
                out = model(input_ids=torch.cat([start, input_ids], dim=1))
            else:
                embeds = model.get_input_embeddings()(start).to(inputs_embeds.dtype)
                out = model(inputs_embeds=torch.cat([embeds, inputs_embeds], dim=1))
        finally:
            handle.remove()
        return {"target": captured["x"][:, -1, neuron], "logits": out.logits[:, 1:]}

    return run


def run_reference(reference: Any, loaded: LoadedModel, layer: int, neuron: int, budget: dict[str, Any]) -> dict[str, Any]:
    """One reference EPO run; its evaluated prompts (unique) with its own activation and cross-entropy."""
    bos = loaded.tokenizer.bos_token_id if loaded.tokenizer.bos_token_id is not None else loaded.tokenizer.eos_token_id
    run = reference_cache_run(loaded.model, layer, neuron, bos)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every restart and (with its callback) every step
        history = reference.epo(run, loaded.model, loaded.tokenizer, seq_len=budget["n_tokens"],
                                population_size=budget["population"], iters=budget["iters"],
                                explore_per_pop=budget["children"], seed=budget["seed"],
                                topk=min(512, loaded.model.get_input_embeddings().weight.shape[0]),  # its default, capped
                                callback=lambda *args, **kwargs: False)  # callback=False would stop it at once
    seconds = time.perf_counter() - start
    ids = history.ids.reshape(-1, history.ids.shape[-1])
    seen: dict[tuple[int, ...], tuple[float, float]] = {}
    for row, act, xent in zip(ids.tolist(), history.target.reshape(-1).tolist(), history.xentropy.reshape(-1).tolist()):
        seen.setdefault(tuple(row), (act, xent))
    return {"seconds": seconds, "prompts": seen}


def reference_bests(setup: SearchSetup, prompts: dict[tuple[int, ...], tuple[float, float]]) -> dict[str, Any]:
    """Best activation at each cut-off of dreamy's cross-entropy among the reference's prompts (see the module
    docstring: exact, rescoring only prompts that can pass)."""
    n = setup.layout.n_tokens
    ranked = sorted(prompts.items(), key=lambda item: -item[1][0])
    scored: dict[tuple[int, ...], tuple[float, float]] = {}
    bests: dict[str, Any] = {}
    for cut in CUTOFFS:
        bound = cut * n / (n - 1) + 1e-3
        pool = [ids for ids, (_, own_xent) in ranked if own_xent <= bound]
        best = None
        for at in range(0, len(pool), 64):
            batch = [ids for ids in pool[at:at + 64] if ids not in scored]
            if batch:
                out = setup.score(torch.tensor(batch, device=setup.layout.prefix.device))
                for ids, a, x in zip(batch, out.activation.tolist(), out.xentropy.tolist()):
                    scored[ids] = (a, x)
            passing = [scored[ids] for ids in pool[at:at + 64] if scored[ids][1] <= cut]
            if passing:
                best = max(passing) if best is None else max(best, *passing)  # the best of every batch so far
                # later batches hold lower reference activations; stop once they cannot beat this one
                if at + 64 >= len(pool) or prompts[pool[at + 64]][0] < best[0] - 1e-2:
                    break
        bests[str(cut)] = None if best is None else best[0]
    bests["max"] = max((act for act, _ in prompts.values()), default=None)
    bests["rescored"] = len(scored)
    return bests


def our_bests(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Best activation at each cut-off of cross-entropy among our evaluated prompts, and the highest."""
    out: dict[str, Any] = {}
    for cut in CUTOFFS:
        out[str(cut)] = max((r["activation"] for r in history if r["xentropy"] <= cut), default=None)
    out["max"] = max(r["activation"] for r in history)
    return out


def text_prompts(tokenizer: Any, prompts: dict[tuple[int, ...], tuple[float, float]]) -> dict[tuple[int, ...], tuple[float, float]]:
    """The prompts that are the tokens of their own text (decoded and encoded again they give the same ids, as
    every prompt of ours is): only for those is the activation the one a user gets by feeding the text back."""
    ids = list(prompts)
    keep = survives_retokenization(tokenizer, ids).tolist() if ids else []
    return {span: prompts[span] for span, ok in zip(ids, keep) if ok}


def allowed_prompts(setup: SearchSetup, prompts: dict[tuple[int, ...], tuple[float, float]]) -> dict[tuple[int, ...], tuple[float, float]]:
    """The prompts whose every token is one our search may use (`setup.allowed`: printable ASCII by default)."""
    allowed = setup.allowed.cpu()
    return {span: value for span, value in prompts.items() if bool(allowed[list(span)].all())}


# a row's reference column -> (its per-seed summary, its over-seeds table, what it counts)
REFERENCE_COLUMNS = {
    "reference": ("summary", "over_seeds", "every prompt the reference evaluated"),
    "reference_text": ("summary_text", "over_seeds_text", "the reference's prompts that are the tokens of their own text"),
    "reference_allowed": ("summary_allowed", "over_seeds_allowed", "the reference's prompts that are the tokens of their "
                          "own text and use only tokens our search may use (like for like)"),
}


def reference_columns(setup: SearchSetup, tokenizer: Any, prompts: dict[tuple[int, ...], tuple[float, float]]) -> dict[str, Any]:
    """A row's reference columns (`REFERENCE_COLUMNS`): the bests over every prompt the reference evaluated,
    over those that are the tokens of their own text, and over those of them made of our allowed tokens."""
    text = text_prompts(tokenizer, prompts)
    return {"reference": reference_bests(setup, prompts), "reference_text": reference_bests(setup, text),
            "reference_allowed": reference_bests(setup, allowed_prompts(setup, text))}


def seed_figures(rows: list[dict[str, Any]], ours_cpu: str | None = None,
                 reference_cpu: str | None = None) -> dict[str, Any]:
    """One seed's figures from its per-neuron rows: a summary per reference column and the mean s/iter of each
    method. When the reference's side was measured elsewhere (`reference_cpu`, from `--reference-from`) on another
    CPU than ours (`ours_cpu`), the speed ratio is None and `speed_ratio_refused` says why: s/iter of two machines
    are not one yardstick.

    Example:
        >>> bests = dict.fromkeys(["4.5", "5.0", "6.0", "7.0", "max"], 1.0)
        >>> row = {"target": "n", "ours": bests, "reference": bests, "reference_text": bests, "reference_allowed": bests,
        ...        "ours_s_per_iter": 1.0, "reference_s_per_iter": 2.0}
        >>> seed_figures([row])["speed_ratio"], seed_figures([row], "AMD", "Intel")["speed_ratio"]
        (0.5, None)
    """
    ours_speed = sum(r["ours_s_per_iter"] for r in rows) / len(rows)
    ref_speed = sum(r["reference_s_per_iter"] for r in rows) / len(rows)
    out = {"rows": rows, **{summary: compare(rows, column) for column, (summary, _, _) in REFERENCE_COLUMNS.items()},
           "ours_s_per_iter": ours_speed, "reference_s_per_iter": ref_speed, "speed_ratio": ours_speed / ref_speed}
    if reference_cpu is not None and reference_cpu != ours_cpu:
        out["speed_ratio"] = None
        out["speed_ratio_refused"] = (f"the reference's s/iter was measured on {reference_cpu}, ours on "
                                      f"{ours_cpu or 'an unknown CPU'}: no ratio across machines")
    return out


def compare(rows: list[dict[str, Any]], reference: str = "reference") -> dict[str, Any]:
    """Per cut-off, and at any cross-entropy ("max": the frontier's high-activation end): on how many neurons
    ours >= the `reference` column of the rows (no point on either side counts as a tie), and sums."""
    summary = {}
    for cut in [*map(str, CUTOFFS), "max"]:
        wins, ours_sum, ref_sum = 0, 0.0, 0.0
        for row in rows:
            a, b = row["ours"][cut], row[reference][cut]
            wins += (a is None and b is None) or (a is not None and (b is None or a >= b))
            ours_sum += a if a is not None else 0.0
            ref_sum += b if b is not None else 0.0
        summary[cut] = {"ours_at_least_reference": wins, "neurons": len(rows), "ours_sum": ours_sum, "reference_sum": ref_sum}
    return summary


def stored_seeds(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """An earlier results file's per-seed runs ({seed: {"rows": ...}}), its budget, our settings and where it came
    from ({"command": ..., "cpu": ...})."""
    import json

    record = json.loads(path.read_text())
    settings, figures = record["settings"], record["figures"]
    runs = figures.get("seeds") or {str(settings["seed"]): {"rows": figures["rows"]}}
    source = {"command": record.get("command"), "cpu": (record.get("machine") or {}).get("cpu_model")}
    return runs, {key: settings[key] for key in BUDGET}, dict(settings.get("ours") or {}), source


def rescored(loaded: LoadedModel, path: Path, cache: Path | None
             ) -> tuple[dict[int, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The per-seed figures of the results file `path` with their reference columns recomputed from the cached
    reference runs (`reference_bests` as it is now), and that run's budget and our settings."""
    import json

    runs, budget, ours, source = stored_seeds(path)
    if cache is None or not cache.exists():
        raise SystemExit(f"--rescore needs the reference-run cache; {cache} is missing")
    stored = json.loads(cache.read_text())  # read once for every row
    per_seed = {}
    for seed, run in runs.items():
        rows = []
        for row in run["rows"]:
            layer, neuron = int(row["target"].split(".")[2]), int(row["target"].rsplit(":", 1)[1])
            key = reference_key(loaded, layer, neuron, dict(budget, seed=int(seed)))
            if key not in stored:
                raise SystemExit(f"--rescore: the cache holds no reference run for {row['target']} at seed {seed}")
            setup = SearchSetup.build(loaded, row["target"], n_tokens=budget["n_tokens"])
            rows.append(dict(row, **reference_columns(setup, loaded.tokenizer, cached_prompts(stored[key]))))
        per_seed[int(seed)] = dict(seed_figures(rows), rescored_from=source["command"])
    return per_seed, budget, ours


def merged(paths: Sequence[Path]) -> tuple[dict[int, dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The per-seed figures of several results files as they stand (nothing rerun or rescored: each seed's
    reference columns are those its own run measured), for one table over all their seeds. The files must share
    the budget and our settings, and name each seed once; otherwise refused, naming the file.

    Example (files of seeds 0-1 and 2-3, same settings):
        per_seed, budget, ours = merged([Path("s01/epo_vs_reference.json"), Path("s23/epo_vs_reference.json")])
    """
    per_seed: dict[int, dict[str, Any]] = {}
    first: tuple[dict[str, Any], dict[str, Any]] | None = None
    for path in paths:
        runs, budget, ours, source = stored_seeds(path)
        if first is not None and (budget, ours) != first:
            raise SystemExit(f"--merge: {path} has budget {budget} and our settings {ours}, the first file "
                             f"{first[0]} and {first[1]}: only runs of one setting can share a table")
        first = first or (budget, ours)
        for seed, run in runs.items():
            if int(seed) in per_seed:
                raise SystemExit(f"--merge: seed {seed} is in {path} and in an earlier file; give each seed once")
            ours_cpu = run.get("measured_on") or source["cpu"]
            reference_cpu = reference_machine(Path(run["reference_from"]), seed) if "reference_from" in run else None
            per_seed[int(seed)] = dict(seed_figures(run["rows"], ours_cpu, reference_cpu), measured_on=ours_cpu,
                                       measured_by=run.get("measured_by") or source["command"],
                                       **({"reference_from": run["reference_from"]} if "reference_from" in run else {}))
    if first is None:
        raise SystemExit("--merge: no results files given")
    return per_seed, first[0], first[1]


def reference_machine(path: Path, seed: int | str) -> str:
    """The CPU on which the results file `path` measured the reference's side of seed `seed` (its seed's
    `measured_on`, else the file's machine); "unknown (PATH is missing)" when the file is gone."""
    if not path.exists():
        return f"unknown ({path} is missing)"
    runs, _, _, source = stored_seeds(path)
    run = runs.get(str(seed), {})
    return run.get("measured_on") or source["cpu"] or "unknown"


def stored_reference(path: Path, budget: dict[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
    """The reference side of every row of the results file `path` ({(seed, target): its reference columns and
    reference_s_per_iter}), for runs of `budget` (seed aside); a file of another budget, or a row without every
    reference column, is refused by name.

    Example:
        stored = stored_reference(Path("benchmarks/results/epo_vs_reference.json"), BUDGET)
    """
    runs, stored_budget, _, _ = stored_seeds(path)
    mine = {key: value for key, value in budget.items() if key != "seed"}
    theirs = {key: value for key, value in stored_budget.items() if key != "seed"}
    if mine != theirs:
        raise SystemExit(f"--reference-from: {path} was run with budget {theirs}, this run's is {mine}: "
                         f"its reference figures are not this budget's; run the reference (leave out --reference-from)")
    out = {}
    for seed, run in runs.items():
        for row in run["rows"]:
            missing = [key for key in (*REFERENCE_COLUMNS, "reference_s_per_iter") if key not in row]
            if missing:
                raise SystemExit(f"--reference-from: {path}, seed {seed}, {row['target']} lacks {', '.join(missing)}; "
                                 f"rescore it first (--rescore)")
            out[(int(seed), row["target"])] = {key: row[key] for key in (*REFERENCE_COLUMNS, "reference_s_per_iter")}
    return out


def neuron_name(target: str) -> str:
    """A neuron target as the tables name it.

    Example:
        >>> neuron_name("model.layers.4.mlp.down_proj@in:1071")
        'model.layers.4:1071'
    """
    return target.replace(".mlp.down_proj@in", "")


def per_neuron(per_seed: dict[int, dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """Per neuron, over the seeds, against the reference column `column`: at each cut-off and at "max", on how
    many seeds ours >= the reference (as `compare` counts), and the mean highest activation of each side.

    Example:
        >>> seed = {"rows": [{"target": "n", "ours": {"4.5": None, "5.0": 1.0, "6.0": 1.0, "7.0": 1.0, "max": 2.0},
        ...                   "reference": {"4.5": None, "5.0": None, "6.0": 2.0, "7.0": 2.0, "max": 3.0}}]}
        >>> per_neuron({0: seed, 1: seed}, "reference")[0]["max"], per_neuron({0: seed}, "reference")[0]["<=5.0"]
        ('0/2', '1/1')
    """
    table: dict[str, dict[str, Any]] = {}
    for run in per_seed.values():
        for row in run["rows"]:
            entry = table.setdefault(row["target"], {"wins": {}, "ours": [], "reference": [], "seeds": 0})
            entry["seeds"] += 1
            for cut in [*map(str, CUTOFFS), "max"]:
                a, b = row["ours"][cut], row[column][cut]
                won = (a is None and b is None) or (a is not None and (b is None or a >= b))
                entry["wins"][cut] = entry["wins"].get(cut, 0) + won
            entry["ours"].append(row["ours"]["max"])
            entry["reference"].append(row[column]["max"])
    out = []
    for target, entry in table.items():
        n = entry["seeds"]
        ref = [v for v in entry["reference"] if v is not None]
        out.append({"neuron": neuron_name(target), "seeds": n,
                    **{("max" if cut == "max" else f"<={cut}"): f"{wins}/{n}" for cut, wins in entry["wins"].items()},
                    "ours max (mean)": sum(entry["ours"]) / n,
                    "reference max (mean)": sum(ref) / len(ref) if ref else None})
    return out


def per_neuron_means(per_seed: dict[int, dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """Per neuron and cut-off (and "max"), over the seeds, against the reference column `column`: each side's
    mean best activation over the seeds where it has a prompt at that cut-off, the spread (min..max) and on how
    many seeds it has one. "ours >= reference" when ours has a prompt on at least as many seeds as the reference
    and its mean is at least the reference's (or the reference has none): the mean reading of a neuron, where
    `per_neuron` counts the seed-by-seed pairings of unrelated draws.

    Example:
        >>> rows = lambda a, b: {"rows": [{"target": "n", "ours": dict.fromkeys(["4.5", "5.0", "6.0", "7.0", "max"], a),
        ...                                "reference": dict.fromkeys(["4.5", "5.0", "6.0", "7.0", "max"], b)}]}
        >>> table = per_neuron_means({0: rows(1.0, 2.0), 1: rows(3.0, None)}, "reference")
        >>> table[0]["ours mean"], table[0]["ours seeds"], table[0]["reference seeds"], table[0]["ours >= reference"]
        (2.0, '2/2', '1/2', True)
    """
    values: dict[str, dict[str, dict[str, list[float]]]] = {}
    for run in per_seed.values():
        for row in run["rows"]:
            entry = values.setdefault(row["target"], {})
            for cut in [*map(str, CUTOFFS), "max"]:
                sides = entry.setdefault(cut, {"ours": [], "reference": []})
                for side, key in (("ours", "ours"), ("reference", column)):
                    if row[key][cut] is not None:
                        sides[side].append(row[key][cut])
    n = len(per_seed)
    out = []
    for target, entry in values.items():
        for cut, sides in entry.items():
            line: dict[str, Any] = {"neuron": neuron_name(target),
                                    "cut-off": cut if cut == "max" else f"<={cut}"}
            for side, found in sides.items():
                line[f"{side} mean"] = sum(found) / len(found) if found else None
                line[f"{side} min..max"] = f"{min(found):.3g}..{max(found):.3g}" if found else None
                line[f"{side} seeds"] = f"{len(found)}/{n}"
            ours, ref = sides["ours"], sides["reference"]
            line["ours >= reference"] = not ref or (len(ours) >= len(ref) and
                                                    line["ours mean"] >= line["reference mean"])
            out.append(line)
    return out


def over_seeds(per_seed: dict[int, dict[str, Any]], summary: str) -> list[dict[str, Any]]:
    """Per cut-off, over the seeds' `summary` (a summary of `REFERENCE_COLUMNS`): the range of neurons where ours >=
    the reference, the total of those wins, and mean sums."""
    spread = []
    for cut in [*map(str, CUTOFFS), "max"]:
        wins = [run[summary][cut]["ours_at_least_reference"] for run in per_seed.values()]
        cases = sum(run[summary][cut]["neurons"] for run in per_seed.values())
        spread.append({"cut-off": cut, "seeds": len(wins), "ours >= reference per seed (min..max)": f"{min(wins)}..{max(wins)}",
                       "ours >= reference (all)": f"{sum(wins)}/{cases}",
                       "ours sum (mean)": sum(r[summary][cut]["ours_sum"] for r in per_seed.values()) / len(wins),
                       "reference sum (mean)": sum(r[summary][cut]["reference_sum"] for r in per_seed.values()) / len(wins)})
    return spread


def measure(loaded: LoadedModel, reference: Any, budget: dict[str, Any], ours: dict[str, Any],
            cache: Path | None = None, stored: dict[tuple[int, str], dict[str, Any]] | None = None,
            reference_cpu: str | None = None) -> dict[str, Any]:
    """Both methods on every drawn neuron, back to back (order alternating). The neurons are drawn with seed 0
    whatever `budget["seed"]` (the searches' seed) is. With `cache`, a reference run of the same model, neuron,
    budget and seed is read back instead of run again (its results do not depend on our settings); with `stored`
    (`stored_reference`), ours alone runs and each row's reference side is the stored one, measured on
    `reference_cpu` (no speed ratio when that is not this CPU)."""
    rows = []
    for index, (layer, neuron) in enumerate(pick_neurons(loaded, budget["neurons"], 0)):
        target = f"model.layers.{layer}.mlp.down_proj@in:{neuron}"
        setup = SearchSetup.build(loaded, target, n_tokens=budget["n_tokens"])

        def run_ours() -> dict[str, Any]:
            start = time.perf_counter()
            found = epo(loaded, target, iters=budget["iters"], **epo_budget(budget), **ours)
            return {"seconds": time.perf_counter() - start, "history": found.history,
                    "loop_seconds": found.settings["loop_seconds"]}

        def run_ref() -> dict[str, Any]:
            return cached_reference(cache, reference, loaded, layer, neuron, budget)

        if stored is not None:
            if (budget["seed"], target) not in stored:
                raise SystemExit(f"--reference-from: the file holds no reference figures for {target} at seed "
                                 f"{budget['seed']}; give a file of that seed, or run the reference")
            mine, theirs_side = run_ours(), stored[(budget["seed"], target)]
        else:
            first, second = (run_ours, run_ref) if index % 2 == 0 else (run_ref, run_ours)
            done = [first(), second()]
            mine, theirs = (done[0], done[1]) if index % 2 == 0 else (done[1], done[0])
            theirs_side = {**reference_columns(setup, loaded.tokenizer, theirs["prompts"]),
                           "reference_s_per_iter": theirs["seconds"] / budget["iters"]}
        row = {"target": target, "ours": our_bests(mine["history"]), **theirs_side,
               "ours_s_per_iter": mine["seconds"] / budget["iters"], "ours_loop_s_per_iter": mine["loop_seconds"] / budget["iters"]}
        rows.append(row)
        print(f"{target}: ours {row['ours']} {row['ours_s_per_iter']:.2f} s/iter | reference {row['reference']} "
              f"{row['reference_s_per_iter']:.2f} s/iter", flush=True)
    ours_cpu = common.machine_info(loaded.device)["cpu_model"] if reference_cpu is not None else None
    return seed_figures(rows, ours_cpu, reference_cpu)


def reference_key(loaded: LoadedModel, layer: int, neuron: int, budget: dict[str, Any]) -> str:
    """The reference-run cache's key of one run: model, neuron and budget (seed included)."""
    import json

    return json.dumps({"model": loaded.name, "layer": layer, "neuron": neuron, **budget}, sort_keys=True)


def cached_prompts(entry: dict[str, Any]) -> dict[tuple[int, ...], tuple[float, float]]:
    """A cached reference run's evaluated prompts, as `run_reference` gives them."""
    return {tuple(ids): (a, x) for ids, a, x in entry["prompts"]}


def cached_reference(cache: Path | None, reference: Any, loaded: LoadedModel, layer: int, neuron: int,
                     budget: dict[str, Any]) -> dict[str, Any]:
    """`run_reference`, read from / written to the JSON file `cache` when one is given."""
    import json

    key = reference_key(loaded, layer, neuron, budget)
    stored = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    if key in stored:
        return {"seconds": stored[key]["seconds"], "prompts": cached_prompts(stored[key]), "cached": True}
    done = run_reference(reference, loaded, layer, neuron, budget)
    if cache is not None:
        stored = json.loads(cache.read_text()) if cache.exists() else {}  # again: another run may have added some
        stored[key] = {"seconds": done["seconds"], "prompts": [[list(ids), a, x] for ids, (a, x) in done["prompts"].items()]}
        cache.parent.mkdir(parents=True, exist_ok=True)
        from dreamy.core.files import write_json_atomic

        write_json_atomic(cache, stored)
    return done


def _timed_epo(loaded: LoadedModel, target: str, budget: dict[str, Any], iters: int, ours: dict[str, Any]) -> tuple[float, float]:
    """(s/iter of the whole call, s/iter of its loop) for one of our EPO runs, after a 2-iteration warm-up."""
    kwargs = dict(epo_budget(budget), **ours)
    epo(loaded, target, iters=2, **kwargs)
    _sync(loaded.device)
    start = time.perf_counter()
    found = epo(loaded, target, iters=iters, **kwargs)
    _sync(loaded.device)
    return (time.perf_counter() - start) / iters, found.settings["loop_seconds"] / iters


def _sync(device: Any) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _launches(run: Callable[[int], Any], device: Any) -> dict[str, float]:
    """Kernel launches and host-device synchronizations per iteration of `run(iters)` (profiled at 3 and 1
    iterations; the difference over 2)."""
    from torch.profiler import ProfilerActivity, profile

    def count(iters: int) -> tuple[int, int]:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run(iters)
            _sync(device)
        names = [e.name for e in prof.events()]
        launches = sum(n in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx") for n in names)
        syncs = sum(n in ("aten::item", "aten::_local_scalar_dense") for n in names)
        return launches, syncs

    one, three = count(1), count(3)
    return {"launches_per_iter": (three[0] - one[0]) / 2, "syncs_per_iter": (three[1] - one[1]) / 2}


def _our_loop(loaded: LoadedModel, target: str, budget: dict[str, Any], ours: dict[str, Any]) -> Callable[[int], Any]:
    """Our EPO without building its result (frontier attributions grow with the iterations; profiles count the loop)."""
    from unittest import mock

    def run(iters: int) -> None:
        with mock.patch.object(SearchSetup, "result", lambda *args, **kwargs: None):
            epo(loaded, target, iters=iters, **epo_budget(budget), **ours)
    return run


def timing_models(reference: Any, device: str, budget: dict[str, Any], iters: int, tokenizer: Any,
                  ours: dict[str, Any], scorings: list[str], profile_launches: bool = False,
                  shapes: Sequence[str] = TIMED_SHAPES) -> list[dict[str, Any]]:
    """s/iter of both methods on random-init Llama models of the SmolLM2 shapes (timing only; each run after a
    2-iteration warm-up), ours once per scoring strategy in `scorings`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rows = []
    for name in shapes:
        shape = SHAPES[name]
        config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **shape)
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM(config).eval().requires_grad_(False)
        loaded = LoadedModel(name=name, kind="language", model=model, tokenizer=tokenizer)
        layer = config.num_hidden_layers // 2
        target = f"model.layers.{layer}.mlp.down_proj@in:5"
        timed = dict(budget, iters=iters)
        run_reference(reference, loaded, layer, 5, dict(timed, iters=2))  # warm-up
        ref_s = run_reference(reference, loaded, layer, 5, timed)["seconds"] / iters
        ref_counts = _launches(lambda n: run_reference(reference, loaded, layer, 5, dict(timed, iters=n)), device) \
            if profile_launches else {}
        for scoring in scorings:
            options = dict(ours, scoring=scoring)
            ours_s, loop_s = _timed_epo(loaded, target, budget, iters, options)
            row = {"model": name, "device": device, "scoring": scoring, "iters": iters, "ours_s_per_iter": ours_s,
                   "ours_loop_s_per_iter": loop_s, "reference_s_per_iter": ref_s, "ratio": ours_s / ref_s}
            if profile_launches:
                row.update(_launches(_our_loop(loaded, target, budget, options), device))
                row.update({f"reference_{key}": value for key, value in ref_counts.items()})
            rows.append(row)
            print(row, flush=True)
        del model, loaded
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--reference-src", default=os.environ.get("DREAMY_REFERENCE_SRC"),
                        help="folder of a fetched Confirm-Solutions/dreamy (or its dreamy/epo.py); default $DREAMY_REFERENCE_SRC")
    parser.add_argument("--model", default="bundled:smollm2-135m", help="language model (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda adds random-init 135M/1.7B timing runs)")
    parser.add_argument("--iters", type=int, help=f"iterations (default {BUDGET['iters']})")
    parser.add_argument("--children", type=int, help=f"children per member (default {BUDGET['children']})")
    parser.add_argument("--neurons", type=int, help=f"neurons, one per depth range (default {BUDGET['neurons']})")
    parser.add_argument("--timing-iters", type=int, default=5, help="iterations of the GPU timing runs (default %(default)s)")
    parser.add_argument("--topk", type=int, help="our EPO's topk (default: epo's)")
    parser.add_argument("--restart-every", type=int, help="our EPO's restart period (default: epo's; 0 = never)")
    parser.add_argument("--fluency-weight-range", help="our EPO's LOW,HIGH range of slot fluency weights (default: epo's)")
    parser.add_argument("--activation-slots", type=int, help="our EPO's slots with fluency weight 0 (default: epo's)")
    parser.add_argument("--rescore", metavar="RESULTS_JSON[,...]",
                        help="recompute the reference columns of earlier results files (e.g. one per seed, same settings) "
                             "from the reference-run cache "
                             "(our rows and timings kept; the cache must hold every run it needs)")
    parser.add_argument("--merge", metavar="RESULTS_JSON[,...]",
                        help="one table over the seeds of earlier results files of the same settings, as they stand "
                             "(nothing rerun: e.g. seeds measured on different days or machines)")
    parser.add_argument("--reference-from", metavar="RESULTS_JSON",
                        help="run ours only; take the reference's figures per neuron and seed from this earlier results file "
                             "of the same budget")
    parser.add_argument("--seeds", default="0", help="comma-separated search seeds (the neurons stay drawn with seed 0)")
    parser.add_argument("--reference-cache", default=str(Path("~/.cache/dreamy/benchmarks/reference_epo.json").expanduser()),
                        help="JSON file of reference runs to reuse ('none': always run it; default %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 avoids OpenMP spinning on a loaded machine)")
    parser.add_argument("--scoring", default="auto", help="our scoring strategy: auto, packed, grouped or full; "
                                                          "for the timing runs a comma-separated list (default %(default)s)")
    parser.add_argument("--timing-only", action="store_true",
                        help="only the random-init timing runs (no quality comparison; needs no model weights)")
    parser.add_argument("--tokenizer", help="a tokenizer folder for --timing-only (default: the --model's)")
    parser.add_argument("--shapes", default=",".join(TIMED_SHAPES), help=f"timing shapes, of {', '.join(SHAPES)}")
    parser.add_argument("--profile-launches", action="store_true", help="count kernel launches and syncs per iteration")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs_reference = not (args.reference_from or args.merge or args.rescore) or args.device.startswith("cuda") \
        or args.timing_only  # these alone run the reference's code
    if runs_reference and not args.reference_src:
        print("skipped: no reference EPO; fetch github.com/Confirm-Solutions/dreamy and pass --reference-src PATH")
        return
    reference = load_reference(args.reference_src) if args.reference_src else None
    budget = dict(BUDGET)
    for key in ("iters", "children", "neurons"):
        if getattr(args, key) is not None:
            budget[key] = getattr(args, key)
    ours: dict[str, Any] = {}
    if args.topk is not None:
        ours["topk"] = args.topk
    if args.restart_every is not None:
        ours["restart_every"] = args.restart_every or None
    if args.fluency_weight_range:
        low, high = (float(v) for v in args.fluency_weight_range.split(","))
        ours["fluency_weight_range"] = (low, high)
    if args.activation_slots is not None:
        ours["activation_slots"] = args.activation_slots
    cache = None if args.reference_cache.lower() == "none" else Path(args.reference_cache)
    scorings = args.scoring.split(",")
    started = time.perf_counter()
    figures: dict[str, Any] = {}
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if not args.timing_only:
        loaded = load(args.model, device=args.device)
        tokenizer = tokenizer or loaded.tokenizer
        per_seed = {}
        if args.rescore:
            for part in args.rescore.split(","):  # one file per seed may be given
                found, budget, ours = rescored(loaded, Path(part), cache)
                per_seed.update(found)
            args.seeds = ",".join(map(str, per_seed))
        elif args.merge:
            per_seed, budget, ours = merged([Path(part) for part in args.merge.split(",")])
            args.seeds = ",".join(map(str, sorted(per_seed)))
        else:
            stored = stored_reference(Path(args.reference_from), budget) if args.reference_from else None
            for seed in [int(v) for v in args.seeds.split(",")]:
                per_seed[seed] = measure(loaded, reference, dict(budget, seed=seed), dict(ours, scoring=scorings[0]), cache,
                                         stored, reference_machine(Path(args.reference_from), seed) if stored else None)
                if stored is not None:
                    per_seed[seed]["reference_from"] = args.reference_from
        figures = dict(per_seed[min(per_seed)])
        figures["seeds"] = {str(seed): {**{summary: run[summary] for summary, _, _ in REFERENCE_COLUMNS.values()},
                                        **{key: run[key] for key in ("measured_on", "measured_by", "reference_from") if key in run},
                                        "rows": run["rows"]} for seed, run in sorted(per_seed.items())}
        for column, (summary, spread, _) in REFERENCE_COLUMNS.items():
            figures[spread] = over_seeds(per_seed, summary)
            suffix = column[len("reference"):]  # "", "_text", "_allowed"
            figures[f"per_neuron{suffix}"] = per_neuron(per_seed, column)
            figures[f"per_neuron_means{suffix}"] = per_neuron_means(per_seed, column)
        table = []
        for row in figures["rows"]:
            for method in ("ours", *REFERENCE_COLUMNS):
                table.append({"neuron": neuron_name(row["target"]), "method": method,
                              "s/iter": row[f"{method.split('_')[0]}_s_per_iter"],
                              **{f"xent<={cut}": row[method][str(cut)] for cut in CUTOFFS}, "max": row[method]["max"]})
        common.print_table(table, title=f"{args.model} on {args.device}: EPO, {budget['n_tokens']} tokens, population "
                                        f"{budget['population']} x {budget['children']} children, {budget['iters']} iterations")
        common.print_table([{"cut-off": cut, **s} for cut, s in figures["summary"].items()], title="ours vs reference per cut-off")
        for column, (_, spread, counts) in REFERENCE_COLUMNS.items():
            common.print_table(figures[spread], title=f"over seeds {args.seeds}: {counts}")
            suffix = column[len("reference"):]
            common.print_table(figures[f"per_neuron{suffix}"],
                               title=f"per neuron over seeds {args.seeds} (ours >= reference on k of n seeds): {counts}")
            means = figures[f"per_neuron_means{suffix}"]
            common.print_table(means, title=f"per neuron over seeds {args.seeds}, mean bests: {counts}")
            print(f"mean reading: ours >= reference on {sum(m['ours >= reference'] for m in means)} of {len(means)} "
                  f"neuron cut-offs")
        ratio = "no ratio: " + figures["speed_ratio_refused"] if figures["speed_ratio"] is None else \
            f"ratio {figures['speed_ratio']:.2f}"
        print(f"\ns/iter: ours {figures['ours_s_per_iter']:.3f}, reference {figures['reference_s_per_iter']:.3f} ({ratio})")
        if args.reference_from:
            print(f"(the reference's s/iter is the one {args.reference_from} measured, on its own machine)")
    if args.device.startswith("cuda") or args.timing_only:
        if tokenizer is None:
            tokenizer = load(args.model).tokenizer
        figures["timing"] = timing_models(reference, args.device, budget, args.timing_iters, tokenizer, ours, scorings,
                                          args.profile_launches, args.shapes.split(","))
        common.print_table(figures["timing"], title=f"timing, random-init Llama models on {args.device}")
    name = "epo_vs_reference_timing" if args.timing_only else "epo_vs_reference"
    path = common.write_result(name, figures, settings={"model": args.model, "device": args.device,
                                                        "reference_src": str(args.reference_src), "ours": ours,
                                                        "scoring": args.scoring, **budget},
                               results_dir=args.results_dir, device=args.device, started=started)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
