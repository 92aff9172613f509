"""Image cards of a gallery: a target's dreams beside its dataset maxima and judges' verdicts, its per-step plot,
and a layer sheet for two or more channels of one site.

Class dreams (one positive `logits:N` term) are shown at 224 px, other dreams at 160; a click opens the PNG at
full resolution. Two or more single-channel targets of one site (`_blocks.8:0-63`) also get a layer sheet at the
top of the page: one grid of all the channels with their activations, each linked to its section.

Example:
    >>> records = [{"target": f"conv3:{i}", "images": [f"images/{i}.png"], "activation": float(i)} for i in range(3)]
    >>> "conv3 · 3 channels" in layer_sheets(records)
    True
"""

from __future__ import annotations

from typing import Any, Sequence

from dreamy.core.records import record_kind
from dreamy.datasets.images import set_classes
from dreamy.models.loading import imagenet_class_names
from dreamy.report.html import anchor, esc, figure, fmt
from dreamy.targets import Neuron, TargetError, class_index, parse


def _channel(spec: str) -> tuple[str, int] | None:
    """(site and reduction, unit) of a one-term single-channel target that is not a class dream, else None."""
    try:
        target = parse(spec)
    except TargetError:
        return None
    if len(target.terms) != 1 or target.class_index is not None or target.reads_logits:
        return None
    term = target.terms[0]
    if not isinstance(term.unit, Neuron) or term.coef != 1:
        return None
    return str(term.site) + (f"/{term.reduce}" if term.reduce else ""), term.unit.index


def _is_class_dream(spec: Any) -> bool:
    try:
        return class_index(str(spec)) is not None
    except TargetError:
        return False


def layer_sheets(records: Sequence[dict[str, Any]]) -> str:
    """One grid per site with two or more single-channel targets (same reduction): every channel's dream
    with its unit and activation, in unit order, linked to its section.

    Example:
        >>> records = [{"target": f"conv3:{i}", "images": [f"images/{i}.png"], "activation": float(i)} for i in range(3)]
        >>> "conv3 · 3 channels" in layer_sheets(records)
        True
    """
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for record in records:
        found = _channel(str(record.get("target", "")))
        if found and record_kind(record, default="image") == "image":
            key, unit = found
            groups.setdefault(key, []).append((unit, record))
    sheets = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        cells = []
        for unit, record in sorted(members, key=lambda m: m[0]):
            link = f'<a class="to" href="#{esc(anchor(record["target"]))}">#{unit}</a>'
            if record.get("error") or not record.get("images"):
                cells.append(f'<figure><div class="error">failed</div><figcaption>{link}</figcaption></figure>')
                continue
            src = record["images"][0]
            cells.append(f'<figure><a href="{esc(src)}" target="_blank"><img src="{esc(src)}" alt="{esc(record["target"])}" '
                         f'loading="lazy"></a><figcaption>{link} <b>{fmt(record.get("activation"))}</b></figcaption></figure>')
        sheets.append(f'<div class="target sheet"><h2>{esc(key)} · {len(members)} channels <small>layer sheet: '
                      'activation of each final image; click a number for its section, an image for full resolution'
                      f'</small></h2><div class="grid">{"".join(cells)}</div></div>')
    return "".join(sheets)


def steps_figure(src: str) -> str:
    """The objective-per-step plot as a small figure that sits in the dreams' row, beside them (as tall as a
    dream); a click opens it at full resolution.

    Example:
        >>> '<img class="plot" src="images/a_steps.png"' in steps_figure("images/a_steps.png")
        True
    """
    return (f'<figure class="steps"><a href="{esc(src)}" target="_blank" title="open at full resolution">'
            f'<img class="plot" src="{esc(src)}" alt="objective per step" loading="lazy"></a>'
            "<figcaption>objective per step</figcaption></figure>")


