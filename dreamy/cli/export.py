"""The `dream export` command: a prompt run's (or a `dream dashboard` folder's) features and neurons in another
tool's format.

    dream export --neuronpedia OUT RUN_DIR [--dataset NAME] [--windows N] [--window N] [--model-id ID]
        [--sae-set NAME] [--device D] [--seed N]

`--neuronpedia OUT` writes the JSON Neuronpedia imports (`dreamy.sae.neuronpedia`): one folder per source (an SAE,
or one site's neurons) under OUT. The statistics (density, histograms, correlations) are computed on `--windows`
random windows of `--dataset` (default: the data set of the run's maxima, with their window length); without
one, on the run's maxima windows. A `dream dashboard` folder exports the values its scan recorded (density,
histogram, examples; its dead features in skipped_indexes.json; `sae.neuronpedia.dashboard_sources`). Everything knowable before the model loads is checked first (one line, exit 2):
a RUN_DIR a run is still writing (its lock held) is unfinished, and OUT must be new, empty or an earlier export
of the same run (replaced whole; the user's files or another run's export are refused). The run folder's lock is
held while it is read, and OUT's while it is written.

Example:
    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="dream"); _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["export", "--neuronpedia", "np-out", "run-dir"])
    >>> args.neuronpedia, args.run_dir, args.windows, args.window
    ('np-out', 'run-dir', 256, None)
"""

from __future__ import annotations

import argparse
import re
import sys
from contextlib import ExitStack
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
    cmd.add_argument("run_dir", metavar="RUN_DIR", help="a `dream prompt` or `dream dashboard` output folder (its results.json)")
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


_MAXIMA_NAME = re.compile(r"(?P<corpus>.+?)(?:\[:\d+w\])?@(?P<window>\d+)tok(?:\[[^\]]*\])?")
_FILE_CORPUS = re.compile(r"file:(?P<path>.+)#[0-9a-f]+")


def _maxima_dataset(records: list[dict[str, Any]]) -> tuple[str | None, int | None]:
    """The data set and window length of the run's maxima, as `open_text` opens it: `fortunes@64tok` ->
    ('fortunes', 64); a file's `file:PATH#HASH@64tok` (what `--maxima FILE` records) -> (PATH, 64).

    Example:
        >>> _maxima_dataset([{"maxima_dataset": "bible-kjv@64tok"}]), _maxima_dataset([{"maxima_dataset": "file:/a b.txt#0f3e9a12@32tok"}])
        (('bible-kjv', 64), ('/a b.txt', 32))
    """
    for record in records:
        name = record.get("maxima_dataset")
        if isinstance(name, str) and name:
            match = _MAXIMA_NAME.fullmatch(name)
            corpus, window = (match["corpus"], int(match["window"])) if match else (name, None)
            file = _FILE_CORPUS.fullmatch(corpus)
            return (file["path"] if file else corpus), window
    return None, None


def _has_maxima_windows(records: list[dict[str, Any]]) -> bool:
    """Whether some record holds dataset maxima windows (token ids) the statistics can be computed on."""
    return any(isinstance(m, dict) and m.get("token_ids") for r in records for m in (r.get("maxima") or []))


def _run_dir_problem(shown: str, error: Exception) -> str:
    """A RUN_DIR's results.json or record log that cannot be read, as one line with advice `dream export` can
    follow (it has no --overwrite)."""
    parts = [part for part in str(error).splitlines()[0].split("; ") if "--overwrite" not in part]
    advice = ("repair or delete that line of the record log" if "record log" in parts[0]
              else "give the folder of a `dream prompt` run")
    return f"RUN_DIR {shown!r}: {'; '.join(parts)}; {advice}"


def _check_export_folder(out: str, run: dict[str, Any]) -> None:
    """Refuse (`UsageError`) an `--neuronpedia` folder that cannot be written, holds the user's files or another
    run's export (an earlier export of this run is replaced)."""
    from dreamy.core.folders import OutDirError, check_out_folder
    from dreamy.sae.neuronpedia import ExportFolderError, earlier_export

    if not out.strip():
        raise UsageError("--neuronpedia is empty; name a folder to write the export into, e.g. --neuronpedia np-out")
    try:
        check_out_folder(out)
        earlier_export(out, run)
    except (OutDirError, ExportFolderError) as error:
        raise UsageError(f"--neuronpedia: {str(error).splitlines()[0]}") from error


def _hold(stack: ExitStack, folder: Path, shown: str, flag: str) -> None:
    """Hold `folder`'s lock until `stack` closes; a run (or export) holding it is one line. A folder this process
    cannot write into (a read-only run) cannot be locked, nor written by anyone else here: it is read as it is."""
    from dreamy.core.folders import OutDirError, folder_lock

    try:
        stack.enter_context(folder_lock(folder, "dream export"))
    except OutDirError as error:
        raise UsageError(f"{flag} {shown!r} is in use: {str(error).splitlines()[0]}") from error
    except OSError:
        if flag != "RUN_DIR":
            raise


def run(args: argparse.Namespace) -> int:
    """Run `dream export` with parsed `args`; returns the exit code (bad arguments raise `UsageError`)."""
    with ExitStack() as held:  # the locks taken (RUN_DIR's, then OUT's) are released however the export ends
        return _export(args, held)


