"""One batch of targets dreamed on a loaded model, and the up-front checks a batch's targets must pass.

Used by both ways of running many targets (`scale.dream_targets` locally, `ray_runner` on a cluster),
so neither imports the other. The targets of a batch share ONE packed optimization (images: one row
per target; prompts: `epo_many`/`gcg_many` in lockstep). A run cut short (Ctrl-C, SIGTERM) raises
`KeyboardInterrupt` instead of returning half-dreamed results as finished.

Example:
    >>> from dreamy.models import load
    >>> output = dream_batch(load("tiny:cnn"), "image", ["head:1", "head:2"], {"steps": 2}, seed=0)
    >>> [r["target"] for r in output.records], sorted(output.files)[:2]  # per target: its dream and its plot
    (['head:1', 'head:2'], ['images/head_1-6e9c3c1f_0.png', 'images/head_1-6e9c3c1f_steps.png'])
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from dreamy.targets import check_targets, expand

KINDS = ("image", "prompt")


@dataclass
class BatchOutput:
    """What a worker sends back for one batch: a record per target and the PNG bytes it refers to."""

    records: list[dict[str, Any]]
    files: dict[str, bytes] = field(default_factory=dict)

    def extend(self, other: "BatchOutput") -> None:
        """Append another output's records and files."""
        self.records += other.records
        self.files.update(other.files)


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


