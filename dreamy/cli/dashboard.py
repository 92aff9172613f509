"""The `dream dashboard` command: the dashboard of every target (e.g. every feature of an SAE) without dreaming.

    dream dashboard --target SPEC [...] --corpus PATH --out DIR [--model M] [--k 16] [--window 64]
        [--max-tokens N] [--text-column C] [--resume] [--overwrite] [--quiet]

Everything knowable before the model loads is checked first (one line, exit 2): the targets parse and expand
(`sae=DIR#all`: every feature of the SAE, `dreamy.targets.expand`), the corpus opens with its `--text-column`,
and the output folder passes the check `dream image|prompt` use (`runs.store.prepare_out_dir`: a non-empty one
needs `--resume`, for the same run only, or `--overwrite`). Then ONE scan of the corpus for all targets
(`maxima.text_maxima(rescore=False)`: the top-`k` tokens' scanned windows with every token's value in that
context, the density, the histogram of the firing values, quantile samples and random windows, in the same
pass), the logit tops of the SAE features (`sae.logit_tops`, one matmul per SAE), and one record per target
(kind "dashboard", `core.records.DashboardRecord`) in results.json with the gallery (index.html, the sortable
index, and one page per target under cards/: `report.dashboard_cards`). Dead targets
(never > 0 on the scanned tokens) are flagged in their records (`"dead": true`) and named at the end.

Resuming: `--resume` on a finished run skips it (nothing is scanned again). An interrupted scan keeps its state
in a checkpoint under `DIR/.scan/` (written every minute and on the interrupt) and `--resume` goes on from there;
the scan's finished entries are cached in the same folder.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="dream"); _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["dashboard", "--target", "sae=sae-l9#all", "--corpus", "fortunes", "--out", "d"])
    >>> args.k, args.window, args.model, args.text_column
    (16, 64, 'bundled:smollm2-135m', 'text')
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from dreamy.cli.arguments import UsageError, add_corpus_flags, check_resume_overwrite, positive
from dreamy.cli.flags import DEFAULT_MODELS

DEFAULT_MODEL = DEFAULT_MODELS["text"]  # a language model: what a dashboard scans text with
SCAN_FOLDER = ".scan"  # under --out: the scan's checkpoint and its cached entries
LOGIT_TOPS = 10  # promoted and suppressed tokens per SAE feature


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `dashboard` subcommand to `subparsers` (from `ArgumentParser.add_subparsers`); returns it.

    Example:
        >>> add_parser(argparse.ArgumentParser().add_subparsers()).prog.endswith("dashboard")
        True
    """
    cmd = subparsers.add_parser("dashboard", help="dashboards of many targets (every feature of an SAE) from one corpus scan")
    cmd.add_argument("--model", default=DEFAULT_MODEL, help="language model name (default: %(default)s)")
    cmd.add_argument("--target", action="append", required=True,
                     help="target spec; repeat for more; ranges (site:0-63, sae=DIR#0-31) and sae=DIR#all expand")
    cmd.add_argument("--corpus", required=True, help="text to scan: fortunes, bible-kjv, a file or folder, a datasets "
                                                     "folder, .jsonl/.parquet/.csv, hf:NAME[:SPLIT]")
    cmd.add_argument("--out", required=True, help="output folder for results.json and index.html")
    cmd.add_argument("--k", type=positive(int), default=16, help="top examples per target (default %(default)s)")
    cmd.add_argument("--window", type=positive(int), default=64, help="tokens per scanned window (default %(default)s)")
    cmd.add_argument("--device", default="cpu")
    cmd.add_argument("--resume", action="store_true", help="skip a finished run in --out, or go on with an interrupted scan")
    cmd.add_argument("--overwrite", action="store_true", help="replace the results of another run in --out")
    cmd.add_argument("--quiet", action="store_true", help="no progress bars")
    add_corpus_flags(cmd)
    return cmd


def _targets(args: argparse.Namespace) -> list[str]:
    """The canonical specs of every `--target`, ranges and `#all` expanded, duplicates dropped."""
    from dreamy.maxima.records import canonical_target
    from dreamy.targets import TargetError, expand

    specs: list[str] = []
    for spec in args.target:
        try:
            specs += [canonical_target(str(target)) for target in expand(spec)]
        except (TargetError, ValueError) as error:
            raise UsageError(f"--target {spec}: {str(error).splitlines()[0]}") from error
    return list(dict.fromkeys(specs))


