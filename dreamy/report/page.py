"""A run's gallery page: one `index.html` with the prompt index and layer sheets at the top, then every target's
card (image cards: `report.image_cards`; prompt feature dashboards: `report.prompt_cards`; dashboards without dreams,
`dream dashboard`: `report.dashboard_cards`).

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_index(out, [{"target": "x:1", "method": "epo", "model": "tiny:lm", "frontier": [
    ...     {"text": "<script>", "tokens": ["<script>"], "token_attribution": [1.0], "activation": 2.0, "xentropy": 3.0}]}])
    >>> "&lt;script&gt;" in (out / "index.html").read_text()
    True
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dreamy.core.files import write_atomic
from dreamy.core.records import record_kind
from dreamy.report.dashboard_cards import STYLE as DASHBOARD_STYLE, dashboard_card, dashboard_index
from dreamy.report.html import STYLE, anchor, esc, fmt, short_target
from dreamy.report.image_cards import comparison, image_section, judge_verdicts, layer_sheets
from dreamy.report.prompt_cards import STYLE as PROMPT_STYLE, feature_index, prompt_card


def gallery_title(kind: str, model: str) -> str:
    """The title of a run's gallery page.

    Example:
        >>> gallery_title("image", "tiny:cnn")
        'dreamy image dreams: tiny:cnn'
    """
    return f"dreamy {kind} dreams: {model}"


def render_index(records: Sequence[dict[str, Any]], title: str = "dreamy gallery") -> str:
    """The gallery page for `records` (see the module docstring)."""
    sections = []
    for record in records:
        label = f' <small>{esc(record["label"])}</small>' if record.get("label") else ""
        head = f'<h2 title="{esc(record["target"])}">{esc(short_target(str(record["target"])))}{label}</h2><div class="label">model {esc(record.get("model", "?"))} · method {esc(record.get("method", "?"))}'
        if record.get("activation") is not None:
            head += f' · best activation {fmt(record["activation"])}'
        is_image = record_kind(record) == "image"
        head += (comparison(record) if is_image else "") + judge_verdicts(record) + "</div>"
        if "error" in record:
            body = f'<div class="error">failed: {esc(record["error"])}</div>'
        elif is_image:
            body = image_section(record)
        elif record_kind(record) == "dashboard":
            body = dashboard_card(record)
        else:
            body = prompt_card(record)
        sections.append(f'<div class="target" id="{esc(anchor(str(record["target"])))}">{head}{body}</div>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{STYLE}{PROMPT_STYLE}{DASHBOARD_STYLE}</style></head>"
            f"<body><h1>{esc(title)}</h1><p>{len(records)} target(s)</p>{feature_index(records)}{dashboard_index(records)}{layer_sheets(records)}"
            f"{''.join(sections)}</body></html>")


def write_index(directory: str | Path, records: Sequence[dict[str, Any]], title: str = "dreamy gallery") -> Path:
    """Write `directory/index.html` atomically and return its path."""
    path = Path(directory) / "index.html"
    write_atomic(path, render_index(records, title))
    return path
