"""Dream many targets: packed into shared batches on one machine, or sharded over a Ray cluster.

Targets are cut into batches of `batch_targets`; the targets of a batch share ONE batched optimization
(images: one row per target; prompts: EPO or GCG in lockstep, one gradient pass and one scoring call per
iteration for all of them). Batch k always holds the same targets and uses seed `config.seed + k`, so a local
run and a Ray run of the same list give the same results. Each finished batch is written at once (PNGs, then
its records, durably: `store.ResultsStore` appends them to the folder's record log, folded into
`out_dir/results.json` as the run goes and at its end), so an interrupted run keeps every finished target and
`resume=True` skips them; the gallery follows, rewritten as often as its cost allows and at the end. With Ray, each worker loads the model once; a worker that dies
loses only the batch it was running, which a resumed run completes.

Before any dreaming, every target is checked against the model (`plan.unusable_targets`): a target that
cannot be scored is recorded with its error at once and never dreamed. results.json records the run (model,
kind, settings, seed); resuming it with anything else is refused (`store.OutDirError`). One run writes into a
folder at a time (`store.run_lock`). `batch_targets="auto"` sizes the batches to the device from a measured
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
from pathlib import Path
from typing import Any, Callable, Sequence

from dreamy.core import stepping
from dreamy.core.config import Config
from dreamy.core.files import write_atomic
from dreamy.models import LoadedModel
from dreamy.report.page import gallery_title, write_index
from dreamy.runs import batch
from dreamy.language.proposals import SEEDED_INITS
from dreamy.runs.batch import BatchOutput, PackLimit, error_record
from dreamy.maxima.matched import matched_windows
from dreamy.runs.plan import batch_config, check_model, plan_batches, unusable_targets
from dreamy.runs.store import ResultsStore, clear_outputs, prepare_out_dir, run_info_of, run_lock


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

    def __init__(self, out_dir: str | Path | None, title: str, run: dict[str, Any]) -> None:
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.store = ResultsStore(self.out_dir, run) if self.out_dir is not None else None
        if self.store is not None and self.store.logged:
            self.store.compact()  # a resumed run starts from one results.json
        self.title = title
        self.records = RunRecords()
        self._gallery_due = 0.0
        self._gallery_stale = False

    def done(self) -> set[str]:
        return self.store.done() if self.store else set()

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


def dream_targets(loaded: LoadedModel, specs: Sequence[str], config: Config, *, out_dir: str | Path | None = None,
                  resume: bool = False, overwrite: bool = False, batch_targets: int | str = 8, describe: bool = True,
                  use_ray: bool = False, ray_address: str | None = None, workers: int | None = None, progress: bool = True,
                  on_batch: Callable[[Any, int], None] | None = None, maxima: Any = None,
                  maxima_scan: dict[str, Any] | None = None) -> RunRecords:
    """Dream every target of `specs` on `loaded` as `config` says, locally or over Ray; returns the records.

    The config's type says what is dreamed: a `DreamConfig` images, an `EPOConfig` or `GCGConfig` prompts.
    With `use_ray` (or a `ray_address`) batches are sharded over `workers` Ray actors that each load the model
    by name (by default one per GPU of the cluster on a CUDA device, each asking Ray for one GPU, else 2) (`ray.init()` starts a local cluster when no address is given). `on_batch(runner, k)` is called
    after batch k is written (for tests and monitoring). A non-empty `out_dir` needs `resume` (same run only)
    or `overwrite`. `describe=False` skips the output-side descriptions of prompt records. A prompt config whose
    `init` is "maxima" or "mixed" starts each target's search from its matched-length windows of corpus `maxima`
    (found first, in one pass for every target, and cached; `maxima_scan` goes to `text_maxima`).
    `batch_targets="auto"` packs as many targets as the device's free memory holds at the footprint measured on
    one step of small packs (`runs.sizing.auto_pack`; the choice is logged and shown on the progress bar); each
    record's `"pack"` says how many targets its optimization packed.
    """
    check_model(loaded, config)
    if getattr(config, "init", None) in SEEDED_INITS and maxima is None:
        raise ValueError(f"init={config.init!r} starts from dataset windows: give a corpus, e.g. maxima='fortunes' "
                         "(--maxima fortunes)")
    run = run_info_of(loaded.name, config, describe=describe)
    if out_dir is not None:
        prepare_out_dir(out_dir, run, resume=resume, overwrite=overwrite)
    shown = ""
    if batch_targets == "auto":
        choice = auto_batch_targets(loaded, specs, config)
        batch_targets, shown = choice.pack, f" ({choice.summary()})"
        log.info("%s", choice.summary())
    elif not isinstance(batch_targets, int):
        raise ValueError(f"batch_targets must be a number of targets or 'auto', got {batch_targets!r}")
    planned = plan_batches(specs, batch_targets)
    if out_dir is None:
        return _dream_planned(loaded, planned, config, run, None, resume, describe, use_ray, ray_address, workers,
                              progress, on_batch, maxima, maxima_scan, shown)
    with run_lock(out_dir):
        prepare_out_dir(out_dir, run, resume=resume, overwrite=overwrite)  # again under the lock: a run may have
        if overwrite:                                                     # finished in it meanwhile
            clear_outputs(out_dir)
        return _dream_planned(loaded, planned, config, run, out_dir, resume, describe, use_ray, ray_address, workers,
                              progress, on_batch, maxima, maxima_scan, shown)


def auto_batch_targets(loaded: LoadedModel, specs: Sequence[str], config: Config) -> Any:
    """The `sizing.PackChoice` for a run of `config` over `specs` on `loaded`, measured on its first usable
    targets (a run with none usable packs 1: it dreams nothing).

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.vision import DreamConfig
        >>> auto_batch_targets(load("tiny:cnn"), ["head:1", "head:99"], DreamConfig()).pack in (1, 2)
        True
    """
    from dreamy.runs.sizing import PROBE_PACK, PackChoice, auto_pack

    expanded = [spec for part in plan_batches(specs, 1) for spec in part]
    probe = expanded[:4 * PROBE_PACK]
    bad = {spec for spec, _ in unusable_targets(loaded, probe, config)}
    usable = [spec for spec in probe if spec not in bad]
    if not usable:
        return PackChoice(1, 0, 0, None, "nothing (no usable target)")
    choice = auto_pack(loaded, usable, config)
    return PackChoice(max(1, min(choice.pack, len(expanded))), choice.per_target, choice.fixed, choice.free, choice.how)


def _dream_planned(loaded: LoadedModel, planned: list[list[str]], config: Config, run: dict[str, Any],
                   out_dir: str | Path | None, resume: bool, describe: bool, use_ray: bool, ray_address: str | None,
                   workers: int | None, progress: bool, on_batch: Callable[[Any, int], None] | None, maxima: Any,
                   maxima_scan: dict[str, Any] | None, shown: str = "") -> RunRecords:
    """The checked, planned batches of `dream_targets`, dreamed and written (the folder already locked)."""
    writer = _Writer(out_dir, gallery_title(config.kind, loaded.name), run)
    try:
        records = _dream_written(loaded, planned, config, writer, resume, describe, use_ray, ray_address, workers,
                                 progress, on_batch, maxima, maxima_scan, shown)
    except BaseException:  # an interrupt too: the gallery and results.json still show every finished batch
        try:
            writer.close()
        except Exception as error:  # never hide why the run stopped; the record log keeps every record
            log.warning("could not bring the gallery and results.json up to date: %s: %s", type(error).__name__, error)
        raise
    writer.close()
    return records


def _dream_written(loaded: LoadedModel, planned: list[list[str]], config: Config, writer: _Writer, resume: bool,
                   describe: bool, use_ray: bool, ray_address: str | None, workers: int | None, progress: bool,
                   on_batch: Callable[[Any, int], None] | None, maxima: Any,
                   maxima_scan: dict[str, Any] | None, shown: str = "") -> RunRecords:
    """`_dream_planned` with its writer open; `shown` follows the progress bar's name (the auto pack)."""
    skip = writer.done() if resume else set()
    unusable = unusable_targets(loaded, [s for part in planned for s in part if s not in skip], config)
    writer.write(BatchOutput([error_record(loaded, config, spec, error) for spec, error in unusable]))
    skip |= {spec for spec, _ in unusable}
    todo = [(k, [s for s in part if s not in skip]) for k, part in enumerate(planned)]
    todo = [(k, part) for k, part in todo if part]
    starts = None
    if getattr(config, "init", None) in SEEDED_INITS and todo:
        starts = matched_windows(loaded, [s for _, part in todo for s in part], config, maxima,
                                 **{"progress": progress, **(maxima_scan or {})})
    if use_ray or ray_address:
        from dreamy.runs.on_ray import run_on_ray

        run_on_ray(loaded.name, todo, config, writer, address=ray_address, workers=workers,
                   device=str(loaded.device), describe=describe, progress=progress, on_batch=on_batch, starts=starts,
                   shown=shown)
        return writer.records
    limit = PackLimit()  # lowered by a batch that runs out of memory, for the batches after it
    with stepping.progress(len(todo), f"{config.kind} batches{shown}", enabled=progress) as bar:
        for k, part in todo:
            writer.write(batch.dream_batch(loaded, part, batch_config(config, k), progress=progress, describe=describe,
                                           starts=starts, limit=limit))
            if on_batch:
                on_batch(None, k)
            bar.update(1)
    return writer.records


__all__ = ["RunRecords", "auto_batch_targets", "dream_targets"]
