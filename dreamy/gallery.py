"""Galleries: PNG files for dreamed images and one `index.html` that shows every target's record.

Image targets show their dreams with the activation under each, beside the dataset maxima when the
record has them; a click opens the PNG at full resolution; class dreams (`logits:N`) are shown at 224
px, other dreams at 160. The judges' verdicts (`--judge`) follow the dataset-maxima verdict. Two or
more channel targets of one site (`_blocks.8:0-63`) also get a layer sheet at the top of the page: one
grid of all the channels with their activations, each linked to its section. Image cards also show
their objective-per-step plot (`record["plot"]`). Prompt targets get feature-dashboard cards and an index
at the top of the page (`dreamy.gallery_prompt`). All text from records (dreamed prompts above all) is
HTML-escaped.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_index(out, [{"target": "x:1", "method": "epo", "model": "tiny:lm", "frontier": [
    ...     {"text": "<script>", "tokens": ["<script>"], "token_attribution": [1.0], "activation": 2.0, "xentropy": 3.0}]}])
    >>> "&lt;script&gt;" in (out / "index.html").read_text()
    True
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any, Sequence

from dreamy.results import write_atomic

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:22px} h2{font-size:16px;margin:0 0 4px 0;font-family:monospace} h2 small{font-family:system-ui;font-weight:normal;color:#555}
.target{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:12px 0}
.row{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start} .groups{display:flex;flex-wrap:wrap;gap:24px}
figure{margin:0;text-align:center;font-size:12px;width:160px} figure img{width:160px;height:160px;border:1px solid #ccc}
.class figure{width:224px} .class figure img{width:224px;height:224px}
.sheet .grid{display:flex;flex-wrap:wrap;gap:4px} .sheet figure{width:96px} .sheet figure img{width:96px;height:96px}
.sheet figure a.to{color:#555;text-decoration:none;font-family:monospace}
.maxima figure{width:88px} .maxima figure img{width:88px;height:88px}
figcaption b{font-weight:600} figcaption span{display:block;color:#777;font-size:10px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.label{color:#666;font-size:12px;margin:4px 0 4px 0} .error{color:#b00020;font-family:monospace}
.beats{color:#0a7d32;font-weight:600} .short{color:#b00020;font-weight:600}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
.tok{font-family:monospace;white-space:pre;border-radius:2px}
.top5{color:#777;font-size:11px}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else _esc(value)


def _figure(src: str, value: Any, note: str = "") -> str:
    """An image that opens at full resolution on click, its value in bold and an optional note under it."""
    caption = f"<b>{_fmt(value)}</b>" + (f'<span title="{_esc(note)}">{_esc(note)}</span>' if note else "")
    return (f'<figure><a href="{_esc(src)}" target="_blank" title="open at full resolution"><img src="{_esc(src)}" '
            f'alt="{_esc(note or value)}" loading="lazy"></a><figcaption>{caption}</figcaption></figure>')


_CLASS = re.compile(r"(logits|logprobs):\d+")
_CHANNEL = re.compile(r"(?P<site>[A-Za-z0-9_.]+(?:@in)?(?:\[\d+\])?):(?P<unit>\d+)(?P<reduce>/[a-z]+(?:=-?\d+)?)?")


def _anchor(target: str) -> str:
    """The HTML id of a target's section."""
    return "t-" + re.sub(r"[^A-Za-z0-9_.:-]", "_", target)


def _layer_sheets(records: Sequence[dict[str, Any]]) -> str:
    """One grid per site with two or more single-channel targets (same reduction): every channel's dream
    with its unit and activation, in unit order, linked to its section.

    Example:
        >>> records = [{"target": f"conv3:{i}", "images": [f"images/{i}.png"], "activation": float(i)} for i in range(3)]
        >>> "conv3 · 3 channels" in _layer_sheets(records)
        True
    """
    groups: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for record in records:
        found = _CHANNEL.fullmatch(str(record.get("target", "")))
        if found and not _CLASS.fullmatch(record["target"]) and record.get("kind", "image") == "image":
            key = found.group("site") + (found.group("reduce") or "")
            groups.setdefault(key, []).append((int(found.group("unit")), record))
    sheets = []
    for key, members in groups.items():
        if len(members) < 2:
            continue
        cells = []
        for unit, record in sorted(members, key=lambda m: m[0]):
            link = f'<a class="to" href="#{_esc(_anchor(record["target"]))}">#{unit}</a>'
            if record.get("error") or not record.get("images"):
                cells.append(f'<figure><div class="error">failed</div><figcaption>{link}</figcaption></figure>')
                continue
            src = record["images"][0]
            cells.append(f'<figure><a href="{_esc(src)}" target="_blank"><img src="{_esc(src)}" alt="{_esc(record["target"])}" '
                         f'loading="lazy"></a><figcaption>{link} <b>{_fmt(record.get("activation"))}</b></figcaption></figure>')
        sheets.append(f'<div class="target sheet"><h2>{_esc(key)} · {len(members)} channels <small>layer sheet: '
                      'activation of each final image; click a number for its section, an image for full resolution'
                      f'</small></h2><div class="grid">{"".join(cells)}</div></div>')
    return "".join(sheets)


