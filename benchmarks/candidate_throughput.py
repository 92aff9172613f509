"""How fast is prompt-candidate scoring, against the machine's limit? Full forwards vs parent KV-cache reuse.

Prompt search spends nearly all its time scoring children that differ from their parent in one
position. For a batch of GCG-style children (one gradient-free random swap each, spread over the
span) this script times `score_sequences` four ways on the same ids and checks they agree:

- `naive`: full forwards with logits at every position (what nanoGCG and the EPO reference code do),
- `full`: full forwards, output layer only where the cross-entropy and the target need it,
- `kv packed`: on top of the parent's KV cache, the children's changed tokens side by side in one forward
  (the default, `dreamy.language.packed`),
- `kv grouped`: on top of the parent's KV cache, one forward per swap position.

For each it reports candidates/s, the FLOPs it actually ran (counted by torch), the model GFLOP/s
it reached against the measured fp32 matmul peak, and the "effective" GFLOP/s: the naive method's
FLOPs per candidate divided by its time (how fast a naive scorer would have to run to keep up).

    python -m benchmarks.candidate_throughput                # SmolLM2, 64 children, 16-token span, 32-token prefix
    python -m benchmarks.candidate_throughput --full         # 512 children, 24-token span
    python -m benchmarks.candidate_throughput --model tiny:lm --children 16   # smoke run
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from benchmarks import common
from dreamy.language.fluency import span_xentropy
from dreamy.language.states import SequenceScores
from dreamy.language.scoring import score_sequences
from dreamy.models import LoadedModel, load
from dreamy.targets import Probe

QUICK = {"children": 64, "span": 16, "prefix": 32, "suffix": 6, "repeats": 1}
FULL = {"children": 512, "span": 24, "prefix": 32, "suffix": 6, "repeats": 3}


def make_children(vocab: int, settings: dict[str, Any], seed: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """A random parent (prefix + span + suffix) and children with one random swap each inside the span."""
    gen = torch.Generator().manual_seed(seed)
    length = settings["prefix"] + settings["span"] + settings["suffix"]
    parent = torch.randint(0, vocab, (length,), generator=gen)
    start, end = settings["prefix"], settings["prefix"] + settings["span"]
    n = settings["children"]
    children = parent.repeat(n, 1)
    positions = start + torch.arange(n) % settings["span"]
    children[torch.arange(n), positions] = torch.randint(0, vocab, (n,), generator=gen)
    return parent, children, (start, end)


def naive_scores(probe: Probe, ids: torch.Tensor, span: tuple[int, int]) -> SequenceScores:
    """Full forwards with logits everywhere, the reference way."""
    result = probe(input_ids=ids, need_output=True)
    return SequenceScores(result.scores, span_xentropy(result.output.logits, ids, span))


def measure(loaded: LoadedModel, target: str, settings: dict[str, Any], peak: float, seed: int) -> list[dict[str, Any]]:
    model = loaded.model
    vocab = model.get_input_embeddings().weight.shape[0]
    parent, children, span = make_children(vocab, settings, seed)
    probe = Probe(model, [target], sequence_reduce="pos=-1")
    methods = {
        "naive": lambda: naive_scores(probe, children, span),
        "full": lambda: score_sequences(model, probe, children, xent_span=span),
        "kv packed": lambda: score_sequences(model, probe, children, xent_span=span, parent_ids=parent),
        "kv grouped": lambda: score_sequences(model, probe, children, xent_span=span, parent_ids=parent,
                                              scoring="grouped"),
    }
    reference = None
    rows = []
    with torch.no_grad():
        for name, fn in methods.items():
            flops = common.count_flops(fn)  # doubles as the warm-up run
            times = []
            for _ in range(settings["repeats"]):
                tick = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - tick)
            if reference is None:
                reference = out
            difference = max(float((out.activation - reference.activation).abs().max()),
                              float((out.xentropy - reference.xentropy).abs().max()))
            seconds = statistics.median(times)
            rows.append({"method": name, "children": len(children), "tokens": children.shape[1], "s": seconds,
                         "candidates/s": len(children) / seconds, "GFLOP": flops / 1e9, "GFLOP/s": flops / seconds / 1e9,
                         "% of peak": 100 * flops / seconds / 1e9 / peak, "max |diff|": difference})
    naive_flops = rows[0]["GFLOP"]
    for row in rows:
        row["effective GFLOP/s"] = naive_flops / row["s"]
        row["speed-up"] = rows[0]["s"] / row["s"]
    return rows


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:smollm2-135m", help="language model (default %(default)s)")
    parser.add_argument("--target", help="target spec (default: an MLP neuron at 45%% depth)")
    parser.add_argument("--children", type=int, help="candidates per batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = dict(FULL if args.full else QUICK)
    if args.children:
        settings["children"] = args.children
    started = time.perf_counter()
    loaded = load(args.model)
    target = args.target or common.mlp_neuron_targets(loaded.model, fractions=(0.45,))[0]
    peak = common.measure_matmul_peak((512, 1024, 2048), seconds=1.0)
    rows = measure(loaded, target, settings, peak["peak_gflops"], args.seed)
    peak = common.stable_peak(peak)
    for row in rows:
        row["% of peak"] = 100 * row["GFLOP/s"] / peak["peak_gflops"]
    common.print_table(rows, ["method", "children", "tokens", "s", "candidates/s", "GFLOP", "GFLOP/s", "% of peak",
                              "effective GFLOP/s", "speed-up", "max |diff|"],
                       title=f"{args.model}, target {target}: span {settings['span']} after a {settings['prefix']}-token prefix "
                             f"(fp32 matmul peak {peak['peak_gflops']:.1f} GFLOP/s)")
    path = common.write_result("candidate_throughput", {"matmul_peak": peak, "target": target, "rows": rows},
                               settings={"model": args.model, "seed": args.seed, **settings}, results_dir=args.results_dir,
                               started=started)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
