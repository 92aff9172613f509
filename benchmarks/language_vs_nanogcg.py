"""nanoGCG against dreamy's GCG and EPO, side by side: same model, same prompt, same target, same budget.

The task is nanoGCG's own: make the chat model answer with a chosen token (default "Paris") right
after the assistant header, by optimizing an `n_tokens` span in the user message. nanoGCG minimizes
the cross-entropy of that token; dreamy maximizes `logprobs:ID` at the last position, the same number
with the opposite sign. Every method starts from nanoGCG's default "x x x ..." string and gets the
same number of iterations, candidates per iteration and top-k; EPO spends its candidates over a
population (population x children = the same candidates per iteration).

Every final prompt is re-scored by one yardstick (dreamy's scorer on the exact chat token sequence):
target log-probability, whether the token becomes the top-1 prediction, and the prompt's own
cross-entropy (fluency). "Fluent" is a cross-entropy at or below the median of random corpus windows
of the same length (`--corpus`, default Debian fortunes); for each method the table gives its best
log-probability among fluent prompts it visited (GCG and nanoGCG: the best fluent prompt on their
path; EPO: its frontier).

nanoGCG defect worked around here: it deletes every occurrence of the BOS string from the chat
template (`str.replace`, not a prefix strip). SmolLM2's BOS is `<|im_start|>`, so nanoGCG would
optimize against a template with its chat markup removed; it is given a tokenizer copy whose BOS
string is another token, so that both tools see the identical token sequence. Its prefix KV cache
indexes the cache as a list (`past_key_values[i]`), which transformers 5's `DynamicCache` no longer
allows; it runs with `use_prefix_cache=False` (the JSON records this), recomputing the fixed chat
prefix for every candidate, as it does on any model whose cache it cannot index.

    python -m benchmarks.language_vs_nanogcg                 # quick: 16 iterations, 128 candidates, 16 tokens
    python -m benchmarks.language_vs_nanogcg --full          # 100 iterations, 256 candidates, 20 tokens
    python -m benchmarks.language_vs_nanogcg --model tiny:lm --iters 2 --candidates 16   # smoke run
"""

from __future__ import annotations

import copy
import logging
import os
import time
from typing import Any

import torch

from benchmarks import common
from dreamy.language import epo, gcg
from dreamy.language.search import SearchSetup
from dreamy.models import LoadedModel, load

OPTIM_MARK = "{optim_str}"
# fluency_weight_range: the range these figures were measured at (EPOConfig's default before (0.1, 30))
QUICK = {"iters": 16, "candidates": 128, "n_tokens": 16, "topk": 64, "population": 4, "corpus_windows": 64,
         "fluency_weight_range": (0.3, 30.0)}
FULL = {"iters": 100, "candidates": 256, "n_tokens": 20, "topk": 128, "population": 4, "corpus_windows": 256,
        "fluency_weight_range": (0.3, 30.0)}


def chat_layout(tokenizer: Any, message: str) -> tuple[str, str]:
    """(prefix, suffix) text around the optimized span in the chat template, BOS string removed from the front.

    dreamy's layout puts the BOS token back in front, so the token sequence is the template's own.
    """
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True)
    else:
        text = message
    before, after = text.split(OPTIM_MARK)
    bos = tokenizer.bos_token
    if bos and before.startswith(bos):
        before = before[len(bos):]
    return before, after


def target_token(tokenizer: Any, word: str) -> int:
    """The single token id of `word`; a clear error when it splits into several."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise SystemExit(f"target word {word!r} is {len(ids)} tokens {ids}; pick a word that is one token (--word)")
    return ids[0]


def nanogcg_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer copy nanoGCG cannot damage: its BOS string is changed so the template keeps its markup.

    With no chat template the copy gets a template that writes the BOS string then the message, so that
    nanoGCG's context starts with the same BOS token dreamy's layout uses.
    """
    patched = copy.deepcopy(tokenizer)
    bos = tokenizer.bos_token or tokenizer.eos_token
    if not tokenizer.chat_template:
        patched.chat_template = bos + "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    if patched.bos_token is not None:
        other = tokenizer.eos_token if tokenizer.eos_token != bos else tokenizer.unk_token or tokenizer.pad_token
        patched.bos_token = other
    return patched


def best_fluent(rows: list[dict[str, Any]], limit: float) -> float | None:
    """Highest activation among history rows with cross-entropy <= limit."""
    eligible = [r["activation"] for r in rows if r["xentropy"] <= limit]
    return max(eligible, default=None)


def rescore(setup: SearchSetup, text: str, token_id: int) -> dict[str, Any]:
    """Log-probability, top-1 and span cross-entropy of a prompt text under dreamy's scorer."""
    ids = setup.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != setup.layout.n_tokens:
        return {"logprob": None, "top1": None, "xentropy": None, "note": f"re-encodes to {len(ids)} tokens"}
    span = torch.tensor([ids], device=setup.layout.prefix.device)
    scores = setup.score(span)
    with torch.no_grad():
        logits = setup.model(input_ids=setup.layout.full(span)).logits[0, -1]
    return {"logprob": float(scores.activation[0]), "top1": int(logits.argmax()) == token_id,
            "xentropy": float(scores.xentropy[0])}


def _prefix_cache_works() -> bool:
    """nanoGCG's prefix cache needs a subscriptable cache (transformers < 5)."""
    from transformers import DynamicCache

    return hasattr(DynamicCache, "__getitem__")