def _image_section(record: dict[str, Any]) -> str:
    images = record.get("images", [])
    acts = record.get("activations", [record.get("activation")] * len(images))
    kind = "class" if _CLASS.fullmatch(str(record.get("target", ""))) else "plain"
    groups = [f'<div class="{kind}"><div class="label">dreams (activation of the final image)</div><div class="row">'
              + "".join(_figure(src, a) for src, a in zip(images, acts)) + "</div></div>"]
    maxima = record.get("maxima") or []
    if maxima:
        groups.append(f'<div class="maxima"><div class="label">most activating images ({_esc(record.get("maxima_dataset", "dataset"))})'
                      '</div><div class="row">'
                      + "".join(_figure(m["image"], m["activation"], m.get("label", "")) for m in maxima) + "</div></div>")
    if record.get("plot"):
        src = _esc(record["plot"])
        groups.append(f'<div><div class="label">objective per step</div><a href="{src}" target="_blank">'
                      f'<img class="plot" src="{src}" alt="objective per step" loading="lazy"></a></div>')
    return '<div class="groups">' + "".join(groups) + "</div>"


def _comparison(record: dict[str, Any]) -> str:
    """' · dream / best dataset example = r' when the record has both numbers."""
    maxima = record.get("maxima") or []
    dream = record.get("activation")
    if not maxima or not isinstance(dream, (int, float)):
        return ""
    best = max(m["activation"] for m in maxima)
    verdict = "beats" if dream > best else "short"
    ratio = f" ({dream / best:.2g}x)" if best > 0 else ""
    return f' · <span class="{verdict}">dream {_fmt(dream)} vs best dataset example {_fmt(best)}{ratio}</span>'


def _judges(record: dict[str, Any]) -> str:
    """' · judge: p(class) and rank' per judge (green when the class is in its top-5), top-5 on hover and below."""
    parts = []
    for verdict in record.get("judges") or []:
        name = str(verdict.get("judge", "judge")).split(":", 1)[-1]
        top5 = ", ".join(str(c) for c in verdict.get("top5", []))
        mark = "beats" if verdict.get("rank", 10**9) <= 5 else "short"
        parts.append(f' · <span class="{mark}" title="top-5 of {_esc(name)}: {_esc(top5)}">{_esc(name)}: '
                     f'p={_fmt(verdict.get("probability"))}, rank {_esc(verdict.get("rank"))}</span>'
                     f'<span class="top5"> (top-5: {_esc(top5)})</span>')
    return "".join(parts)


def render_index(records: Sequence[dict[str, Any]], title: str = "dreamy gallery") -> str:
    """The gallery page for `records` (see the module docstring)."""
    from dreamy.gallery_prompt import STYLE as PROMPT_STYLE, feature_index, prompt_card

    sections = []
    for record in records:
        label = f' <small>{_esc(record["label"])}</small>' if record.get("label") else ""
        head = f'<h2>{_esc(record["target"])}{label}</h2><div class="label">model {_esc(record.get("model", "?"))} · method {_esc(record.get("method", "?"))}'
        if record.get("activation") is not None:
            head += f' · best activation {_fmt(record["activation"])}'
        head += _comparison(record) + _judges(record) + "</div>"
        if "error" in record:
            body = f'<div class="error">failed: {_esc(record["error"])}</div>'
        elif record.get("kind", "image" if "images" in record else None) == "image":
            body = _image_section(record)
        else:
            body = prompt_card(record)
        sections.append(f'<div class="target" id="{_esc(_anchor(str(record["target"])))}">{head}{body}</div>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{STYLE}{PROMPT_STYLE}</style></head>"
            f"<body><h1>{_esc(title)}</h1><p>{len(records)} target(s)</p>{feature_index(records)}{_layer_sheets(records)}"
            f"{''.join(sections)}</body></html>")


def write_index(directory: str | Path, records: Sequence[dict[str, Any]], title: str = "dreamy gallery") -> Path:
    """Write `directory/index.html` atomically and return its path."""
    path = Path(directory) / "index.html"
    write_atomic(path, render_index(records, title))
    return path
