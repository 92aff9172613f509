"""Dream many targets: packed into shared batches on one machine, or sharded over a Ray cluster.

Targets are cut into batches of `batch_targets`; the targets of a batch share ONE batched optimization
(images: one row per target; prompts: EPO or GCG in lockstep, one gradient pass and one scoring call per
iteration for all of them). Batch k always holds the same targets and uses seed `config.seed + k`, so a local
run and a Ray run of the same list give the same results. Each finished batch is written at once (PNGs, then
its records, durably: `store.ResultsStore` appends them to the folder's record log, folded into
`out_dir/results.json` as the run goes and at its end), so an interrupted run keeps every finished target and
`resume=True` skips them; the gallery follows, rewritten as often as its cost allows and at the end. With Ray, each worker loads the model once; a worker that dies
loses only the batch it was running, which a resumed run completes.

A run is three steps, each check made once: `claim` (before the model loads: a seeded search's corpus, the
output folder taken, `store.run_lock`, and checked under its lock), `prepare` (the model's kind, every target,
`plan.unusable_targets`, the memory, the pack: a `plan.PreparedRun`) and `execute` (the dreaming);
`dream_targets` is `execute(prepare(...))`, its settings a `RunOptions`. A target that cannot be scored is
recorded with its error at once and never dreamed. results.json records the run (model, kind, settings,
seed); resuming it with anything else is refused (`store.OutDirError`). One run writes into a folder at a time. `batch_targets="auto"` sizes the batches to the device from a measured
per-target footprint (`runs.sizing.auto_pack`); a batch that runs out of memory is dreamed in halves and later
batches are cut to the size that fit (`batch.PackLimit`), so no target is lost to it. Ctrl-C or SIGTERM stops the run: finished batches are kept, the
interrupted one is not recorded.

Example:
    >>> import tempfile
    >>> from dreamy.models import load
    >>> from dreamy.vision import DreamConfig
    >>> records = dream_targets(load("tiny:cnn"), ["head:1", "head:2"], DreamConfig(steps=2), out_dir=tempfile.mkdtemp(),
    ...                         progress=False)
    >>> sorted(r["target"] for r in records.to_records())
    ['head:1', 'head:2']
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

from dreamy.core import stepping
from dreamy.core.config import Config
from dreamy.core.files import write_atomic
from dreamy.models import LoadedModel
from dreamy.report.page import gallery_title, write_index
from dreamy.runs import batch
from dreamy.language.proposals import SEEDED_INITS
from dreamy.runs.batch import BatchOutput, PackLimit, error_record
from dreamy.maxima.matched import matched_windows
from dreamy.runs.options import RunOptions, run_options
from dreamy.runs.plan import (Claim, PreparedRun, batch_config, check_image_memory, check_model, plan_batches,
                              unusable_targets)
from dreamy.runs.sizing import PROBE_PACK, PackChoice, auto_pack
from dreamy.runs.store import OutDirError, ResultsStore, clear_outputs, prepare_out_dir, run_info_of, run_lock
from dreamy.targets import expand


class RunRecords(list):
    """The records of a run, one per target (finished, failed or unusable), in the order they were written.

    Example:
        >>> RunRecords([{"target": "a:1"}]).to_records()
        [{'target': 'a:1'}]
    """

    def to_records(self) -> list[dict[str, Any]]:
        """The records themselves (every method's results give records the same way)."""
        return list(self)


log = logging.getLogger(__name__)

GALLERY_PAUSE = 10  # after a gallery rewrite that took t seconds, the next waits >= 10 t: <= ~9% of a run's time


class _Writer:
    """Writes finished batches into the output folder: PNGs first, then the records (one appended line, see
    `store.ResultsStore`), then the gallery, which is rewritten after a batch only once a pause of
    `GALLERY_PAUSE` times its last rewrite's duration has passed (a big run's gallery takes seconds), and always
    at the end (`close`)."""

    def __init__(self, store: ResultsStore | None, title: str) -> None:
        self.store = store
        self.out_dir = store.directory if store is not None else None
        if self.store is not None and self.store.logged:
            self.store.compact()  # a resumed run starts from one results.json
        self.title = title
        self.records = RunRecords()
        self._gallery_due = 0.0
        self._gallery_stale = False

    def write(self, output: BatchOutput) -> None:
        self.records.extend(output.records)
        if self.out_dir is None or not output.records:
            return
        for name, data in output.files.items():
            write_atomic(self.out_dir / name, data)
        self.store.add_many(output.records)
        self._gallery_stale = True
        if time.monotonic() >= self._gallery_due:
            self._write_gallery()

    def _write_gallery(self) -> None:
        started = time.monotonic()
        write_index(self.out_dir, self.store.records, self.title)
        self._gallery_stale = False
        self._gallery_due = time.monotonic() + GALLERY_PAUSE * (time.monotonic() - started)

    def close(self) -> None:
        """The gallery and results.json up to date with every record written (also after an interrupt)."""
        if self.store is None:
            return
        if self._gallery_stale:
            self._write_gallery()
        if self.store.logged:
            self.store.compact()


def claim(model: str, config: Config, options: RunOptions) -> Claim:
    """Everything a run of `config` on model `model` (its name) checks before the model is loaded: a prompt
    search seeded from dataset windows (`init` "maxima" or "mixed") needs a corpus (`options.maxima`), and the
    output folder is taken (`store.run_lock`, held by the claim) and checked under its lock
    (`store.prepare_out_dir`: the resume/overwrite rules; a folder the lock cannot make or write in is refused
    with their reason). Refused: `ValueError` (`store.OutDirError` for the
    folder). Give the claim to `prepare`, which then checks none of it again; `with claim(...)` holds the folder
    until the block ends (e.g. for passes after the run), else `execute` releases it when the run ends.

    Example:
        >>> import tempfile
        >>> from dreamy.vision import DreamConfig
        >>> with claim("tiny:cnn", DreamConfig(), RunOptions(out_dir=tempfile.mkdtemp())) as claimed:
        ...     (claimed.folder / ".dreamy.lock").exists()
        True
    """
    if getattr(config, "init", None) in SEEDED_INITS and options.maxima is None:
        raise ValueError(f"init={config.init!r} starts from dataset windows: give a corpus, e.g. maxima='fortunes' "
                         "(--maxima fortunes)")
    taken = Claim(model, config, options, run_info_of(model, config, describe=options.describe))
    if options.out_dir is None:
        return taken
    try:
        taken.folder = taken.lock.enter_context(run_lock(options.out_dir))
    except OSError as error:  # the folder cannot be made or written: its rules say why, in one line
        prepare_out_dir(options.out_dir, taken.run, resume=options.resume, overwrite=options.overwrite)
        raise OutDirError(f"output folder {options.out_dir} cannot be used: {error}") from error
    try:
        prepare_out_dir(options.out_dir, taken.run, resume=options.resume, overwrite=options.overwrite)
    except BaseException:
        taken.release()
        raise
    return taken


def prepare(loaded: LoadedModel, specs: Sequence[str], config: Config, options: RunOptions,
            claimed: Claim | None = None) -> PreparedRun:
    """Check a run of `config` over `specs` on `loaded` once, up front, and plan it: the claim (`claim`, made
    here unless given: seeded init's corpus, the folder taken and checked), the model's kind and image size
    (`plan.check_model`), the targets a resumed run finished, every other target (`plan.unusable_targets`:
    the unusable ones are kept with their errors, recorded and never dreamed), the pack (`batch_targets`; "auto"
    measures it, `sizing.auto_pack`, on the first usable targets) and an image pack's memory
    (`plan.check_image_memory`). Refused: `ValueError`, with the folder let go. `execute` dreams the result.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.vision import DreamConfig
        >>> run = prepare(load("tiny:cnn"), ["head:0-2", "head:99"], DreamConfig(steps=2), RunOptions(batch_targets=2))
        >>> run.planned, [spec for spec, _ in run.unusable]
        ([['head:0', 'head:1'], ['head:2', 'head:99']], ['head:99'])
    """
    if claimed is None:
        claimed = claim(loaded.name, config, options)
    elif (claimed.model, claimed.config, claimed.options) != (loaded.name, config, options):
        raise ValueError(f"the claim was made for another run (model {claimed.model!r}, {claimed.config!r}, "
                         f"{claimed.options!r}); claim this run's model, config and options")
    try:
        return _prepared(loaded, list(dict.fromkeys(str(t) for spec in specs for t in expand(spec))), claimed)
    except BaseException:
        if not claimed.held:
            claimed.release()
        raise


def _prepared(loaded: LoadedModel, expanded: list[str], claimed: Claim) -> PreparedRun:
    """`prepare` with the claim made: the checks on the loaded model and the plan."""
    config, options = claimed.config, claimed.options
    check_model(loaded, config)
    store = None
    if claimed.folder is not None and not options.overwrite:
        store = ResultsStore(claimed.folder, claimed.run)
    done = store.done() if store is not None and options.resume else set()
    if options.batch_targets != "auto":
        check_image_memory(loaded, config, min(options.batch_targets, len(expanded)))
    unusable = unusable_targets(loaded, [spec for spec in expanded if spec not in done], config, model_checked=True)
    choice, pack = None, options.batch_targets
    if pack == "auto":
        bad = {spec for spec, _ in unusable}
        choice = _auto_pack(loaded, expanded, [spec for spec in expanded[:4 * PROBE_PACK] if spec not in bad], config)
        pack = choice.pack
        log.info("%s", choice.summary())
    return PreparedRun(loaded, claimed, plan_batches(expanded, pack), done, unusable, choice, store)


def _auto_pack(loaded: LoadedModel, expanded: list[str], probe: list[str], config: Config) -> PackChoice:
    """The `sizing.PackChoice` of a run over `expanded` targets, measured on `probe` (its first usable targets;
    none usable packs 1: the run dreams nothing)."""
    if not probe:
        return PackChoice(1, 0, 0, None, "nothing (no usable target)")
    try:
        choice = auto_pack(loaded, probe, config)
    except ValueError as error:
        raise ValueError(f"batch_targets='auto' (--batch-targets auto): {error}") from error
    return PackChoice(max(1, min(choice.pack, len(expanded))), choice.per_target, choice.fixed, choice.free, choice.how)


def execute(prepared: PreparedRun) -> RunRecords:
    """Dream a prepared run (`prepare`), here or on Ray, and return its records: an `overwrite` first clears the
    old run's outputs (`store.clear_outputs`), the unusable targets are recorded with their errors, a seeded
    prompt search finds its matched-length windows (one corpus pass for every target, cached), then each batch
    is dreamed and written as it finishes (batch k with seed `config.seed + k`). The folder is let go when the
    run ends (also on an error), unless the claim is held in a `with` block. A prepared run executes once.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.vision import DreamConfig
        >>> run = prepare(load("tiny:cnn"), ["head:1"], DreamConfig(steps=2), RunOptions(progress=False))
        >>> [r["target"] for r in execute(run)]
        ['head:1']
    """
    if prepared.executed:
        raise ValueError("this prepared run has run already; prepare the run again (prepare(...)) to rerun it")
    prepared.executed = True
    try:
        folder, options = prepared.claim.folder, prepared.options
        if folder is not None and options.overwrite:
            clear_outputs(folder)
        store = prepared.store or (ResultsStore(folder, prepared.claim.run) if folder is not None else None)
        writer = _Writer(store, gallery_title(prepared.config.kind, prepared.loaded.name))
        try:
            _dream(prepared, writer)
        except BaseException:  # an interrupt too: the gallery and results.json still show every finished batch
            try:
                writer.close()
            except Exception as error:  # never hide why the run stopped; the record log keeps every record
                log.warning("could not bring the gallery and results.json up to date: %s: %s", type(error).__name__,
                            error)
            raise
        writer.close()
        return writer.records
    finally:
        if not prepared.claim.held:
            prepared.claim.release()


def dream_targets(loaded: LoadedModel, specs: Sequence[str], config: Config, **options: Any) -> RunRecords:
    """Dream every target of `specs` on `loaded` as `config` says, locally or over Ray; returns the records:
    `execute(prepare(loaded, specs, config, run_options(**options)))`.

    The config's type says what is dreamed: a `DreamConfig` images, an `EPOConfig` or `GCGConfig` prompts.
    `options` are `RunOptions` fields by name (`out_dir`, `resume`, `overwrite`, `batch_targets`, `describe`,
    `use_ray`, `ray_address`, `workers`, `progress`, `on_batch`), and `maxima` a corpus with `maxima_scan` the
    `text_maxima` settings of its scan (see `options.run_options`). With `use_ray` (or a `ray_address`) batches
    are sharded over `workers` Ray actors that each load the model by name (by default one per GPU of the
    cluster on a CUDA device, each asking Ray for one GPU, else 2) (`ray.init()` starts a local cluster when no
    address is given). `on_batch(runner, k)` is called after batch k is written (for tests and monitoring). A
    non-empty `out_dir` needs `resume` (same run only) or `overwrite`. `describe=False` skips the output-side
    descriptions of prompt records. A prompt config whose `init` is "maxima" or "mixed" starts each target's
    search from its matched-length windows of corpus `maxima` (found first, in one pass for every target, and
    cached). `batch_targets="auto"` packs as many targets as the device's free memory holds at the footprint
    measured on one step of small packs (`runs.sizing.auto_pack`; the choice is logged and shown on the progress
    bar); each record's `"pack"` says how many targets its optimization packed.
    """
    return execute(prepare(loaded, specs, config, run_options(**options)))


def _dream(prepared: PreparedRun, writer: _Writer) -> None:
    """`execute`'s dreaming, its writer open: the unusable targets' records, the seeded starts, the batches."""
    loaded, config, options = prepared.loaded, prepared.config, prepared.options
    writer.write(BatchOutput([error_record(loaded, config, spec, error) for spec, error in prepared.unusable]))
    todo = prepared.todo()
    starts = None
    if getattr(config, "init", None) in SEEDED_INITS and todo:
        starts = matched_windows(loaded, [s for _, part in todo for s in part], config, options.maxima.corpus,
                                 progress=options.progress, **options.maxima.scan())
    if options.on_ray:
        from dreamy.runs.on_ray import run_on_ray

        run_on_ray(prepared, todo, writer, starts)
        return
    limit = PackLimit()  # lowered by a batch that runs out of memory, for the batches after it
    with stepping.progress(len(todo), f"{config.kind} batches{prepared.shown}", enabled=options.progress) as bar:
        for k, part in todo:
            writer.write(batch.dream_batch(loaded, part, batch_config(config, k), progress=options.progress,
                                           describe=options.describe_now, starts=starts, limit=limit,
                                           model_checked=True))
            if options.on_batch:
                options.on_batch(None, k)
            bar.update(1)


__all__ = ["RunRecords", "claim", "dream_targets", "execute", "prepare"]