def run_nanogcg(loaded: LoadedModel, message: str, word: str, settings: dict[str, Any], init: str, seed: int) -> dict[str, Any]:
    import nanogcg

    logging.getLogger("nanogcg").setLevel(logging.WARNING)
    config = nanogcg.GCGConfig(num_steps=settings["iters"], optim_str_init=init, search_width=settings["candidates"],
                               topk=settings["topk"], seed=seed, verbosity="WARNING", allow_non_ascii=False,
                               use_prefix_cache=_prefix_cache_works())
    tokenizer = nanogcg_tokenizer(loaded.tokenizer)
    start = time.perf_counter()
    result = nanogcg.run(loaded.model, tokenizer, message, word, config)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "best_string": result.best_string, "strings": result.strings,
            "use_prefix_cache": config.use_prefix_cache}


def measure(loaded: LoadedModel, settings: dict[str, Any], *, word: str, corpus: str, seed: int) -> dict[str, Any]:
    """Run the three methods and score them by one yardstick."""
    from dreamy.maxima.text import corpus_xentropy

    tokenizer = loaded.tokenizer
    token_id = target_token(tokenizer, word)
    message = f"What is the capital of France? {OPTIM_MARK}" if loaded.name.startswith("bundled:") else OPTIM_MARK
    prefix, suffix = chat_layout(tokenizer, message)
    target = f"logprobs:{token_id}"
    iters, candidates = settings["iters"], settings["candidates"]
    init = " ".join(["x"] * settings["n_tokens"])  # nanoGCG's default initial string
    n_tokens = len(tokenizer(init, add_special_tokens=False)["input_ids"])  # the span nanoGCG will optimize
    setup = SearchSetup.build(loaded, target, n_tokens=n_tokens, prefix=prefix, suffix=suffix)
    fluent = corpus_xentropy(loaded, corpus, window=n_tokens, n_windows=settings["corpus_windows"], seed=seed)["median"]
    rows: list[dict[str, Any]] = []

    nano = run_nanogcg(loaded, message, word, settings, init, seed)
    nano_path = [rescore(setup, s, token_id) for s in nano["strings"]]
    final = rescore(setup, nano["best_string"], token_id)
    rows.append({"method": "nanoGCG", "s/iter": nano["seconds"] / iters, "logprob": final["logprob"], "top-1": final["top1"],
                 "xent": final["xentropy"], "best fluent logprob": best_fluent(
                     [{"activation": p["logprob"], "xentropy": p["xentropy"]} for p in nano_path if p["logprob"] is not None], fluent),
                 "prompt": nano["best_string"], "use_prefix_cache": nano["use_prefix_cache"]})

    start = time.perf_counter()
    ours = gcg(loaded, target, n_tokens=n_tokens, iters=iters, children=candidates, topk=settings["topk"], prefix=prefix,
               suffix=suffix, init=init, seed=seed, progress=False)
    seconds = time.perf_counter() - start
    best = max(ours.history, key=lambda r: r["activation"])
    final = rescore(setup, best["text"], token_id)
    rows.append({"method": "dreamy GCG", "s/iter": seconds / iters, "logprob": best["activation"], "top-1": final["top1"],
                 "xent": best["xentropy"], "best fluent logprob": best_fluent(ours.history, fluent), "prompt": best["text"]})

    population = settings["population"]
    start = time.perf_counter()
    found = epo(loaded, target, n_tokens=n_tokens, iters=iters, population=population, children=candidates // population,
                topk=settings["topk"], fluency_weight_range=settings["fluency_weight_range"], prefix=prefix,
                suffix=suffix, init=init, seed=seed, progress=False, restart_every=max(iters // 3, 2))
    seconds = time.perf_counter() - start
    top = found.best
    final = rescore(setup, top.text, token_id) if top else {"top1": None}
    fluent_point = found.best_below(fluent)
    rows.append({"method": "dreamy EPO", "s/iter": seconds / iters, "logprob": top.activation if top else None,
                 "top-1": final["top1"], "xent": top.xentropy if top else None,
                 "best fluent logprob": fluent_point.activation if fluent_point else None, "prompt": top.text if top else None,
                 "frontier": [{"logprob": p.activation, "xent": p.xentropy, "text": p.text} for p in found.frontier]})
    return {"rows": rows, "target": target, "word": word, "message": message, "corpus_median_xent": fluent,
            "span_tokens": n_tokens}


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:smollm2-135m", help="language model (default %(default)s)")
    parser.add_argument("--word", default="Paris", help="the answer token to force (default %(default)s)")
    parser.add_argument("--corpus", default="fortunes", help="text for the fluency yardstick (default %(default)s)")
    parser.add_argument("--iters", type=int, help="iterations for every method")
    parser.add_argument("--candidates", type=int, help="candidates scored per iteration")
    parser.add_argument("--n-tokens", type=int, help="optimized span length")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        import nanogcg  # noqa: F401
    except ImportError:
        parser.error("nanoGCG is not installed: pip install --no-deps nanogcg")
    settings = dict(FULL if args.full else QUICK)
    for key in ("iters", "candidates", "n_tokens"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    started = time.perf_counter()
    loaded = load(args.model)
    figures = measure(loaded, settings, word=args.word, corpus=args.corpus, seed=args.seed)
    columns = ["method", "s/iter", "logprob", "top-1", "xent", "best fluent logprob", "prompt"]
    common.print_table(figures["rows"], columns,
                       title=f"{args.model}: force {args.word!r} ({figures['target']}), {settings['iters']} iterations x "
                             f"{settings['candidates']} candidates, {settings['n_tokens']} tokens; fluent = xent <= "
                             f"{figures['corpus_median_xent']:.2f} (median of {args.corpus} windows)")
    path = common.write_result("language_vs_nanogcg", figures, settings={"model": args.model, "seed": args.seed, **settings},
                               results_dir=args.results_dir, started=started)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
