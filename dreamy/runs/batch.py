"""One batch of targets dreamed on a loaded model: its records and the PNG files they name.

Used by both ways of running many targets (`runs.local` here, `runs.on_ray` on a cluster), so neither
imports the other. The targets of a batch share ONE packed optimization (images: one row per target;
prompts: EPO or GCG in lockstep); each record says how many targets its optimization packed (`"pack"`). A
pack that runs out of device memory is cut in halves, recursively, and the halves dreamed one after the other
(a `PackLimit` carries the smaller size on to the run's later batches), so an out-of-memory error never loses a
target: a prompt target's record is the one the whole pack would have given it (each target has its own
generator), an image target's dream is the half's (the rows of a pack share one generator). A run cut short (Ctrl-C, SIGTERM) raises `KeyboardInterrupt` instead of
returning half-dreamed results as finished.

Example:
    >>> from dreamy.models import load
    >>> from dreamy.vision import DreamConfig
    >>> output = dream_batch(load("tiny:cnn"), ["head:1", "head:2"], DreamConfig(steps=2))
    >>> [r["target"] for r in output.records], sorted(output.files)[:2]  # per target: its dream and its plot
    (['head:1', 'head:2'], ['images/head_1-6e9c3c1f_0.png', 'images/head_1-6e9c3c1f_steps.png'])
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from dreamy.core.config import Config
from dreamy.core.files import safe_name
from dreamy.core.frozen import frozen
from dreamy.core.memory import is_oom
from dreamy.core.png import png_bytes
from dreamy.models import LoadedModel
from dreamy.report.plots import evaluated_points, frontier_png, plot_name, steps_png
from dreamy.runs.describe import describe_record
from dreamy.runs.plan import check_model
from dreamy.targets import class_index

log = logging.getLogger(__name__)


@dataclass
class BatchOutput:
    """What a worker sends back for one batch: a record per target and the PNG bytes it refers to."""

    records: list[dict[str, Any]]
    files: dict[str, bytes] = field(default_factory=dict)

    def extend(self, other: "BatchOutput") -> None:
        """Append another output's records and files."""
        self.records += other.records
        self.files.update(other.files)


class PackLimit:
    """The largest pack of targets known to fit on the device so far in a run (None: no limit met yet). A pack
    that runs out of memory lowers it to half its size, so later batches are cut to it before they run.

    Example:
        >>> limit = PackLimit()
        >>> limit.lower(4); limit.lower(8); limit.size
        4
    """

    def __init__(self, size: int | None = None) -> None:
        self.size = size

    def lower(self, size: int) -> None:
        """At most `size` targets per pack from now on (never below 1, never raised)."""
        size = max(1, size)
        self.size = size if self.size is None else min(self.size, size)


def _method_function(config: Config) -> Callable[..., Any]:
    """The function that dreams a whole batch for `config` (looked up at call time, so tests can stand in)."""
    if config.kind == "image":
        from dreamy.vision import render

        return render.dream
    if config.method == "epo":
        from dreamy.language.epo import epo_many

        return epo_many
    from dreamy.language.gcg import gcg_many

    return gcg_many


def error_record(loaded: LoadedModel, config: Config, spec: str, error: str) -> dict[str, Any]:
    """The record of a target that failed.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.vision import DreamConfig
        >>> error_record(load("tiny:cnn"), DreamConfig(), "head:1", "boom")["method"]
        'fourier'
    """
    return {"kind": config.kind, "target": spec, "model": loaded.name, "method": config.method, "error": error}


def _image_record(loaded: LoadedModel, record: dict[str, Any], result: Any, t: int, spec: str) -> BatchOutput:
    rows = result.rows_of(t)
    record.update({"model": loaded.name, "method": result.settings.get("param", "image")})
    if record["activation"] is None:
        record["error"] = (f"the dream's activation is not finite ({record['activations']}): the optimization "
                           "diverged; lower the learning rate or add a regularizer")
        return BatchOutput([record])
    names = [f"images/{safe_name(spec)}_{j}.png" for j in range(len(rows))]
    out = BatchOutput([record], {name: png_bytes(result.images[row]) for name, row in zip(names, rows)})
    record["images"] = names
    _add_plot(out, record, plot_name(spec, "steps"),
              lambda: steps_png([result.history[:, r].tolist() for r in rows], "objective (under transforms)"))
    index = class_index(spec)
    if index is not None and loaded.class_names and 0 <= index < len(loaded.class_names):
        record["label"] = loaded.class_names[index]
    return out


def _add_plot(out: BatchOutput, record: dict[str, Any], name: str, draw: Callable[[], bytes]) -> None:
    """Add the plot `draw()` to `out` as file `name` and `record["plot"]`; a plot that fails is only logged."""
    try:
        out.files[name] = draw()
    except Exception as error:  # a plot must never cost a dream
        log.warning("no plot for %s: %s: %s", record.get("target"), type(error).__name__, error)
        return
    record["plot"] = name


def _prompt_record(loaded: LoadedModel, record: dict[str, Any], result: Any, t: int, spec: str,
                   describe: bool) -> BatchOutput:
    """A prompt target's record: the frontier, its evaluated prompts (compact, for the plot), the output-side
    description when `describe` (see `runs.describe`), and the frontier plot."""
    record = {**record, "model": loaded.name, "evaluated": evaluated_points(result[t].history)}
    activation = record.get("activation")
    if not isinstance(activation, (int, float)) or not math.isfinite(activation):
        record.update(activation=None, error=f"the search's best activation is not finite ({activation}): the "
                                             "target gives non-finite values on these prompts; check its direction "
                                             "or SAE file")
        return BatchOutput([record])
    if describe:
        record = describe_record(loaded, record)
    out = BatchOutput([record])
    _add_plot(out, record, plot_name(spec, "frontier"), lambda: frontier_png(record))
    return out


