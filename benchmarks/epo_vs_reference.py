"""Does dreamy's EPO find prompts at least as active as the authors' reference EPO at each cross-entropy cut-off?

Both run on the same model, the same MLP neurons (drawn with seed 0, one per depth range) and the same budget:
our `EPOConfig` at 30 iterations and its defaults (12-token span, population 8, 32 children per member, random
starts), changed with `--set KEY=VALUE` (checked by `EPOConfig.build`); the reference gets the same span length,
population, children, iterations and seed, and its own topk (512) and fluency weights. Each seed of `--seeds`
runs both on every neuron, back to back (which goes first alternates). The reference is imported from a fetched
Confirm-Solutions/dreamy (`--reference-src PATH`, its folder or its `dreamy/epo.py`; default
`$DREAMY_REFERENCE_SRC`), never copied here; without it the script says so and exits.

One yardstick. The reference sees the span after the model's BOS token (its `cache_run`, written here), so both
optimize the same activation: the neuron (`down_proj` input) at the span's last token. Its own cross-entropy
skips the first span token (11 terms for 12 tokens); "prompt cross-entropy" here is ours, the mean over all 12
span tokens, the first predicted from BOS, and the reference's prompts are rescored with it (exactly: only its
prompts whose own cross-entropy is at most 12/11 of a cut-off can pass it; they are rescored from the highest
activation down until one passes). Three reference columns: every prompt it evaluated (`reference`), those that
are the tokens of their own text, as every prompt of ours is (`reference_text`), and those of them made of tokens
our search may use (`reference_allowed`, printable ASCII by default: like for like).

Reported: per neuron and cut-off (prompt cross-entropy <= 4.5, 5, 6, 7, and "max", any cross-entropy), each
side's best activation over the seeds (mean, min..max, seeds with a prompt there); per cut-off, the neurons where
ours >= the reference (a prompt on at least as many seeds, a mean at least the reference's); each method's s/iter
(wall time of a call / iterations) in this run. Seed s of ours and of the reference are unrelated draws.

    python -m benchmarks.epo_vs_reference --reference-src /tmp/dreamy-ref                 # 4 neurons, seed 0, CPU
    python -m benchmarks.epo_vs_reference --reference-src /tmp/dreamy-ref --seeds 0,1,2,3 --threads 1 \\
        --set fluency_weight_range=0.3,30
    python -m benchmarks.epo_vs_reference --reference-src /tmp/dreamy-ref --model tiny:lm --set iters=2 --set children=4
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks import common
from dreamy.language import EPOConfig, epo
from dreamy.language.search import SearchSetup
from dreamy.language.tokens import survives_retokenization
from dreamy.models import LoadedModel, load

CUTOFFS = (4.5, 5.0, 6.0, 7.0)
KEYS = (*map(str, CUTOFFS), "max")
BASE = {"iters": 30}  # the benchmark's EPO settings before --set (the rest are EPOConfig's defaults)
NEURONS = 4
COLUMNS = ("reference", "reference_text", "reference_allowed")
Prompts = dict[tuple[int, ...], tuple[float, float]]  # token ids -> (activation, cross-entropy) as the reference scored them


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


def run_reference(reference: Any, loaded: LoadedModel, layer: int, neuron: int, config: EPOConfig) -> dict[str, Any]:
    """One reference EPO run at `config`'s span length, population, children, iterations and seed: its wall
    seconds and its evaluated prompts (unique) with its own activation and cross-entropy."""
    bos = loaded.tokenizer.bos_token_id if loaded.tokenizer.bos_token_id is not None else loaded.tokenizer.eos_token_id
    run = reference_cache_run(loaded.model, layer, neuron, bos)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every restart and (with its callback) every step
        history = reference.epo(run, loaded.model, loaded.tokenizer, seq_len=config.n_tokens,
                                population_size=config.population, iters=config.iters,
                                explore_per_pop=config.children, seed=config.seed,
                                topk=min(512, loaded.model.get_input_embeddings().weight.shape[0]),  # its default, capped
                                callback=lambda *args, **kwargs: False)  # callback=False would stop it at once
    seconds = time.perf_counter() - start
    ids = history.ids.reshape(-1, history.ids.shape[-1])
    seen: Prompts = {}
    for row, act, xent in zip(ids.tolist(), history.target.reshape(-1).tolist(), history.xentropy.reshape(-1).tolist()):
        seen.setdefault(tuple(row), (act, xent))
    return {"seconds": seconds, "prompts": seen}


def reference_bests(setup: SearchSetup, prompts: Prompts) -> dict[str, Any]:
    """Best activation at each cut-off of our cross-entropy among the reference's prompts (exact, rescoring only
    prompts that can pass: see the module docstring), and the highest at any cross-entropy ("max")."""
    n = setup.layout.n_tokens
    ranked = sorted(prompts.items(), key=lambda item: -item[1][0])
    scored: Prompts = {}
    bests: dict[str, Any] = {}
    for cut in CUTOFFS:
        pool = [ids for ids, (_, own_xent) in ranked if own_xent <= cut * n / (n - 1) + 1e-3]
        best = None
        for at in range(0, len(pool), 64):
            batch = [ids for ids in pool[at:at + 64] if ids not in scored]
            if batch:
                out = setup.score(torch.tensor(batch, device=setup.layout.prefix.device))
                scored.update(zip(batch, zip(out.activation.tolist(), out.xentropy.tolist())))
            passing = [scored[ids] for ids in pool[at:at + 64] if scored[ids][1] <= cut]
            if passing:
                best = max(passing) if best is None else max(best, *passing)  # the best of every batch so far
                # later batches hold lower reference activations; stop once they cannot beat this one
                if at + 64 >= len(pool) or prompts[pool[at + 64]][0] < best[0] - 1e-2:
                    break
        bests[str(cut)] = None if best is None else best[0]
    bests["max"] = max((act for act, _ in prompts.values()), default=None)
    return bests


def our_bests(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Best activation at each cut-off of cross-entropy among our evaluated prompts, and the highest ("max")."""
    out = {str(cut): max((r["activation"] for r in history if r["xentropy"] <= cut), default=None) for cut in CUTOFFS}
    return {**out, "max": max(r["activation"] for r in history)}


