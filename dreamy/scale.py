"""Dream many targets: packed into shared batches on one machine, or sharded over a Ray cluster.

Targets are cut into batches of `batch_targets`; the targets of a batch share ONE batched
optimization (images: one row per target; prompts: `epo_many`/`gcg_many` run them in lockstep, one
gradient pass and one scoring call per iteration for all of them). Batch k always holds the same
targets and uses seed `seed + k`, so a local run and a Ray run of the same list give the same
results. Each finished batch is written at once (PNGs, then the records, atomically) into
`out_dir/results.json` and the gallery, so an interrupted run keeps every finished target and
`resume=True` skips them. With Ray, each worker loads the model
once; a worker that dies loses only the batch it was running, which a resumed run completes.

Example:
    >>> import tempfile
    >>> records = dream_targets("tiny:cnn", ["head:1", "head:2"], kind="image", settings={"steps": 2},
    ...                         out_dir=tempfile.mkdtemp(), progress=False)
    >>> sorted(r["target"] for r in records)
    ['head:1', 'head:2']
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from dreamy import loop
from dreamy.targets import expand

log = logging.getLogger(__name__)

KINDS = ("image", "prompt")


@dataclass
class BatchOutput:
    """What a worker sends back for one batch: a record per target and the PNG bytes it refers to."""

    records: list[dict[str, Any]]
    files: dict[str, bytes] = field(default_factory=dict)


def class_label(loaded: Any, spec: str) -> str | None:
    """The class name a one-term `logits:N` / `logprobs:N` target names, when the model has class names.

    Example:
        >>> from dreamy.models import load
        >>> tiny = load("tiny:cnn")
        >>> class_label(tiny, "logits:3"), class_label(tiny, "conv3:1") is None
        ('class 3', True)
    """
    from dreamy.targets import Neuron, parse

    names = getattr(loaded, "class_names", None)
    terms = parse(spec).terms
    if not names or len(terms) != 1 or not terms[0].site.is_logits or not isinstance(terms[0].unit, Neuron):
        return None
    index = terms[0].unit.index
    return names[index] if 0 <= index < len(names) else None


def _packed_run(kind: str, settings: dict[str, Any]) -> tuple[Callable[..., Any], dict[str, Any], str]:
    """The function that dreams a whole batch of `kind`, its keyword settings, and the method name records carry."""
    if kind == "image":
        from dreamy.vision.render import dream

        return dream, settings, settings.get("param", "fourier")
    if kind == "prompt":
        from dreamy.language import epo_many, gcg_many

        options = {key: value for key, value in settings.items() if key != "method"}
        method = settings.get("method", "epo")
        return {"epo": epo_many, "gcg": gcg_many}[method], options, method
    raise ValueError(f"unknown kind '{kind}'; use one of {', '.join(KINDS)}")


def _image_output(loaded: Any, result: Any) -> BatchOutput:
    from dreamy.gallery import png_bytes
    from dreamy.results import safe_name

    out = BatchOutput([])
    for t, spec in enumerate(result.targets):
        rows = result.rows_of(t)
        record = result.to_record(rows[0])
        names = [f"images/{safe_name(spec)}_{j}.png" for j in range(len(rows))]
        for name, row in zip(names, rows):
            out.files[name] = png_bytes(result.images[row])
        activations = [float(result.activation[r]) for r in rows]
        record.update({"model": loaded.name, "method": result.settings.get("param", "image"), "images": names,
                       "activations": activations, "activation": max(activations)})
        label = class_label(loaded, spec)
        if label:
            record["label"] = label
        out.records.append(record)
    return out


def dream_batch(loaded: Any, kind: str, specs: Sequence[str], settings: dict[str, Any], seed: int) -> BatchOutput:
    """Dream one batch of targets, packed, on an already loaded model (images: `vision.dream`; prompts:
    `epo_many`/`gcg_many`). One bad target must not sink the batch: if the packed run fails, its targets
    are retried one by one, and a target that fails alone becomes an error record."""
    run, options, method = _packed_run(kind, settings)
    try:
        result = run(loaded, list(specs), seed=seed, progress=False, **options)
    except Exception as error:
        if len(specs) == 1:
            return BatchOutput([{"kind": kind, "target": specs[0], "model": loaded.name, "method": method,
                                 "error": f"{type(error).__name__}: {error}"}])
        outputs = [dream_batch(loaded, kind, [spec], settings, seed) for spec in specs]
        return BatchOutput([r for o in outputs for r in o.records], {k: v for o in outputs for k, v in o.files.items()})
    if kind == "image":
        return _image_output(loaded, result)
    return BatchOutput([{**one.to_record(), "model": loaded.name} for one in result])


def plan_batches(specs: Sequence[str], batch_targets: int) -> list[list[str]]:
    """Expand ranges and cut the target list into batches (batch k is the same in every mode).

    Example:
        >>> plan_batches(["conv:0-4"], 2)
        [['conv:0', 'conv:1'], ['conv:2', 'conv:3'], ['conv:4']]
    """
    if batch_targets < 1:
        raise ValueError(f"batch_targets must be >= 1, got {batch_targets}")
    expanded = list(dict.fromkeys(str(t) for spec in specs for t in expand(spec)))
    return [expanded[i : i + batch_targets] for i in range(0, len(expanded), batch_targets)]


class _Writer:
    """Writes finished batches into the output folder: PNGs first, then the records, then the gallery."""

    def __init__(self, out_dir: str | Path | None, title: str) -> None:
        from dreamy.results import ResultsStore

        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.store = ResultsStore(self.out_dir) if self.out_dir is not None else None
        self.title = title
        self.records: list[dict[str, Any]] = []

    def done(self) -> set[str]:
        return self.store.done() if self.store else set()

    def write(self, output: BatchOutput) -> None:
        self.records.extend(output.records)
        if self.out_dir is None:
            return
        from dreamy.gallery import write_index
        from dreamy.results import write_atomic

        for name, data in output.files.items():
            write_atomic(self.out_dir / name, data)
        self.store.add_many(output.records)
        write_index(self.out_dir, self.store.records, self.title)


def dream_targets(model: str, specs: Sequence[str], *, kind: str = "image", settings: dict[str, Any] | None = None,
                  out_dir: str | Path | None = None, resume: bool = False, seed: int = 0, batch_targets: int = 8,
                  ray_address: str | None = None, use_ray: bool = False, workers: int = 2, device: str = "cpu",
                  progress: bool = True, on_batch: Callable[[Any, int], None] | None = None) -> list[dict[str, Any]]:
    """Dream every target of `specs` with model `model`, locally or over Ray, and return the records.

    `settings` go to `vision.dream` (kind "image") or to `language.epo`/`gcg` (kind "prompt"; a
    `"method"` key picks gcg). With `use_ray` (or a `ray_address`) batches are sharded over `workers`
    Ray actors (`ray.init()` starts a local cluster when no address is given). `on_batch(runner, k)`
    is called after batch k is written (for tests and monitoring).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind '{kind}'; use one of {', '.join(KINDS)}")
    settings = dict(settings or {})
    batches = plan_batches(specs, batch_targets)
    writer = _Writer(out_dir, f"dreamy {kind} dreams: {model}")
    skip = writer.done() if resume else set()
    todo = [(k, [s for s in batch if s not in skip]) for k, batch in enumerate(batches)]
    todo = [(k, batch) for k, batch in todo if batch]
    if use_ray or ray_address:
        from dreamy.ray_runner import run_on_ray

        run_on_ray(model, kind, todo, settings, seed, writer, address=ray_address, workers=workers, device=device,
                   progress=progress, on_batch=on_batch)
        return writer.records
    from dreamy.models import load

    loaded = load(model, device)
    with loop.progress(len(todo), f"{kind} batches", enabled=progress) as bar:
        for k, batch in todo:
            writer.write(dream_batch(loaded, kind, batch, settings, seed + k))
            if on_batch:
                on_batch(None, k)
            bar.update(1)
    return writer.records