def _target_output(loaded: LoadedModel, config: Config, result: Any, record: dict[str, Any], t: int, spec: str,
                   describe: bool) -> BatchOutput:
    if config.kind == "image":
        return _image_record(loaded, record, result, t, spec)
    return _prompt_record(loaded, record, result, t, spec, describe)


def dream_batch(loaded: LoadedModel, specs: Sequence[str], config: Config, *, progress: bool = False,
                describe: bool = True, starts: dict[str, Any] | None = None,
                limit: PackLimit | None = None, model_checked: bool = False) -> BatchOutput:
    """Dream one batch of targets, packed, on an already loaded model, as `config` says (a `DreamConfig` dreams
    images with `vision.dream`, an `EPOConfig` or `GCGConfig` prompts). One bad target must not sink the
    batch: if the packed run fails, its targets are retried one by one; a target whose output fails is retried
    alone, the finished ones are kept; a target that fails alone becomes an error record. An interrupted run
    raises `KeyboardInterrupt`. `progress` shows the batch's own bar. Each record gets its plot (`"plot"`, a
    PNG in `files`); prompt records also their output-side `"description"` when `describe`. `starts` holds the
    dataset windows a prompt search seeded from the corpus starts from (`{spec: [token ids, ...]}`). A pack
    that runs out of memory (`core.memory.is_oom`) is dreamed in halves, recursively, and lowers `limit` (a
    `PackLimit` shared by a run's batches) so later batches are cut before they run; one target that runs out of
    memory alone becomes an error record. The model runs in eval mode with no parameter requiring grad
    (`core.frozen`) and is restored afterwards. The model is checked against the config first
    (`plan.check_model`) unless the run did it once for all its batches (`model_checked`)."""
    if not model_checked:
        check_model(loaded, config)
    with frozen(loaded.model):
        return _dream_batch(loaded, specs, config, progress, describe, starts, limit or PackLimit())


def _halves(loaded: LoadedModel, specs: Sequence[str], config: Config, progress: bool, describe: bool,
            starts: dict[str, Any] | None, limit: PackLimit) -> BatchOutput:
    """The targets of `specs` dreamed in two packs, the first half first (its records kept whatever the second
    does), each cut again as `limit` says."""
    half = (len(specs) + 1) // 2
    out = _dream_batch(loaded, specs[:half], config, progress, describe, starts, limit)
    out.extend(_dream_batch(loaded, specs[half:], config, progress, describe, starts, limit))
    return out


def _free_cached(loaded: LoadedModel) -> None:
    """Hand the memory an out-of-memory pack left cached back to the device (CUDA), before a smaller pack runs."""
    import gc

    import torch

    gc.collect()
    if loaded.device.type == "cuda":
        torch.cuda.empty_cache()


def _dream_batch(loaded: LoadedModel, specs: Sequence[str], config: Config, progress: bool, describe: bool,
                 starts: dict[str, Any] | None, limit: PackLimit) -> BatchOutput:
    """`dream_batch` with the model frozen."""
    specs = list(specs)
    if limit.size is not None and len(specs) > limit.size:
        return _halves(loaded, specs, config, progress, describe, starts, limit)
    out_of_memory = False
    try:
        extra = {"starts": {spec: starts[spec] for spec in specs}} if starts else {}
        result = _method_function(config)(loaded, list(specs), config=config, progress=progress, **extra)
    except Exception as error:
        if is_oom(error) and len(specs) > 1:
            out_of_memory = True  # retried below, once the error (and the tensors its frames hold) is gone
            log.warning("out of memory dreaming a pack of %d targets; dreaming it in packs of %d", len(specs),
                        (len(specs) + 1) // 2)
        elif len(specs) == 1:
            return BatchOutput([error_record(loaded, config, specs[0], f"{type(error).__name__}: {error}")])
        else:  # one bad target must not sink the others: each is dreamed alone
            out = BatchOutput([])
            for spec in specs:
                out.extend(dream_batch(loaded, [spec], config, progress=progress, describe=describe, starts=starts,
                                       limit=limit))
            return out
    if out_of_memory:
        _free_cached(loaded)
        limit.lower((len(specs) + 1) // 2)  # the larger half: tried next, and by the batches after this one
        return _halves(loaded, specs, config, progress, describe, starts, limit)
    if config.kind == "image" and result.settings.get("interrupted"):
        raise KeyboardInterrupt  # the images are cut short: never record them as finished
    out = BatchOutput([])
    records = result.to_records()
    for record in records:
        record["pack"] = len(specs)  # the targets this optimization packed (fewer than asked after out-of-memory)
    for t, spec in enumerate(specs):
        try:
            out.extend(_target_output(loaded, config, result, records[t], t, spec, describe))
        except Exception as error:
            out.extend(dream_batch(loaded, [spec], config, describe=describe, starts=starts) if len(specs) > 1 else
                       BatchOutput([error_record(loaded, config, spec, f"{type(error).__name__}: {error}")]))
    return out


__all__ = ["BatchOutput", "PackLimit", "dream_batch", "error_record"]
