"""Enrich a finished run's records in its output folder, in one pass: dataset maxima, descriptions, labels,
judges' verdicts, steering.

`enrich(out_dir, loaded, steps)` reads the run's results.json once, applies the steps `EnrichSteps` asks for in
this order, each on the records the steps before it left:

1. maxima: the dataset maxima of every finished target (found now in `MaximaStep.dataset`, or the cached ones of
   an earlier search); a prompt record also gets the windows of its own length (`maxima_matched`, the verdict's
   yardstick) from the same pass;
2. descriptions and plots: a prompt record that just got maxima gets its TokenChange over those windows
   (`describe`; so do finished prompt records with no description yet) and its frontier plot redrawn with the
   windows as points: each made once, after the maxima they show;
3. labels: token-space labels searched on the corpus windows (`runs.labeling`);
4. judges: the judges' verdicts on every class dream (`judge_records`);
5. steering: the steering check of every prompt target (`steering_of`; reads the maxima of step 1);

then writes results.json and the gallery once (only if a record changed), holding the folder's lock
(`store.run_lock`, re-entrant: a caller that holds it already, as `dream ...` does around the run, keeps it).
This is what `dream ... --maxima DATASET`, `--labels`, `--judge MODEL` and `--steer` do after dreaming.

Example (judges on a run with no class dreams judge nothing):
    >>> import tempfile
    >>> enrich(tempfile.mkdtemp(), None, EnrichSteps(judges=()))
    []
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from dreamy.core.files import safe_name, write_atomic
from dreamy.core.png import read_png
from dreamy.core.records import prompt_layout, record_kind
from dreamy.models import LoadedModel
from dreamy.report.page import gallery_title, write_index
from dreamy.report.plots import frontier_png, plot_name
from dreamy.runs.describe import describe_record
from dreamy.runs.labeling import LabelStep, label_records
from dreamy.runs.store import ResultsStore, run_lock
from dreamy.targets import class_index
from dreamy.vision.judges import Verdict, judge_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaximaStep:
    """The maxima step: find them now in `dataset` (images: photos, fashion-mnist, a folder; text: fortunes,
    bible-kjv, a file), or with `dataset` None attach the cached maxima of an earlier search where they exist;
    `scan` goes to `maxima.image_maxima` / `maxima.text_maxima` (e.g. `k`, `max_words`, `cache_dir`).

    Example:
        >>> MaximaStep("photos", {"k": 4}).scan["k"]
        4
    """

    dataset: Any = None
    scan: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EnrichSteps:
    """The steps of one `enrich` pass (see the module docstring for their order): `maxima` (a `MaximaStep`, None:
    none), `describe` (prompt records that get maxima, or have no description, are described), `labels` (a
    `runs.labeling.LabelStep`), `judges` (loaded image classifiers), `steering` (a `steering.SteerConfig`);
    `progress` shows the searches' bars.

    Example:
        >>> steps = EnrichSteps(maxima=MaximaStep("fortunes"), describe=True)
        >>> steps.maxima, steps.labels, steps.judges, steps.steering
        (MaximaStep(dataset='fortunes', scan={}), None, (), None)
    """

    maxima: MaximaStep | None = None
    describe: bool = False
    labels: LabelStep | None = None
    judges: tuple[LoadedModel, ...] = ()
    steering: Any = None
    progress: bool = True


def enrich(out_dir: str | Path, loaded: LoadedModel | None, steps: EnrichSteps) -> list[dict[str, Any]]:
    """Apply `steps` to the finished records of the run in `out_dir` (see the module docstring), write its
    results.json and gallery once, and return the records that changed, in the run's order. `loaded` is the
    run's model (None will do for judges alone; `ValueError` for a step that reads it).

    Example:
        >>> import tempfile
        >>> from dreamy.models import load
        >>> from dreamy.runs import dream_targets
        >>> from dreamy.vision import DreamConfig
        >>> out, cnn = tempfile.mkdtemp(), load("tiny:cnn")
        >>> _ = dream_targets(cnn, ["logits:3", "conv3:1"], DreamConfig(steps=2), out_dir=out, progress=False)
        >>> steps = EnrichSteps(maxima=MaximaStep("photos", {"cache_dir": tempfile.mkdtemp()}), judges=(cnn,),
        ...                     progress=False)
        >>> [(r["target"], len(r["maxima"]) > 0, "judges" in r) for r in enrich(out, cnn, steps)]
        [('logits:3', True, True), ('conv3:1', True, False)]
    """
    needs_model = [name for name, asked in (("maxima", steps.maxima is not None), ("describe", steps.describe),
                                            ("labels", steps.labels is not None),
                                            ("steering", steps.steering is not None)) if asked]
    if loaded is None and needs_model:
        raise ValueError(f"enrich: the {', '.join(needs_model)} step(s) read the run's model; pass it as `loaded`")
    with run_lock(out_dir):
        out = Path(out_dir)
        store = ResultsStore(out)
        run = store.run or {}
        kind = record_kind(run) or (None if loaded is None else "image" if loaded.kind == "vision" else "prompt")
        records = {r["target"]: r for r in store.records}
        changed: set[str] = set()

        def apply(updated: Sequence[dict[str, Any]]) -> None:
            for record in updated:
                records[record["target"]] = record
                changed.add(record["target"])

        got_maxima: set[str] = set()
        if steps.maxima is not None:
            with_maxima = maxima_of(loaded, list(records.values()), steps.maxima, out, run, steps.progress)
            got_maxima = {r["target"] for r in with_maxima}
            apply(with_maxima)
        if got_maxima or steps.describe:
            apply(_described_and_plotted(loaded, records, got_maxima, steps.describe, out, kind))
        if steps.labels is not None:
            apply(label_records(loaded, list(records.values()), steps.labels, progress=steps.progress))
        if steps.judges:
            apply(judge_records(steps.judges, list(records.values()), out, default_kind=kind or "image"))
        if steps.steering is not None:
            apply(steering_of(loaded, list(records.values()), steps.steering, default_kind=kind or "prompt"))
        if not changed:
            return []
        store.add_many(list(records.values()))  # one write, in the run's order
        model = run.get("model") or (loaded.name if loaded is not None else "?")
        write_index(out, store.records, gallery_title(kind or "image", model))
        return [r for target, r in records.items() if target in changed]


def attach_maxima(out_dir: str | Path, loaded: LoadedModel, dataset: str | None = None, *, describe: bool = True,
                  progress: bool = True, **scan: Any) -> list[dict[str, Any]]:
    """`enrich` with the maxima step alone (and the descriptions it calls for): the dataset maxima of `dataset`
    (None: cached ones) put into the finished records of the run in `out_dir`; `scan` goes to the maxima search.

    Example:
        >>> import tempfile
        >>> from dreamy.models import load
        >>> from dreamy.runs import dream_targets
        >>> from dreamy.vision import DreamConfig
        >>> out, cnn = tempfile.mkdtemp(), load("tiny:cnn")
        >>> _ = dream_targets(cnn, ["head:1"], DreamConfig(steps=2), out_dir=out, progress=False)
        >>> [len(r["maxima"]) > 0 for r in attach_maxima(out, cnn, "photos", progress=False, cache_dir=tempfile.mkdtemp())]
        [True]
    """
    return enrich(out_dir, loaded, EnrichSteps(maxima=MaximaStep(dataset, scan), describe=describe, progress=progress))


def attach_judges(out_dir: str | Path, judges: Sequence[LoadedModel]) -> list[dict[str, Any]]:
    """`enrich` with the judges step alone: the judges' verdicts on every finished class-dream record of the run
    in `out_dir` (see `judge_records`); returns the judged records.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.runs import dream_targets
        >>> from dreamy.vision import DreamConfig
        >>> out, cnn = __import__("tempfile").mkdtemp(), load("tiny:cnn")
        >>> _ = dream_targets(cnn, ["logits:3", "conv3:1"], DreamConfig(steps=2), out_dir=out, progress=False)
        >>> [(r["target"], r["judges"][0]["judge"]) for r in attach_judges(out, [cnn])]
        [('logits:3', 'tiny:cnn')]
    """
    return enrich(out_dir, None, EnrichSteps(judges=tuple(judges)))


def maxima_of(loaded: LoadedModel, records: Sequence[dict[str, Any]], step: MaximaStep, out: Path,
              run: Mapping[str, Any], progress: bool = True) -> list[dict[str, Any]]:
    """Copies of the finished `records` of the run `run` in folder `out` with their dataset maxima (`maxima`,
    `maxima_dataset`; image maxima copied into `out/maxima/`) and, for a prompt run, the windows of the prompt's
    own length (`maxima_matched`, `maxima_matched_dataset`); records without maxima are left out.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from dreamy.models import load
        >>> out = Path(tempfile.mkdtemp())
        >>> [r["maxima_dataset"] for r in maxima_of(load("tiny:cnn"), [{"kind": "image", "target": "conv3:1"}],
        ...  MaximaStep("photos", {"limit": 4, "cache_dir": None}), out, {"kind": "image"}, progress=False)]
        ['photos[:4]']
    """
    from dreamy import maxima
    from dreamy.maxima.images import label_classes

    kind = record_kind(run) or ("image" if loaded.kind == "vision" else "prompt")
    layout = prompt_layout(run)
    good = [r["target"] for r in records if "error" not in r]
    if not good:
        return []
    matched: dict[str, Any] = {}
    if step.dataset:
        if kind == "image":
            found = maxima.image_maxima(loaded, good, step.dataset, progress=progress, **step.scan)
        else:
            found = maxima.text_maxima(loaded, good, step.dataset, lengths=[layout.n_tokens] if layout else [],
                                       prefix=layout.prefix if layout else "", suffix=layout.suffix if layout else "",
                                       progress=progress, **step.scan)
            matched = dict(found.at(layout.n_tokens)) if layout else {}
    else:
        cache = maxima.default_cache_dir()
        context = (lambda m: not layout or m.settings.get("window") != layout.n_tokens)
        found = {t: maxima.load_cached_maxima(cache, loaded.name, t, matching=context) for t in good}
        if layout:
            same = (lambda m: m.settings.get("window") == layout.n_tokens
                    and (m.settings.get("prefix") or "") == layout.prefix
                    and (m.settings.get("suffix") or "") == layout.suffix)
            matched = {t: maxima.load_cached_maxima(cache, loaded.name, t, matching=same) for t in good}
    updated = []
    for record in records:
        entry = found.get(record["target"])
        if entry is None or "error" in record:
            continue
        items = entry.gallery_items()
        if kind == "image":
            items = label_classes(items, entry.dataset, loaded)
        for j, item in enumerate(items):
            if "image" in item:
                name = f"maxima/{safe_name(record['target'])}_{j}.png"
                write_atomic(out / name, Path(item["image"]).read_bytes())
                item["image"] = name
        record = {**record, "maxima": items, "maxima_dataset": entry.dataset}
        windows = matched.get(record["target"])
        if windows is not None:
            record.update(maxima_matched=windows.gallery_items(), maxima_matched_dataset=windows.dataset)
        updated.append(record)
    return updated


def _described_and_plotted(loaded: LoadedModel, records: Mapping[str, dict[str, Any]], got_maxima: set[str],
                           describe: bool, out: Path, kind: str | None) -> list[dict[str, Any]]:
    """The finished prompt records that just got maxima, described over those windows (`describe`) with their
    frontier plot redrawn with the windows as points, and (`describe`) those with no description yet."""
    updated = []
    for target, record in records.items():
        if "error" in record or record_kind(record, default=kind) != "prompt":
            continue
        fresh = target in got_maxima
        undescribed = describe and "description" not in record and "description_error" not in record
        if not fresh and not undescribed:
            continue
        new = describe_record(loaded, record) if describe else record
        if fresh:
            new = _with_plot(new, out)
        if fresh or new is not record:
            updated.append(new)
    return updated


def _with_plot(record: dict[str, Any], out: Path) -> dict[str, Any]:
    """`record` with its frontier plot (re)drawn into `out` (a plot that fails is only logged)."""
    name = record.get("plot") or plot_name(record["target"], "frontier")
    try:
        write_atomic(out / name, frontier_png(record))
    except Exception as error:  # a plot must never cost the run its maxima
        log.warning("no plot for %s: %s: %s", record["target"], type(error).__name__, error)
        return record
    return {**record, "plot": name}


def judge_records(judges: Sequence[LoadedModel], records: Sequence[dict[str, Any]], directory: str | Path, *,
                  default_kind: str | None = "image") -> list[dict[str, Any]]:
    """Add each judge's verdicts to the class-logit image records of a run written in `directory`.

    Every image of a record is judged from its PNG (what the gallery shows). A record gets
    `judges`: one entry per judge for its best image (the one with the record's activation), with
    `probabilities` of every image. Returns the updated records (the others are left out). A record that does not
    say its kind (`core.records.record_kind`) is of `default_kind`.

    Example:
        >>> import tempfile
        >>> from dreamy.models import load
        >>> from dreamy.runs import dream_targets
        >>> from dreamy.vision import DreamConfig
        >>> out = tempfile.mkdtemp()
        >>> records = dream_targets(load("tiny:cnn"), ["logits:3", "conv3:1"], DreamConfig(steps=2), out_dir=out, progress=False)
        >>> judged = judge_records([load("tiny:cnn")], records, out)
        >>> [r["target"] for r in judged], sorted(judged[0]["judges"][0])
        (['logits:3'], ['judge', 'label', 'probabilities', 'probability', 'rank', 'target', 'top5'])
    """
    todo = [(r, class_index(r["target"])) for r in records
            if "error" not in r and r.get("images") and record_kind(r, default=default_kind) == "image"]
    todo = [(r, c) for r, c in todo if c is not None]
    if not todo:
        return []
    images, targets, owners = [], [], []
    for k, (record, target) in enumerate(todo):
        for name in record["images"]:
            images.append(read_png(Path(directory) / name))
            targets.append(target)
            owners.append(k)
    sizes = {tuple(image.shape) for image in images}
    stacked = [torch.stack(images)] if len(sizes) == 1 else [image[None] for image in images]
    updated = [dict(record, judges=[]) for record, _ in todo]
    for judge in judges:
        verdicts: list[Verdict] = []
        start = 0
        for chunk in stacked:
            verdicts += judge_images(judge, chunk, targets[start : start + len(chunk)])
            start += len(chunk)
        for k, record in enumerate(updated):
            mine = [v for v, owner in zip(verdicts, owners) if owner == k]
            activations = record.get("activations") or [record.get("activation")]
            best = max(range(len(mine)), key=lambda j: activations[j] if j < len(activations) and activations[j] is not None else float("-inf"))
            record["judges"].append({**mine[best].to_record(), "probabilities": [v.probability for v in mine]})
    return updated


def steering_of(loaded: LoadedModel, records: Sequence[dict[str, Any]], config: Any, *,
                default_kind: str | None = "prompt") -> list[dict[str, Any]]:
    """Copies of the finished prompt `records` with their `"steering"` (`dreamy.steering.steer_many`: the
    continuations, the input score over the record's `maxima` windows, the output score and the fluency cost) or,
    for a target that cannot be steered, `"steering_error"`. Error records and image records are left out; a record
    that does not say its kind (`core.records.record_kind`) is of `default_kind`.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.steering import SteerConfig
        >>> out = steering_of(load("tiny:lm"), [{"kind": "prompt", "target": "model.layers.1:3"},
        ...                                     {"kind": "prompt", "target": "logits:3"}], SteerConfig(prompts=("A",), new_tokens=2))
        >>> sorted(out[0]["steering"])[:3], out[1]["steering_error"][:35]
        (['alpha', 'alpha_source', 'continuations'], "cannot steer target 'logits:3': an ")
    """
    from dreamy.steering import steer_many, steering_direction

    todo = [r for r in records if "error" not in r and record_kind(r, default=default_kind) == "prompt"]
    good, out = [], {}
    for record in todo:
        fresh = {k: v for k, v in record.items() if k not in ("steering", "steering_error")}
        try:
            steering_direction(loaded, record["target"])
            good.append(fresh)
        except Exception as error:
            out[record["target"]] = {**fresh, "steering_error": str(error).splitlines()[0]}
    if good:
        windows = {r["target"]: r.get("maxima") or [] for r in good}
        for record, result in zip(good, steer_many(loaded, [r["target"] for r in good], config, windows=windows)):
            steering = result.to_records()[0]
            steering.pop("kind")
            out[record["target"]] = {**record, "steering": steering}
    return [out[r["target"]] for r in todo]


__all__ = ["EnrichSteps", "MaximaStep", "attach_judges", "attach_maxima", "enrich", "judge_records", "maxima_of",
           "steering_of"]
