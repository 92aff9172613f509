"""The `dream export` command: a prompt run's features and neurons in another tool's format.

    dream export --neuronpedia OUT RUN_DIR [--dataset NAME] [--windows N] [--window N] [--model-id ID]
        [--sae-set NAME] [--device D] [--seed N]

`--neuronpedia OUT` writes the JSON Neuronpedia imports (`dreamy.sae.neuronpedia`): one folder per source (an SAE,
or one site's neurons) under OUT. The statistics (density, histograms, correlations) are computed on `--windows`
random windows of `--dataset` (default: the data set of the run's maxima, with their window length); without
one, on the run's maxima windows. Everything knowable before the model loads is checked first (one line, exit 2).

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="dream"); _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["export", "--neuronpedia", "np-out", "run-dir"])
    >>> args.neuronpedia, args.run_dir, args.windows, args.window
    ('np-out', 'run-dir', 256, None)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dreamy.cli.arguments import UsageError, check_seed, positive


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `export` subcommand to `subparsers` (from `ArgumentParser.add_subparsers`); returns it.

    Example:
        >>> add_parser(argparse.ArgumentParser().add_subparsers()).prog.endswith("export")
        True
    """
    cmd = subparsers.add_parser("export", help="export a prompt run's features and neurons (Neuronpedia JSON)")
    cmd.add_argument("run_dir", metavar="RUN_DIR", help="a `dream prompt` output folder (its results.json)")
    cmd.add_argument("--neuronpedia", required=True, metavar="OUT", help="write Neuronpedia's batch JSON files under OUT")
    cmd.add_argument("--dataset", default=None, help="text for the statistics: fortunes, bible-kjv or a file (default: "
                                                     "the run's --maxima data set)")
    cmd.add_argument("--windows", type=positive(int), default=256, help="random windows the statistics use (default %(default)s)")
    cmd.add_argument("--window", type=positive(int), default=None, help="tokens per window (default: the maxima's, else 64)")
    cmd.add_argument("--model-id", default=None, help="Neuronpedia model id (default: the SAE's neuronpedia_id, else the model's name)")
    cmd.add_argument("--sae-set", default=None, help="Neuronpedia SAE set name (default: the SAE's neuronpedia_id, its folder's "
                                                     "name, or the site's for neurons)")
    cmd.add_argument("--device", default="cpu")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the random windows (default %(default)s)")
    return cmd


def _maxima_dataset(records: list[dict[str, Any]]) -> tuple[str | None, int | None]:
    """The data set and window length of the run's maxima (`fortunes@64tok` -> ('fortunes', 64)).

    Example:
        >>> _maxima_dataset([{"maxima_dataset": "bible-kjv@64tok"}])
        ('bible-kjv', 64)
    """
    for record in records:
        name = record.get("maxima_dataset")
        if isinstance(name, str) and name:
            base, _, tail = name.rpartition("@")
            if base and tail.endswith("tok") and tail[:-3].isdigit():
                return base, int(tail[:-3])
            return name, None
    return None, None


def run(args: argparse.Namespace) -> int:
    """Run `dream export` with parsed `args`; returns the exit code (bad arguments raise `UsageError`)."""
    from dreamy.datasets import DatasetError, open_text
    from dreamy.models import check_device
    from dreamy.runs.store import OutDirError, ResultsStore

    check_seed(args.seed)
    run_dir = Path(args.run_dir)
    if not (run_dir / "results.json").is_file():
        raise UsageError(f"RUN_DIR {args.run_dir!r} holds no results.json; give a `dream prompt --out` folder")
    out = Path(args.neuronpedia)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--neuronpedia {args.neuronpedia!r} is a file; give a folder")
    try:
        store = ResultsStore(run_dir)
    except OutDirError as error:
        raise UsageError(str(error).splitlines()[0]) from error
    run_info = store.run or {}
    if run_info.get("kind") not in (None, "prompt") or any(r.get("kind") == "image" for r in store.records):
        raise UsageError(f"{args.run_dir} is an image run; Neuronpedia export reads prompt runs (features and neurons of "
                         "language models)")
    model_name = run_info.get("model") or next((r.get("model") for r in store.records if r.get("model")), None)
    if not model_name:
        raise UsageError(f"{run_dir / 'results.json'} names no model; it was not written by `dream prompt`")
    dataset, window = _maxima_dataset(store.records)
    dataset = args.dataset or dataset
    window = args.window or window or 64
    if dataset is not None:
        try:
            open_text(dataset, max_words=1)
        except DatasetError as error:
            raise UsageError(f"--dataset: {str(error).splitlines()[0]}") from error
    try:
        device = check_device(args.device)
    except ValueError as error:
        raise UsageError(f"--device: {error}") from error
    from dreamy.models import load
    from dreamy.sae.neuronpedia import neuronpedia_sources, write_neuronpedia

    loaded = load(model_name, device)
    sources, skipped = neuronpedia_sources(loaded, store.records, model_id=args.model_id, sae_set=args.sae_set,
                                           corpus=dataset, n_windows=args.windows, window=window, seed=args.seed)
    folders = write_neuronpedia(out, sources, skipped, run={"run_dir": str(run_dir), **run_info})
    n_features = sum(len(s.features) for s in sources)
    print(f"{n_features} feature(s) of {len(sources)} source(s) written for Neuronpedia: "
          + (", ".join(str(f) for f in folders) or "nothing"))
    for item in skipped:
        print(f"not exported: {item['target']}: {item['reason']}")
    return 0 if sources else 1