def _check_arguments(args: argparse.Namespace) -> Any:
    """Everything known before the model loads; returns the device."""
    from dreamy.datasets import DatasetError, open_text
    from dreamy.models import ModelLoadError, check_device, kind_of

    check_resume_overwrite(args)
    kind = kind_of(args.model)
    if kind is not None and kind != "language":
        raise UsageError(f"--model {args.model} is a {kind} model; `dashboard` scans text with a language model "
                         f"(e.g. --model {DEFAULT_MODEL})")
    if args.window < 2:
        raise UsageError(f"--window must be >= 2 tokens, got {args.window}")
    try:
        device = check_device(args.device)
    except ModelLoadError as error:
        raise UsageError(f"--device: {error}") from error
    try:
        open_text(args.corpus, max_words=1, text_column=args.text_column)
    except DatasetError as error:
        raise UsageError(f"--corpus: {str(error).splitlines()[0]}") from error
    return device


def _check_targets(loaded: Any, specs: list[str], window: int) -> None:
    """Refuse (`UsageError`) the first target the model cannot score, checked on one forward of two windows."""
    import torch

    from dreamy.language.layout import make_layout
    from dreamy.targets import check_targets

    layout = make_layout(loaded.tokenizer, window, device=loaded.device)
    rows = layout.full(torch.zeros(2, window, dtype=torch.long, device=loaded.device))
    bad = check_targets(loaded.model, specs, input_ids=rows, sequence_reduce="pos=-1")  # an SAE is read once
    if bad:
        more = f" (and {len(bad) - 1} more bad target(s))" if len(bad) > 1 else ""
        raise UsageError(f"target {bad[0][0]}: {bad[0][1]}{more}")


def run_info_of(args: argparse.Namespace, specs: list[str]) -> dict[str, Any]:
    """The run a dashboard folder records: model, corpus and its column, token budget, k, window and targets.

    Example:
        >>> args = argparse.Namespace(model="tiny:lm", corpus="fortunes", text_column="text", max_tokens=None, k=4, window=8)
        >>> info = run_info_of(args, ["logits:1"])
        >>> info["kind"], info["settings"]["targets"]
        ('dashboard', ['logits:1'])
    """
    from dreamy.runs.store import run_info

    settings = {"corpus": args.corpus, "text_column": args.text_column, "max_tokens": args.max_tokens, "k": args.k,
                "window": args.window, "targets": specs}
    return run_info(args.model, "dashboard", settings, 0)


def _sae_feature(spec: str) -> tuple[str, int] | None:
    """`(SAE path, feature)` of a single-term SAE feature target, else None."""
    from dreamy.targets import SAEFeature, parse

    terms = parse(spec).terms
    if len(terms) == 1 and isinstance(terms[0].unit, SAEFeature) and terms[0].coef > 0:
        return terms[0].unit.path, terms[0].unit.index
    return None


def _logit_tops(loaded: Any, specs: list[str]) -> dict[str, dict[str, Any]]:
    """Each SAE feature target's logit tops (`{"logit_tops": ...}` or `{"logit_tops_error": ...}`), one call per SAE."""
    from dreamy.sae.logit_tops import logit_tops

    by_sae: dict[str, list[tuple[str, int]]] = {}
    for spec in specs:
        found = _sae_feature(spec)
        if found is not None:
            by_sae.setdefault(found[0], []).append((spec, found[1]))
    out: dict[str, dict[str, Any]] = {}
    for path, features in by_sae.items():
        try:
            tops = logit_tops(loaded, path, [f for _, f in features], k=LOGIT_TOPS)
        except ValueError as error:  # a transcoder, a decoder of another width, a file without W_dec
            out.update({spec: {"logit_tops_error": str(error).splitlines()[0]} for spec, _ in features})
            continue
        out.update({spec: {"logit_tops": top.to_record()} for (spec, _), top in zip(features, tops)})
    return out


def _example(example: Any) -> dict[str, Any]:
    """A scanned example as a record's dict: its tokens, ids and the value at each (`context_activations`), without
    the copies a scan example carries (its text, `token_activations`: the same values) that 4,096 features would
    repeat in every record."""
    item = asdict(example)
    for key in ("text", "token_activations", "xentropy"):
        item.pop(key, None)
    return item