def text_prompts(tokenizer: Any, prompts: Prompts) -> Prompts:
    """The prompts that are the tokens of their own text (decoded and encoded again they give the same ids, as
    every prompt of ours is): only for those is the activation the one a user gets by feeding the text back."""
    ids = list(prompts)
    keep = survives_retokenization(tokenizer, ids).tolist() if ids else []
    return {span: prompts[span] for span, ok in zip(ids, keep) if ok}


def allowed_prompts(setup: SearchSetup, prompts: Prompts) -> Prompts:
    """The prompts whose every token is one our search may use (`setup.allowed`: printable ASCII by default)."""
    allowed = setup.allowed.cpu()
    return {span: value for span, value in prompts.items() if bool(allowed[list(span)].all())}


def reference_columns(setup: SearchSetup, tokenizer: Any, prompts: Prompts) -> dict[str, Any]:
    """A row's reference columns (`COLUMNS`): the bests over every prompt the reference evaluated, over those
    that are the tokens of their own text, and over those of them made of our allowed tokens."""
    text = text_prompts(tokenizer, prompts)
    return {"reference": reference_bests(setup, prompts), "reference_text": reference_bests(setup, text),
            "reference_allowed": reference_bests(setup, allowed_prompts(setup, text))}


def spread(values: list[float | None]) -> dict[str, Any]:
    """Mean and min..max of the values that are not None, and how many of all there are ("k/n").

    Example:
        >>> spread([1.0, None, 3.0])
        {'mean': 2.0, 'min..max': '1..3', 'seeds': '2/3'}
    """
    found = [v for v in values if v is not None]
    return {"mean": statistics.fmean(found) if found else None,
            "min..max": f"{min(found):.3g}..{max(found):.3g}" if found else None, "seeds": f"{len(found)}/{len(values)}"}


