"""The prompt side of the gallery: one feature-dashboard card per prompt target, and the index over them.

A card shows, for one target: its frontier plot (activation against cross-entropy, dataset windows as
points) when the record has one (`"plot"`), the output-side tokens (VocabProj promoted / suppressed, the
top TokenChange tokens, from `"description"`), the EPO frontier with each token shaded by its attribution,
and the dataset maxima windows with each token shaded by its activation. The index (`feature_index`) has one
row per prompt target: best dream activation, the best dataset window's activation, whether a dream
beats that window at or below its cross-entropy, and the top promoted tokens, each linked to its card.
Records from older runs (no plot, no description) render without those parts. All record text is escaped.

Example:
    >>> record = {"target": "m.layers.0:3", "activation": 2.0, "frontier": [{"text": "a", "activation": 2.0, "xentropy": 4.0}],
    ...           "maxima": [{"text": "b", "activation": 1.0, "xentropy": 5.0}],
    ...           "description": {"vocab_proj": {"promoted": [["<x>", 1.5]], "suppressed": []}}}
    >>> beats_best_window(record), "&lt;x&gt;" in feature_index([record])
    (True, True)
"""

from __future__ import annotations

from typing import Any, Sequence

from dreamy.report.html import anchor, esc, fmt

INDEX_TOKENS = 5
STYLE = """
.card{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start;margin-bottom:8px}
img.plot{width:480px;max-width:100%;border:1px solid #ddd}
.outtok td{font-family:monospace;white-space:pre} .outtok .up{color:#b03a10} .outtok .down{color:#1f5fc8}
.findex td.tokens{font-family:monospace;white-space:pre}
"""


def _shaded_tokens(tokens: Sequence[str], weights: Sequence[float]) -> str:
    if not tokens:
        return ""
    scale = max((abs(w) for w in weights), default=0.0) or 1.0
    spans = []
    for token, weight in zip(tokens, list(weights) + [0.0] * (len(tokens) - len(weights))):
        alpha = min(1.0, abs(weight) / scale) * 0.8
        color = f"rgba(230,80,40,{alpha:.2f})" if weight >= 0 else f"rgba(40,110,230,{alpha:.2f})"
        spans.append(f'<span class="tok" style="background:{color}" title="{weight:.3g}">{esc(token)}</span>')
    return "".join(spans)


def _best_window(record: dict[str, Any]) -> dict[str, Any] | None:
    windows = [m for m in record.get("maxima") or [] if isinstance(m.get("activation"), (int, float))]
    return max(windows, key=lambda m: m["activation"], default=None)


def beats_best_window(record: dict[str, Any]) -> bool | None:
    """Whether a frontier prompt activates more than the best dataset window at or below that window's
    cross-entropy; None without windows (or without the window's cross-entropy).

    Example:
        >>> beats_best_window({"frontier": [{"activation": 3.0, "xentropy": 6.0}], "maxima": [{"activation": 1.0, "xentropy": 5.0}]})
        False
    """
    best = _best_window(record)
    if best is None or not isinstance(best.get("xentropy"), (int, float)):
        return None
    return any(p["activation"] > best["activation"] and p["xentropy"] <= best["xentropy"]
               for p in record.get("frontier") or [])


def _tokens(pairs: Sequence[Sequence[Any]], limit: int | None = None) -> str:
    return " ".join(f'<span title="{fmt(value)}">{esc(repr(token))}</span>' for token, value in list(pairs)[:limit])


def _output_tokens(record: dict[str, Any]) -> str:
    """The VocabProj and TokenChange tokens of a record, as a small table ('' without a description)."""
    if record.get("description_error"):
        return f'<div class="label error">no output-side description: {esc(record["description_error"])}</div>'
    description = record.get("description")
    if not description:
        return ""
    rows = []
    for key, name in (("vocab_proj", "VocabProj"), ("token_change", "TokenChange")):
        part = description.get(key)
        if not part:
            continue
        note = f' ({esc(part["contexts"])}, {esc(part.get("n_contexts", "?"))} contexts)' if "contexts" in part else ""
        rows.append(f'<tr><th>{name}{note}</th><td class="up">+ {_tokens(part.get("promoted", []))}</td></tr>'
                    f'<tr><th></th><td class="down">− {_tokens(part.get("suppressed", []))}</td></tr>')
    return ('<div><div class="label">output side: tokens the direction promotes (+) and suppresses (−)</div>'
            f'<table class="outtok">{"".join(rows)}</table></div>')