def dashboard_records(loaded: Any, found: Any, specs: list[str]) -> list[dict[str, Any]]:
    """One "dashboard" record per target of `found` (`text_maxima(..., rescore=False)`), in the order of `specs`;
    a dead target's record keeps its statistics, not its examples (windows where it is 0 everywhere)."""
    tops = _logit_tops(loaded, specs)
    records = []
    for spec in specs:
        maxima = found[spec]
        tokens = dict(maxima.stats.get("tokens") or {})
        dead = tokens.get("fired", 1) == 0
        records.append({"kind": "dashboard", "target": spec, "model": loaded.name, "method": "scan",
                        "activation": maxima.best_activation,
                        "maxima": [] if dead else [_example(e) for e in maxima.examples],
                        "maxima_dataset": maxima.dataset,
                        "samples": [] if dead else [_example(e) for e in maxima.samples],
                        "density": tokens.get("density"), "statistics": tokens, "dead": dead,
                        "settings": {key: maxima.settings.get(key) for key in ("k", "window", "n_tokens")},
                        **tops.get(spec, {})})
    return records


def _clear_cards(out: Path, records: list[dict[str, Any]]) -> None:
    """Remove the card pages an earlier dashboard run in `out` wrote (its records name them), then their folder
    when that left it empty; the user's files stay."""
    from dreamy.report.dashboard_cards import CARDS_FOLDER, card_page

    for record in records:
        if record.get("kind") == "dashboard" and isinstance(record.get("target"), str):
            (out / card_page(record)).unlink(missing_ok=True)
    try:
        (out / CARDS_FOLDER).rmdir()
    except OSError:
        pass


def run(args: argparse.Namespace) -> int:
    """Run `dream dashboard` with parsed `args`; returns the exit code (bad arguments raise `UsageError`)."""
    from dreamy.report.dashboard_cards import write_dashboard_gallery
    from dreamy.runs.store import OutDirError, ResultsStore, clear_outputs, prepare_out_dir, run_lock

    device = _check_arguments(args)
    specs = _targets(args)
    out = Path(args.out)
    info = run_info_of(args, specs)
    try:
        prepare_out_dir(out, info, resume=args.resume, overwrite=args.overwrite)
    except OutDirError as error:
        raise UsageError(str(error)) from error
    if args.resume and out.is_dir() and (out / "results.json").exists():
        done = ResultsStore(out).done()
        if set(specs) <= done:
            print(f"dashboard: the run in {out} is finished ({len(specs)} target(s)); nothing to do; gallery: "
                  f"{out / 'index.html'}")
            return 0
    from dreamy.datasets import limit_tokens, open_text
    from dreamy.maxima.text import text_maxima
    from dreamy.models import load

    loaded = load(args.model, device)
    if loaded.tokenizer is None:
        raise UsageError(f"--model {args.model} has no tokenizer; `dashboard` needs a language model")
    _check_targets(loaded, specs, args.window)
    try:
        with run_lock(out, "dream dashboard"):
            if args.overwrite:
                _clear_cards(out, ResultsStore(out).records)
                clear_outputs(out)
                shutil.rmtree(out / SCAN_FOLDER, ignore_errors=True)
            store = ResultsStore(out, info)
            if not (out / "results.json").exists():
                store.compact()  # the run is named from the start: an interrupted scan resumes with --resume
            scan_cache = out / SCAN_FOLDER
            if args.resume and not args.quiet:
                checkpoints = list(scan_cache.rglob(".scan-*.pt")) if scan_cache.is_dir() else []
                print(f"dashboard: resuming the scan from its checkpoint {checkpoints[0]}" if checkpoints else
                      "dashboard: no scan checkpoint to resume from; scanning from the start", file=sys.stderr)
            corpus = (open_text(args.corpus, text_column=args.text_column) if args.max_tokens is None else
                      limit_tokens(args.corpus, loaded.tokenizer, args.max_tokens, text_column=args.text_column))
            found = text_maxima(loaded, specs, corpus, k=args.k, window=args.window, rescore=False, xent_windows=0,
                                cache_dir=scan_cache, progress=not args.quiet)
            records = dashboard_records(loaded, found, specs)
            store.add_many(records)
            store.compact()
            index = write_dashboard_gallery(out, store.records, f"dreamy dashboards: {loaded.name} on {corpus.name}")
    except OutDirError as error:
        raise UsageError(str(error)) from error
    dead = [r["target"] for r in records if r["dead"]]
    if dead:
        shown = ", ".join(dead[:8]) + (f" and {len(dead) - 8} more" if len(dead) > 8 else "")
        print(f"dashboard: {len(dead)} dead target(s) (never > 0 on {records[0]['statistics'].get('tokens', 0)} "
              f"tokens): {shown}", file=sys.stderr)
    print(f"{len(records)} dashboard(s), {len(dead)} dead; gallery: {index}")
    return 0