def example_input(loaded: Any, kind: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of one forward shaped like the run's: two images at the model's input size, or
    two prompts of the run's full length (prefix, span, suffix), so checks see the real positions.

    Example:
        >>> from dreamy.models import load
        >>> tuple(example_input(load("tiny:lm"), "prompt", {"n_tokens": 4})["input_ids"].shape)
        (2, 5)
    """
    if kind == "image":
        if loaded.kind != "vision":
            raise ValueError(f"model '{loaded.name}' is a {loaded.kind} model; `image` needs a vision model")
        from dreamy.vision.render import patch_tokens

        size = loaded.preprocess.size if loaded.preprocess else (224, 224)
        return {"args": (torch.zeros(2, 3, *size, device=loaded.device),), "sequence_reduce": "mean",
                "patch_tokens": patch_tokens(loaded.model)}
    if loaded.kind != "language":
        raise ValueError(f"model '{loaded.name}' is a {loaded.kind} model; `prompt` needs a language model")
    from dreamy.language.layout import make_layout

    layout = make_layout(loaded.tokenizer, settings.get("n_tokens", 12), settings.get("prefix", ""),
                         settings.get("suffix", ""), device=loaded.device)
    filler = int(layout.prefix[-1])
    span = torch.full((2, layout.n_tokens), filler, dtype=torch.long, device=loaded.device)
    return {"input_ids": layout.full(span), "sequence_reduce": "pos=-1"}


def unusable_targets(loaded: Any, kind: str, specs: Sequence[str], settings: dict[str, Any]) -> list[tuple[str, str]]:
    """`(spec, error)` for every target that cannot be scored on `loaded` (see `targets.check_targets`).

    Example:
        >>> from dreamy.models import load
        >>> unusable_targets(load("tiny:cnn"), "image", ["head:1", "head:10"], {})
        [('head:10', "unit 10 out of range for site 'head' with 10 features; valid units are 0..9")]
    """
    example = example_input(loaded, kind, settings)
    args = example.pop("args", ())
    reduce = example.pop("sequence_reduce")
    return check_targets(loaded.model, specs, *args, sequence_reduce=reduce, **example)


def _packed_run(kind: str, settings: dict[str, Any]) -> tuple[Callable[..., Any], dict[str, Any], str]:
    """The function that dreams a whole batch of `kind`, its keyword settings, and the method name records carry."""
    if kind == "image":
        from dreamy.vision.render import dream

        return dream, settings, settings.get("param", "fourier")
    if kind == "prompt":
        from dreamy.language import epo_many, gcg_many

        options = {key: value for key, value in settings.items() if key not in ("method", "describe")}
        method = settings.get("method", "epo")
        return {"epo": epo_many, "gcg": gcg_many}[method], options, method
    raise ValueError(f"unknown kind '{kind}'; use one of {', '.join(KINDS)}")


def error_record(loaded: Any, kind: str, spec: str, method: str, error: str) -> dict[str, Any]:
    """The record of a target that failed."""
    return {"kind": kind, "target": spec, "model": loaded.name, "method": method, "error": error}


def _image_target(loaded: Any, result: Any, t: int, spec: str) -> BatchOutput:
    from dreamy.plots import plot_name, steps_png
    from dreamy.png import png_bytes
    from dreamy.results import safe_name

    rows = result.rows_of(t)
    record = result.to_record(rows[0])
    activations = [float(result.activation[r]) for r in rows]
    record.update({"model": loaded.name, "method": result.settings.get("param", "image")})
    if not all(math.isfinite(a) for a in activations):
        record.update({"activations": activations, "activation": None,
                       "error": f"the dream's activation is not finite ({activations}): the optimization diverged; "
                                "lower --lr or add a regularizer"})
        return BatchOutput([record])
    names = [f"images/{safe_name(spec)}_{j}.png" for j in range(len(rows))]
    out = BatchOutput([record], {name: png_bytes(result.images[row]) for name, row in zip(names, rows)})
    record.update({"images": names, "activations": activations, "activation": max(activations)})
    _add_plot(out, record, plot_name(spec, "steps"),
              lambda: steps_png([result.history[:, r].tolist() for r in rows], "objective (under transforms)"))
    label = class_label(loaded, spec)
    if label:
        record["label"] = label
    return out


def _add_plot(out: BatchOutput, record: dict[str, Any], name: str, draw: Callable[[], bytes]) -> None:
    """Add the plot `draw()` to `out` as file `name` and `record["plot"]`; a plot that fails is only logged."""
    try:
        out.files[name] = draw()
    except Exception as error:  # a plot must never cost a dream
        logging.getLogger(__name__).warning("no plot for %s: %s: %s", record.get("target"), type(error).__name__, error)
        return
    record["plot"] = name


def _prompt_target(loaded: Any, result: Any, t: int, spec: str, describe: bool) -> BatchOutput:
    """A prompt target's record: the frontier, its evaluated prompts (compact, for the plot), the output-side
    description when `describe` (see `dreamy.descriptions`), and the frontier plot."""
    from dreamy.descriptions import describe_record
    from dreamy.plots import evaluated_points, frontier_png, plot_name

    record = {**result[t].to_record(), "model": loaded.name, "evaluated": evaluated_points(result[t].history)}
    if describe:
        record = describe_record(loaded, record)
    out = BatchOutput([record])
    _add_plot(out, record, plot_name(spec, "frontier"), lambda: frontier_png(record))
    return out


def _target_output(loaded: Any, kind: str, result: Any, t: int, spec: str, settings: dict[str, Any]) -> BatchOutput:
    if kind == "image":
        return _image_target(loaded, result, t, spec)
    return _prompt_target(loaded, result, t, spec, settings.get("describe", True))


def dream_batch(loaded: Any, kind: str, specs: Sequence[str], settings: dict[str, Any], seed: int,
                progress: bool = False) -> BatchOutput:
    """Dream one batch of targets, packed, on an already loaded model (images: `vision.dream`; prompts:
    `epo_many`/`gcg_many`). One bad target must not sink the batch: if the packed run fails, its targets
    are retried one by one; a target whose output fails is retried alone, the finished ones are kept;
    a target that fails alone becomes an error record. An interrupted run raises `KeyboardInterrupt`.
    `progress` shows the batch's own bar (images: steps and the objective; prompts: iterations). Each record
    gets its plot (`"plot"`, a PNG in `files`); prompt records also their output-side `"description"`
    unless `settings["describe"]` is False (`dreamy.descriptions`)."""
    run, options, method = _packed_run(kind, settings)
    try:
        result = run(loaded, list(specs), seed=seed, progress=progress, **options)
    except Exception as error:
        if len(specs) == 1:
            return BatchOutput([error_record(loaded, kind, specs[0], method, f"{type(error).__name__}: {error}")])
        out = BatchOutput([])
        for spec in specs:
            out.extend(dream_batch(loaded, kind, [spec], settings, seed, progress))
        return out
    if kind == "image" and result.settings.get("interrupted"):
        raise KeyboardInterrupt  # the images are cut short: never record them as finished
    out = BatchOutput([])
    for t, spec in enumerate(specs):
        try:
            out.extend(_target_output(loaded, kind, result, t, spec, settings))
        except Exception as error:
            out.extend(dream_batch(loaded, kind, [spec], settings, seed) if len(specs) > 1 else
                       BatchOutput([error_record(loaded, kind, spec, method, f"{type(error).__name__}: {error}")]))
    return out