def _export(args: argparse.Namespace, held: ExitStack) -> int:
    """`run` with `held` holding the locks it takes."""
    from dreamy.datasets import DatasetError, open_text
    from dreamy.core.folders import lock_holder
    from dreamy.models import check_device
    from dreamy.runs.store import OutDirError, ResultsStore

    check_seed(args.seed)
    run_dir = Path(args.run_dir)
    if not (run_dir / "results.json").is_file():
        raise UsageError(f"RUN_DIR {args.run_dir!r} holds no results.json; give a `dream prompt --out` folder")
    out = Path(args.neuronpedia)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--neuronpedia {args.neuronpedia!r} is a file; give a folder")
    holder = lock_holder(run_dir)
    if holder is not None:
        raise UsageError(f"RUN_DIR {args.run_dir!r} is unfinished: a run is still writing it ({holder}); export it "
                         "once that run has ended")
    _hold(held, run_dir, args.run_dir, "RUN_DIR")  # no run starts writing it while it is read
    try:
        store = ResultsStore(run_dir)
    except OutDirError as error:
        raise UsageError(_run_dir_problem(args.run_dir, error)) from error
    run_info = store.run or {}
    if run_info.get("kind") == "dashboard":
        return _export_dashboard(args, held, store, {"run_dir": str(run_dir), **run_info})
    if run_info.get("kind") not in (None, "prompt") or any(r.get("kind") == "image" for r in store.records):
        raise UsageError(f"{args.run_dir} is an image run; Neuronpedia export reads prompt runs (features and neurons of "
                         "language models)")
    model_name = run_info.get("model") or next((r.get("model") for r in store.records if r.get("model")), None)
    if not model_name:
        raise UsageError(f"{run_dir / 'results.json'} names no model; it was not written by `dream prompt`")
    dataset, window = _maxima_dataset(store.records)
    shown = "--dataset" if args.dataset else f"the run's maxima data set {dataset!r} (--dataset to give another)"
    if not args.dataset and dataset is not None and dataset not in ("fortunes", "bible-kjv", "bible") \
            and not Path(dataset).expanduser().exists():
        raise UsageError(f"the run's maxima were found in {dataset!r}, which no longer exists; give --dataset "
                         "(fortunes, bible-kjv or a text file) for the statistics")
    dataset = args.dataset or dataset
    window = args.window or window or 64
    if dataset is not None:
        try:
            open_text(dataset, max_words=1)
        except DatasetError as error:
            raise UsageError(f"{shown}: {str(error).splitlines()[0]}") from error
    elif not _has_maxima_windows(store.records):
        raise UsageError(f"{args.run_dir} holds no dataset maxima to compute the statistics on; give --dataset "
                         "(fortunes, bible-kjv or a text file), or rerun with --maxima")
    try:
        device = check_device(args.device)
    except ValueError as error:
        raise UsageError(f"--device: {error}") from error
    run = {"run_dir": str(run_dir), **run_info}
    _check_export_folder(args.neuronpedia, run)
    from dreamy.models import load
    from dreamy.sae.neuronpedia import neuronpedia_sources, write_neuronpedia

    loaded = load(model_name, device)
    context = getattr(getattr(loaded.model, "config", None), "max_position_embeddings", None)
    if dataset is not None and isinstance(context, int) and window + 1 > context:
        raise UsageError(f"--window {window} tokens (and the start token) is longer than the {context} positions "
                         f"{model_name} was made for; lower --window")
    sources, skipped = neuronpedia_sources(loaded, store.records, model_id=args.model_id, sae_set=args.sae_set,
                                           corpus=dataset, n_windows=args.windows, window=window, seed=args.seed)
    _hold(held, out, args.neuronpedia, "--neuronpedia")  # one export at a time writes into OUT
    _check_export_folder(args.neuronpedia, run)  # again under the lock: another export may have written meanwhile
    try:
        folders = write_neuronpedia(out, sources, skipped, run=run)
    except OSError as error:
        print(f"dream: error: cannot write the export into --neuronpedia {args.neuronpedia} "
              f"({error.strerror or error})", file=sys.stderr)
        return 1
    n_features = sum(len(s.features) for s in sources)
    print(f"{n_features} feature(s) of {len(sources)} source(s) written for Neuronpedia: "
          + (", ".join(str(f) for f in folders) or "nothing"))
    for item in skipped:
        print(f"not exported: {item['target']}: {item['reason']}")
    return 0 if sources else 1


def _export_dashboard(args: argparse.Namespace, held: ExitStack, store: Any, run: dict[str, Any]) -> int:
    """`dream export` of a `dream dashboard` folder: its records' own statistics and examples (no corpus read)."""
    from dreamy.models import check_device, load
    from dreamy.sae.neuronpedia import dashboard_sources, write_neuronpedia

    try:
        device = check_device(args.device)
    except ValueError as error:
        raise UsageError(f"--device: {error}") from error
    _check_export_folder(args.neuronpedia, run)
    loaded = load(run["model"], device)
    sources, skipped = dashboard_sources(loaded, store.records, model_id=args.model_id, sae_set=args.sae_set)
    _hold(held, Path(args.neuronpedia), args.neuronpedia, "--neuronpedia")
    _check_export_folder(args.neuronpedia, run)
    try:
        folders = write_neuronpedia(args.neuronpedia, sources, skipped, run=run)
    except OSError as error:
        print(f"dream: error: cannot write the export into --neuronpedia {args.neuronpedia} "
              f"({error.strerror or error})", file=sys.stderr)
        return 1
    n_features = sum(len(s.features) for s in sources)
    n_dead = sum(len(s.skipped_indexes) for s in sources)
    print(f"{n_features} feature(s) and {n_dead} dead one(s) (skipped_indexes.json) of {len(sources)} source(s) "
          "written for Neuronpedia: " + (", ".join(str(f) for f in folders) or "nothing"))
    for item in skipped:
        print(f"not exported: {item['target']}: {item['reason']}")
    return 0 if sources else 1
