"""Enrich a finished run's records in its output folder: dataset maxima, judges' verdicts, descriptions, steering.

Each step reads the run's results.json, adds fields to the finished (non-error) records, rewrites the file
and the gallery, and holds the folder's lock while it does (`store.run_lock`). This is what `dream ...
--maxima DATASET`, `--judge MODEL` and `--steer` do after dreaming.

Example (judges on a run with no class dreams judge nothing):
    >>> import tempfile
    >>> attach_judges(tempfile.mkdtemp(), [])
    []
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from dreamy.core.files import safe_name, write_atomic
from dreamy.core.png import read_png
from dreamy.models import LoadedModel
from dreamy.report.page import gallery_title, write_index
from dreamy.report.plots import frontier_png, plot_name
from dreamy.runs.describe import describe_record
from dreamy.runs.store import ResultsStore, run_lock
from dreamy.targets import class_index
from dreamy.vision.judges import Verdict, judge_images

log = logging.getLogger(__name__)


def attach_maxima(out_dir: str | Path, loaded: LoadedModel, dataset: str | None = None, *, describe: bool = True,
                  progress: bool = True, **scan: Any) -> list[dict[str, Any]]:
    """Put dataset maxima into the finished records of the run in `out_dir` and rewrite its gallery.

    With `dataset` (images: photos, fashion-mnist, a folder; text: fortunes, bible-kjv, a file) the maxima
    are found now; without it, cached maxima of an earlier search are attached where they exist. Prompt
    records then get TokenChange over those windows (`describe`) and their frontier plot redrawn with the
    windows as points. Prompt records also get, from the same corpus pass, the windows of the prompt's own length
    scored as the prompt is (`maxima_matched`: the verdict's yardstick, see `maxima.verdict`); `maxima` keeps the
    longer context windows. Returns the updated records. `scan` goes to `maxima.image_maxima` /
    `maxima.text_maxima` (e.g. `k`, `max_words`, `cache_dir`).

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
    with run_lock(out_dir):
        return _attach_maxima(Path(out_dir), loaded, dataset, describe, progress, scan)


def _prompt_layout(run: dict[str, Any] | None) -> tuple[int, str, str] | None:
    """(n_tokens, prefix, suffix) of a prompt run's settings, or None."""
    settings = (run or {}).get("settings") or {}
    if (run or {}).get("kind") != "prompt" or not isinstance(settings.get("n_tokens"), int):
        return None
    return settings["n_tokens"], settings.get("prefix") or "", settings.get("suffix") or ""


def _attach_maxima(out: Path, loaded: LoadedModel, dataset: str | None, describe: bool, progress: bool,
                   scan: dict[str, Any]) -> list[dict[str, Any]]:
    from dreamy import maxima

    store = ResultsStore(out)
    kind = (store.run or {}).get("kind") or ("image" if loaded.kind == "vision" else "prompt")
    layout = _prompt_layout(store.run)
    good = [r["target"] for r in store.records if "error" not in r]
    if not good:
        return []
    matched: dict[str, Any] = {}
    if dataset:
        if kind == "image":
            found = maxima.image_maxima(loaded, good, dataset, progress=progress, **scan)
        else:
            lengths = [layout[0]] if layout else []
            found = maxima.text_maxima(loaded, good, dataset, lengths=lengths, prefix=layout[1] if layout else "",
                                       suffix=layout[2] if layout else "", progress=progress, **scan)
            matched = dict(found.at(layout[0])) if layout else {}
    else:
        cache = maxima.default_cache_dir()
        context = (lambda m: not layout or m.settings.get("window") != layout[0])
        found = {t: maxima.load_cached_maxima(cache, loaded.name, t, matching=context) for t in good}
        if layout:
            same = (lambda m: m.settings.get("window") == layout[0] and (m.settings.get("prefix") or "") == layout[1]
                    and (m.settings.get("suffix") or "") == layout[2])
            matched = {t: maxima.load_cached_maxima(cache, loaded.name, t, matching=same) for t in good}
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
        record = {**record, "maxima": items, "maxima_dataset": entry.dataset}
        windows = matched.get(record["target"])
        if windows is not None:
            record.update(maxima_matched=windows.gallery_items(), maxima_matched_dataset=windows.dataset)
        updated.append(_refresh_prompt_card(loaded, record, out, describe=describe))
    if updated:
        store.add_many(updated)
        write_index(out, store.records, gallery_title(kind, loaded.name))
    return updated


def _refresh_prompt_card(loaded: LoadedModel, record: dict[str, Any], out: Path, describe: bool) -> dict[str, Any]:
    """A prompt record that just got its dataset maxima: TokenChange over those windows, and its frontier plot
    redrawn with the windows as points."""
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


def attach_judges(out_dir: str | Path, judges: Sequence[LoadedModel]) -> list[dict[str, Any]]:
    """Add the judges' verdicts to every finished class-dream record of the run in `out_dir` (see
    `judge_records`) and rewrite its results.json and gallery; returns the judged records.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.runs import dream_targets
        >>> from dreamy.vision import DreamConfig
        >>> out, cnn = __import__("tempfile").mkdtemp(), load("tiny:cnn")
        >>> _ = dream_targets(cnn, ["logits:3", "conv3:1"], DreamConfig(steps=2), out_dir=out, progress=False)
        >>> [(r["target"], r["judges"][0]["judge"]) for r in attach_judges(out, [cnn])]
        [('logits:3', 'tiny:cnn')]
    """
    with run_lock(out_dir):
        store = ResultsStore(out_dir)
        updated = {r["target"]: r for r in judge_records(judges, store.records, out_dir)} if judges else {}
        if updated:
            store.add_many([updated.get(r["target"], r) for r in store.records])  # keeps the gallery's order
            run = store.run or {}
            write_index(out_dir, store.records, gallery_title(run.get("kind", "image"), run.get("model", "?")))
        return list(updated.values())


def judge_records(judges: Sequence[LoadedModel], records: Sequence[dict[str, Any]],
                  directory: str | Path) -> list[dict[str, Any]]:
    """Add each judge's verdicts to the class-logit image records of a run written in `directory`.

    Every image of a record is judged from its PNG (what the gallery shows). A record gets
    `judges`: one entry per judge for its best image (the one with the record's activation), with
    `probabilities` of every image. Returns the updated records (the others are left out).

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
            if "error" not in r and r.get("images") and r.get("kind", "image") == "image"]
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


def steering_of(loaded: LoadedModel, records: Sequence[dict[str, Any]], config: Any) -> list[dict[str, Any]]:
    """Copies of the finished prompt `records` with their `"steering"` (`dreamy.steering.steer_many`: the
    continuations, the input score over the record's `maxima` windows, the output score and the fluency cost) or,
    for a target that cannot be steered, `"steering_error"`. Error records and image records are left out.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.steering import SteerConfig
        >>> out = steering_of(load("tiny:lm"), [{"kind": "prompt", "target": "model.layers.1:3"},
        ...                                     {"kind": "prompt", "target": "logits:3"}], SteerConfig(prompts=("A",), new_tokens=2))
        >>> sorted(out[0]["steering"])[:3], out[1]["steering_error"][:35]
        (['alpha', 'alpha_source', 'continuations'], "cannot steer target 'logits:3': an ")
    """
    from dreamy.steering import steer_many, steering_direction

    todo = [r for r in records if "error" not in r and r.get("kind", "prompt") == "prompt"]
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


def attach_steering(out_dir: str | Path, loaded: LoadedModel, config: Any) -> list[dict[str, Any]]:
    """Steer every finished prompt target of the run in `out_dir` (`steering_of`), rewrite its results.json and
    gallery; returns the updated records. Run it after `attach_maxima`: the input score reads the records' maxima.

    Example:
        >>> import tempfile
        >>> attach_steering(tempfile.mkdtemp(), None, None)
        []
    """
    with run_lock(out_dir):
        store = ResultsStore(out_dir)
        updated = steering_of(loaded, store.records, config) if store.records else []
        if updated:
            by_target = {r["target"]: r for r in updated}
            store.add_many([by_target.get(r["target"], r) for r in store.records])  # keeps the gallery's order
            run = store.run or {}
            write_index(out_dir, store.records, gallery_title(run.get("kind", "prompt"), run.get("model", "?")))
        return updated


__all__ = ["attach_judges", "attach_maxima", "attach_steering", "judge_records", "steering_of"]