def prompt_card(record: dict[str, Any]) -> str:
    """The body of a prompt target's card (see the module docstring).

    Example:
        >>> '<img class="plot" src="images/p.png"' in prompt_card({"plot": "images/p.png", "frontier": []})
        True
    """
    top = []
    if record.get("plot"):
        src = esc(record["plot"])
        top.append(f'<a href="{src}" target="_blank"><img class="plot" src="{src}" alt="activation against '
                   f'cross-entropy: dream frontier and dataset windows" loading="lazy"></a>')
    outputs = _output_tokens(record)
    if outputs:
        top.append(outputs)
    rows = []
    for point in sorted(record.get("frontier", []), key=lambda p: p["xentropy"]):
        tokens = point.get("tokens") or [point.get("text", "")]
        rows.append(f"<tr><td>{fmt(point['xentropy'])}</td><td>{fmt(point['activation'])}</td>"
                    f"<td>{_shaded_tokens(tokens, point.get('token_attribution', []))}</td></tr>")
    body = ('<div class="label">dream frontier</div>'
            "<table><tr><th>cross-entropy</th><th>activation</th><th>prompt (shaded by attribution)</th></tr>"
            + "".join(rows) + "</table>")
    maxima = record.get("maxima") or []
    if maxima:
        body += (f'<div class="label">dataset maxima ({esc(record.get("maxima_dataset", "corpus"))})</div>'
                 "<table><tr><th>cross-entropy</th><th>activation</th><th>window</th></tr>"
                 + "".join(f"<tr><td>{fmt(m.get('xentropy', ''))}</td><td>{fmt(m['activation'])}</td>"
                           f"<td>{_shaded_tokens(m.get('tokens') or [m.get('text', '')], m.get('token_activations', []))}</td></tr>"
                           for m in maxima) + "</table>")
    return (f'<div class="card">{"".join(top)}</div>' if top else "") + body


def feature_index(records: Sequence[dict[str, Any]]) -> str:
    """A table with one row per prompt target (see the module docstring); '' when there are none.

    Example:
        >>> feature_index([{"kind": "image", "target": "conv1:0"}])
        ''
    """
    prompts = [r for r in records if r.get("kind") == "prompt" or "frontier" in r]
    if not prompts:
        return ""
    verdicts = {True: '<span class="beats">yes</span>', False: '<span class="short">no</span>', None: "–"}
    rows = []
    for record in prompts:
        link = f'<a href="#{esc(anchor(str(record["target"])))}">{esc(record["target"])}</a>'
        if "error" in record:
            rows.append(f'<tr><td>{link}</td><td colspan="4" class="error">failed</td></tr>')
            continue
        best = _best_window(record)
        promoted = ((record.get("description") or {}).get("vocab_proj") or {}).get("promoted", [])
        rows.append(f"<tr><td>{link}</td><td>{fmt(record.get('activation'))}</td>"
                    f"<td>{fmt(best['activation']) if best else '–'}</td><td>{verdicts[beats_best_window(record)]}</td>"
                    f'<td class="tokens">{_tokens(promoted, INDEX_TOKENS)}</td></tr>')
    return ('<div class="target findex"><h2>index <small>one row per prompt target; click a target for its card</small></h2>'
            "<table><tr><th>target</th><th>best dream activation</th><th>best dataset window</th>"
            "<th>a dream beats it at ≤ its cross-entropy</th><th>top promoted tokens (VocabProj)</th></tr>"
            + "".join(rows) + "</table></div>")