def over_seeds(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """Per neuron and cut-off, ours against the reference column `column` over the seeds' rows: each side's
    `spread`, and "ours >= reference" when ours has a prompt on at least as many seeds and a mean at least the
    reference's (or the reference has none).

    Example:
        >>> row = lambda a, b: {"target": "n", "ours": dict.fromkeys(KEYS, a), "reference": dict.fromkeys(KEYS, b)}
        >>> line = over_seeds([row(1.0, 2.0), row(3.0, None)], "reference")[0]
        >>> line["ours mean"], line["ours seeds"], line["reference seeds"], line["ours >= reference"]
        (2.0, '2/2', '1/2', True)
    """
    out = []
    for target in dict.fromkeys(row["target"] for row in rows):
        mine = [row for row in rows if row["target"] == target]
        for key in KEYS:
            ours, ref = spread([r["ours"][key] for r in mine]), spread([r[column][key] for r in mine])
            line = {"neuron": target.replace(".mlp.down_proj@in", ""), "cut-off": key if key == "max" else f"<={key}",
                    **{f"ours {k}": v for k, v in ours.items()}, **{f"reference {k}": v for k, v in ref.items()}}
            n_ours, n_ref = (int(s["seeds"].split("/")[0]) for s in (ours, ref))
            line["ours >= reference"] = n_ref == 0 or (n_ours >= n_ref and ours["mean"] >= ref["mean"])
            out.append(line)
    return out


def headline(tables: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per reference column, per cut-off: on how many neurons ours >= the reference (`over_seeds`)."""
    out = []
    for column, lines in tables.items():
        cuts = {line["cut-off"]: [] for line in lines}
        for line in lines:
            cuts[line["cut-off"]].append(line["ours >= reference"])
        out.append({"against": column, **{cut: f"{sum(won)}/{len(won)}" for cut, won in cuts.items()}})
    return out


def measure(loaded: LoadedModel, reference: Any, config: EPOConfig, neurons: int) -> list[dict[str, Any]]:
    """Both methods on every drawn neuron at `config` (its seed the searches' seed; the neurons are drawn with
    seed 0), back to back, which goes first alternating: one row per neuron."""
    rows = []
    for index, (layer, neuron) in enumerate(pick_neurons(loaded, neurons, 0)):
        target = f"model.layers.{layer}.mlp.down_proj@in:{neuron}"

        def run_ours() -> dict[str, Any]:
            start = time.perf_counter()
            found = epo(loaded, target, config, progress=False)
            return {"seconds": time.perf_counter() - start, "found": found}

        if index % 2 == 0:
            mine, theirs = run_ours(), run_reference(reference, loaded, layer, neuron, config)
        else:
            theirs, mine = run_reference(reference, loaded, layer, neuron, config), run_ours()
        setup = SearchSetup.build(loaded, target, n_tokens=config.n_tokens)
        row = {"target": target, "seed": config.seed, "ours": our_bests(mine["found"].history),
               **reference_columns(setup, loaded.tokenizer, theirs["prompts"]),
               "ours_s_per_iter": mine["seconds"] / mine["found"].settings["iterations_run"],
               "reference_s_per_iter": theirs["seconds"] / config.iters}
        rows.append(row)
        print(f"seed {config.seed} {target}: ours {row['ours']} {row['ours_s_per_iter']:.2f} s/iter | reference "
              f"{row['reference']} {row['reference_s_per_iter']:.2f} s/iter", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__.splitlines()[0], threads=True, seeds=True, config=EPOConfig)
    parser.add_argument("--reference-src", default=os.environ.get("DREAMY_REFERENCE_SRC"),
                        help="folder of a fetched Confirm-Solutions/dreamy (or its dreamy/epo.py); default $DREAMY_REFERENCE_SRC")
    parser.add_argument("--model", default="bundled:smollm2-135m", help="language model (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="torch device (default %(default)s)")
    parser.add_argument("--neurons", type=int, default=NEURONS, help="neurons, one per depth range (default %(default)s)")
    args = common.parse(parser, argv)
    config = common.config_of(EPOConfig, args.sets, **BASE)
    fixed = [key for key in ("seed", "prefix", "suffix") if getattr(config, key) != getattr(EPOConfig(), key)]
    if fixed:
        raise SystemExit(f"--set {fixed[0]}: not here (seeds come from --seeds; the yardstick is the bare span after BOS)")
    if not args.reference_src:
        print("skipped: no reference EPO; fetch github.com/Confirm-Solutions/dreamy and pass --reference-src PATH")
        return
    reference = load_reference(args.reference_src)
    started = time.perf_counter()
    loaded = load(args.model, device=args.device)
    rows = [row for seed in args.seeds for row in measure(loaded, reference, EPOConfig.build(config, seed=seed), args.neurons)]
    tables = {column: over_seeds(rows, column) for column in COLUMNS}
    speed = {"ours": spread([r["ours_s_per_iter"] for r in rows]), "reference": spread([r["reference_s_per_iter"] for r in rows])}
    speed["ratio"] = speed["ours"]["mean"] / speed["reference"]["mean"]
    seeds = ",".join(map(str, args.seeds))
    for column, table in tables.items():
        common.print_table(table, title=f"per neuron over seeds {seeds}: ours vs {column}")
    common.print_table(headline(tables), title=f"neurons where ours >= the reference (means over seeds {seeds}), per cut-off")
    print(f"\ns/iter: ours {speed['ours']['mean']:.3f} ({speed['ours']['min..max']}), reference "
          f"{speed['reference']['mean']:.3f} ({speed['reference']['min..max']}), ratio {speed['ratio']:.2f}")
    settings = {"model": args.model, "device": args.device, "neurons": args.neurons, "seeds": args.seeds,
                "epo": {k: v for k, v in config.to_dict().items() if k != "seed"}, "reference_src": str(args.reference_src)}
    path = common.write_result("epo_vs_reference", {"headline": headline(tables), "over_seeds": tables, "s_per_iter": speed,
                                                    "rows": rows}, settings=settings, results_dir=args.results_dir,
                               device=args.device, started=started)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    sys.exit(main())