def image_section(record: dict[str, Any]) -> str:
    """The body of an image target's card: its dreams with their objective-per-step plot beside them in one row,
    then its dataset maxima.

    Example:
        >>> body = image_section({"images": ["a.png"], "activation": 1.0, "plot": "a_steps.png"})
        >>> body.index("a.png") < body.index('class="steps"') < body.index("</div></div>")  # in the dreams' row
        True
    """
    images = record.get("images", [])
    acts = record.get("activations", [record.get("activation")] * len(images))
    kind = "class" if _is_class_dream(record.get("target", "")) else "plain"
    steps = steps_figure(record["plot"]) if record.get("plot") else ""
    groups = [f'<div class="{kind}"><div class="label">dreams (activation of the final image)</div><div class="row">'
              + "".join(figure(src, a) for src, a in zip(images, acts)) + steps + "</div></div>"]
    maxima = record.get("maxima") or []
    if maxima:
        groups.append(f'<div class="maxima"><div class="label">most activating images ({esc(record.get("maxima_dataset", "dataset"))})'
                      '</div><div class="row">'
                      + "".join(figure(m["image"], m["activation"], m.get("label", "")) for m in maxima) + "</div></div>")
    return '<div class="groups">' + "".join(groups) + "</div>"


def comparison(record: dict[str, Any]) -> str:
    """' · dream / best dataset example = r' when an image record has both numbers (the page never shows it on a
    prompt card: a prompt's `maxima` are longer context windows, its card states the verdict at matched length).

    A class dream (`logits:N`) whose maxima carry `classes` (a set that labels its images) is compared only with
    the best example showing class N; when none does, the card says so in place of the ratio. A class dream whose
    set is unlabelled keeps the plain comparison and says the set is unlabelled for classes.

    Example:
        >>> "dream 3 vs best dataset example 2 (1.5x)" in comparison({"activation": 3.0, "maxima": [{"activation": 2.0}]})
        True
        >>> "hold no goldfish" in comparison({"target": "logits:1", "activation": 3.0,
        ...                                   "maxima": [{"activation": 2.0, "classes": [967]}]})
        True
    """
    maxima = record.get("maxima") or []
    dream = record.get("activation")
    if not maxima or not isinstance(dream, (int, float)):
        return ""
    index = _class_of(record.get("target", ""))
    labelled = index is not None and all("classes" in m for m in maxima)
    if labelled:
        name = _class_name(int(index))
        showing = [m for m in maxima if index in m["classes"]]
        if not showing:
            held = set_classes(str(record.get("maxima_dataset", "photos")))
            why = (f"none of these crops shows {name}" if held and index in held
                   else f"the photos hold no {name}")
            return (f' · <span>{esc(why)}: the crops shown are the most activating, not examples '
                    'of the class</span>')
        maxima = showing
    best = max(m["activation"] for m in maxima)
    verdict = "beats" if dream > best else "short"
    ratio = f" ({dream / best:.2g}x)" if best > 0 else ""
    example = f"best crop of a photo with {esc(_class_name(int(index)))}" if labelled else "best dataset example"
    note = " · set unlabelled for classes" if index is not None and not labelled else ""
    return f' · <span class="{verdict}">dream {fmt(dream)} vs {example} {fmt(best)}{ratio}</span>{note}'


def _class_of(spec: Any) -> int | None:
    try:
        return class_index(str(spec))
    except TargetError:
        return None


def _class_name(index: int) -> str:
    """The ImageNet name of class `index` (labelled maxima are ImageNet classes), else 'class N'."""
    names = imagenet_class_names()
    return names[index] if 0 <= index < len(names) else f"class {index}"


def judge_verdicts(record: dict[str, Any]) -> str:
    """' · judge: p(class) and rank' per judge (green when the class is in its top-5), top-5 on hover and below."""
    parts = []
    for verdict in record.get("judges") or []:
        name = str(verdict.get("judge", "judge")).split(":", 1)[-1]
        top5 = ", ".join(str(c) for c in verdict.get("top5", []))
        mark = "beats" if verdict.get("rank", 10**9) <= 5 else "short"
        parts.append(f' · <span class="{mark}" title="top-5 of {esc(name)}: {esc(top5)}">{esc(name)}: '
                     f'p={fmt(verdict.get("probability"))}, rank {esc(verdict.get("rank"))}</span>'
                     f'<span class="top5"> (top-5: {esc(top5)})</span>')
    return "".join(parts)


