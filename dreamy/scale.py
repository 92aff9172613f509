"""Dream many targets: packed into shared batches on one machine, or sharded over a Ray cluster.

Targets are cut into batches of `batch_targets`; the targets of a batch share ONE batched
optimization (images: one row per target; prompts: `epo_many`/`gcg_many` run them in lockstep, one
gradient pass and one scoring call per iteration for all of them). Batch k always holds the same
targets and uses seed `seed + k`, so a local run and a Ray run of the same list give the same
results. Each finished batch is written at once (PNGs, then the records, atomically) into
`out_dir/results.json` and the gallery, so an interrupted run keeps every finished target and
`resume=True` skips them. With Ray, each worker loads the model
once; a worker that dies loses only the batch it was running, which a resumed run completes.

Before any dreaming, every target is checked against the model (`batches.unusable_targets`): a target
that cannot be scored is recorded with its error at once and never dreamed. results.json records
the run (model, kind, settings, seed); resuming it with anything else is refused (`results.OutDirError`).
Ctrl-C or SIGTERM stops the run: finished batches are kept, the interrupted one is not recorded.

Example:
    >>> import tempfile
    >>> records = dream_targets("tiny:cnn", ["head:1", "head:2"], kind="image", settings={"steps": 2},
    ...                         out_dir=tempfile.mkdtemp(), progress=False)
    >>> sorted(r["target"] for r in records)
    ['head:1', 'head:2']
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from dreamy import batches, stepping
from dreamy.batches import KINDS, BatchOutput, plan_batches

log = logging.getLogger(__name__)

__all__ = ["BatchOutput", "KINDS", "attach_maxima", "dream_targets", "gallery_title", "plan_batches"]


def gallery_title(kind: str, model: str) -> str:
    """The title of a run's gallery page.

    Example:
        >>> gallery_title("image", "tiny:cnn")
        'dreamy image dreams: tiny:cnn'
    """
    return f"dreamy {kind} dreams: {model}"


class _Writer:
    """Writes finished batches into the output folder: PNGs first, then the records, then the gallery."""

    def __init__(self, out_dir: str | Path | None, title: str, run: dict[str, Any]) -> None:
        from dreamy.results import ResultsStore

        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.store = ResultsStore(self.out_dir, run) if self.out_dir is not None else None
        self.title = title
        self.records: list[dict[str, Any]] = []

    def done(self) -> set[str]:
        return self.store.done() if self.store else set()

    def write(self, output: BatchOutput) -> None:
        self.records.extend(output.records)
        if self.out_dir is None or not output.records:
            return
        from dreamy.gallery import write_index
        from dreamy.results import write_atomic

        for name, data in output.files.items():
            write_atomic(self.out_dir / name, data)
        self.store.add_many(output.records)
        write_index(self.out_dir, self.store.records, self.title)


def dream_targets(model: str, specs: Sequence[str], *, kind: str = "image", settings: dict[str, Any] | None = None,
                  out_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False, seed: int = 0,
                  batch_targets: int = 8, ray_address: str | None = None, use_ray: bool = False, workers: int = 2,
                  device: str = "cpu", progress: bool = True, on_batch: Callable[[Any, int], None] | None = None,
                  loaded: Any = None) -> list[dict[str, Any]]:
    """Dream every target of `specs` with model `model`, locally or over Ray, and return the records.

    `settings` go to `vision.dream` (kind "image") or to `language.epo`/`gcg` (kind "prompt"; a
    `"method"` key picks gcg). With `use_ray` (or a `ray_address`) batches are sharded over `workers`
    Ray actors (`ray.init()` starts a local cluster when no address is given). `on_batch(runner, k)`
    is called after batch k is written (for tests and monitoring). A non-empty `out_dir` needs
    `resume` (same run only) or `overwrite`. `loaded`: the model already loaded (else it is loaded
    here; with Ray it is still loaded once here, to check the targets).
    """
    from dreamy.results import clear_outputs, prepare_out_dir, run_info, run_lock

    if kind not in KINDS:
        raise ValueError(f"unknown kind '{kind}'; use one of {', '.join(KINDS)}")
    settings = dict(settings or {})
    run = run_info(model, kind, settings, seed)
    if out_dir is not None:
        prepare_out_dir(out_dir, run, resume=resume, overwrite=overwrite)
    planned = plan_batches(specs, batch_targets)
    if loaded is None:
        from dreamy.models import load

        loaded = load(model, device)
    if out_dir is None:
        return _dream_planned(model, kind, planned, settings, run, None, resume, seed, use_ray, ray_address, workers,
                              device, progress, on_batch, loaded)
    with run_lock(out_dir):
        prepare_out_dir(out_dir, run, resume=resume, overwrite=overwrite)  # again under the lock: a run may have
        if overwrite:                                                     # finished in it meanwhile
            clear_outputs(out_dir)
        return _dream_planned(model, kind, planned, settings, run, out_dir, resume, seed, use_ray, ray_address, workers,
                              device, progress, on_batch, loaded)


def _dream_planned(model: str, kind: str, planned: list[list[str]], settings: dict[str, Any], run: dict[str, Any],
                   out_dir: str | Path | None, resume: bool, seed: int, use_ray: bool, ray_address: str | None,
                   workers: int, device: str, progress: bool, on_batch: Callable[[Any, int], None] | None,
                   loaded: Any) -> list[dict[str, Any]]:
    """The checked, planned batches of `dream_targets`, dreamed and written (the folder already locked)."""
    writer = _Writer(out_dir, gallery_title(kind, model), run)
    skip = writer.done() if resume else set()
    _, _, method = batches._packed_run(kind, settings)
    unusable = batches.unusable_targets(loaded, kind, [s for batch in planned for s in batch if s not in skip], settings)
    writer.write(BatchOutput([batches.error_record(loaded, kind, spec, method, error) for spec, error in unusable]))
    skip |= {spec for spec, _ in unusable}
    todo = [(k, [s for s in batch if s not in skip]) for k, batch in enumerate(planned)]
    todo = [(k, batch) for k, batch in todo if batch]
    if use_ray or ray_address:
        from dreamy.ray_runner import run_on_ray

        run_on_ray(model, kind, todo, settings, seed, writer, address=ray_address, workers=workers, device=device,
                   progress=progress, on_batch=on_batch)
        return writer.records
    with stepping.progress(len(todo), f"{kind} batches", enabled=progress) as bar:
        for k, batch in todo:
            writer.write(batches.dream_batch(loaded, kind, batch, settings, seed + k, progress=progress))
            if on_batch:
                on_batch(None, k)
            bar.update(1)
    return writer.records


def attach_maxima(out_dir: str | Path, loaded: Any, kind: str, dataset: str | None = None, *, model: str | None = None,
                  describe: bool = True, progress: bool = True, **scan: Any) -> list[dict[str, Any]]:
    """Put dataset maxima into the finished records of the run in `out_dir` and rewrite its gallery.

    With `dataset` (images: photos, fashion-mnist, a folder; text: fortunes, bible-kjv, a file) the maxima
    are found now; without it, cached maxima of an earlier search are attached where they exist. Prompt
    records then get TokenChange over those windows (`describe`) and their frontier plot redrawn with the
    windows as points. Returns the updated records. This is what `dream ... --maxima DATASET` does after
    dreaming. `scan` goes to `maxima.image_maxima` / `maxima.text_maxima` (e.g. `k`, `max_words`, `cache_dir`).

    Example:
        >>> import tempfile
        >>> from dreamy.models import load
        >>> out, cnn = tempfile.mkdtemp(), load("tiny:cnn")
        >>> _ = dream_targets("tiny:cnn", ["head:1"], settings={"steps": 2}, out_dir=out, progress=False, loaded=cnn)
        >>> [len(r["maxima"]) > 0 for r in attach_maxima(out, cnn, "image", "photos", progress=False)]
        [True]
    """
    from dreamy.results import run_lock

    with run_lock(out_dir):
        return _attach_maxima(Path(out_dir), loaded, kind, dataset, model, describe, progress, scan)


def _attach_maxima(out: Path, loaded: Any, kind: str, dataset: str | None, model: str | None, describe: bool,
                   progress: bool, scan: dict[str, Any]) -> list[dict[str, Any]]:
    from dreamy import maxima
    from dreamy.gallery import write_index
    from dreamy.results import ResultsStore, safe_name, write_atomic

    store = ResultsStore(out)
    model = model or (loaded.name if loaded is not None else (store.run or {}).get("model"))
    good = [r["target"] for r in store.records if "error" not in r]
    if not good:
        return []
    if dataset:
        find = maxima.image_maxima if kind == "image" else maxima.text_maxima
        found = find(loaded, good, dataset, progress=progress, **scan)
    else:
        found = {t: maxima.load_cached_maxima(maxima.default_cache_dir(), model, t) for t in good}
    updated = []
    for record in store.records:
        entry = found.get(record["target"])
        if entry is None or "error" in record:
            continue
        items = entry.gallery_items()
        for j, item in enumerate(items):
            if "image" in item:
                name = f"maxima/{safe_name(record['target'])}_{j}.png"
                write_atomic(out / name, Path(item["image"]).read_bytes())
                item["image"] = name
        updated.append(_refresh_prompt_card(loaded, {**record, "maxima": items, "maxima_dataset": entry.dataset},
                                            out, describe=describe))
    if updated:
        store.add_many(updated)
        write_index(out, store.records, gallery_title(kind, model))
    return updated


def _refresh_prompt_card(loaded: Any, record: dict[str, Any], out: Path, describe: bool) -> dict[str, Any]:
    """A prompt record that just got its dataset maxima: TokenChange over those windows, and its frontier plot
    redrawn with the windows as points."""
    from dreamy.descriptions import describe_record
    from dreamy.plots import frontier_png, plot_name
    from dreamy.results import write_atomic

    if record.get("kind") != "prompt":
        return record
    if describe:
        record = describe_record(loaded, record)
    name = record.get("plot") or plot_name(record["target"], "frontier")
    try:
        write_atomic(out / name, frontier_png(record))
    except Exception as error:  # a plot must never cost the run its maxima
        log.warning("no plot for %s: %s: %s", record["target"], type(error).__name__, error)
        return record
    return {**record, "plot": name}
