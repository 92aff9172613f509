"""The dashboard side of the gallery (`dream dashboard`): one card per target and an index over them.

A card shows the target's density and maximum, the histogram of its firing values (log-spaced bins, drawn as
bars), its logit tops (an SAE feature's promoted and suppressed tokens), the top examples each shaded by the
target's value at every token of its scanned window, and, folded, the quantile-band and random samples. A dead
target (never > 0) says so. The index (`dashboard_index`) has one row per target, with density and max
activation columns whose heads sort the rows and cards (`prompt_cards.SORT_SCRIPT`), and each row's top tokens
(the tokens where the best example peaks) for the browser's find. `write_dashboard_gallery` writes the index
as index.html and every card as a page of its own (4,096 cards on one page do not open). All record text is
escaped.

Example:
    >>> record = {"kind": "dashboard", "target": "m.layers.0:3", "activation": 2.0, "density": 0.25, "dead": False,
    ...           "statistics": {"max": 2.0, "histogram": {"log10_edges": [0.0, 0.05], "counts": [3]}},
    ...           "maxima": [{"tokens": ["<a>", "b"], "context_activations": [0.0, 2.0], "activation": 2.0, "index": 1}]}
    >>> "&lt;a&gt;" in dashboard_card(record), 'data-score-density="0.25"' in dashboard_index([record])
    (True, True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from dreamy.core.files import safe_name, write_atomic
from dreamy.core.records import record_kind
from dreamy.report.html import STYLE as PAGE_STYLE, anchor, esc, fmt, short_target
from dreamy.report.prompt_cards import SORT_SCRIPT, STYLE as PROMPT_STYLE, _shaded_tokens, _tokens

STYLE = """
.hist{display:flex;align-items:flex-end;gap:1px;height:60px;border-bottom:1px solid #999;margin:4px 0}
.hist span{display:inline-block;width:6px;background:#e65028}
.dead{color:#888;font-style:italic}
"""
HIST_HEIGHT = 60  # pixels of the tallest histogram bar
CARDS_FOLDER = "cards"  # a dashboard run's card pages, one per target (`write_dashboard_gallery`)


def _histogram(statistics: dict[str, Any]) -> str:
    histogram = statistics.get("histogram") or {}
    counts, edges = histogram.get("counts") or [], histogram.get("log10_edges") or []
    if not counts:
        return ""
    top = max(counts) or 1
    bars = "".join(f'<span style="height:{max(1, round(HIST_HEIGHT * c / top))}px" '
                   f'title="{fmt(10 ** edges[i])}..{fmt(10 ** edges[i + 1])}: {c}"></span>'
                   for i, c in enumerate(counts) if i + 1 < len(edges))
    return (f'<div><div class="label">firing values, log-spaced bins {fmt(10 ** edges[0])}..{fmt(10 ** edges[-1])}</div>'
            f'<div class="hist">{bars}</div></div>')


def _values(example: dict[str, Any]) -> list[float]:
    """The value at each token of an example (its scanned context's; None, no value there, as 0)."""
    values = example.get("context_activations") or example.get("token_activations") or []
    return [v or 0.0 for v in values]


def _examples(examples: Sequence[dict[str, Any]]) -> str:
    return ("<table><tr><th>activation</th><th>window (shaded by the value at each token)</th></tr>"
            + "".join(f"<tr><td>{fmt(e.get('activation'))}</td>"
                      f"<td>{_shaded_tokens(e.get('tokens') or [e.get('text') or ''], _values(e))}</td></tr>"
                      for e in examples) + "</table>")


def dashboard_card(record: dict[str, Any]) -> str:
    """The body of a dashboard target's card (see the module docstring).

    Example:
        >>> "never fires" in dashboard_card({"dead": True, "statistics": {"tokens": 8}})
        True
    """
    statistics = record.get("statistics") or {}
    if record.get("dead"):
        return f'<div class="dead">never fires (> 0) on the {esc(statistics.get("tokens", "?"))} scanned tokens</div>'
    top = [f'<div class="label">density {fmt(record.get("density"))} · max {fmt(statistics.get("max"))} · mean '
           f'{fmt(statistics.get("mean"))} · {esc(statistics.get("fired", "?"))} of {esc(statistics.get("tokens", "?"))} tokens</div>']
    histogram = _histogram(statistics)
    if histogram:
        top.append(histogram)
    if record.get("logit_tops_error"):
        top.append(f'<div class="label error">no logit tops: {esc(record["logit_tops_error"])}</div>')
    elif record.get("logit_tops"):
        tops = record["logit_tops"]
        top.append('<div><div class="label">logit tops (VocabProj)</div><table class="outtok">'
                   f'<tr><td class="up">+ {_tokens(tops.get("promoted", []))}</td></tr>'
                   f'<tr><td class="down">− {_tokens(tops.get("suppressed", []))}</td></tr></table></div>')
    body = f'<div class="card">{"".join(top)}</div>'
    body += (f'<div class="label">top examples ({esc(record.get("maxima_dataset", "corpus"))})</div>'
             + _examples(record.get("maxima") or []))
    groups: dict[str, list[dict[str, Any]]] = {}
    for sample in record.get("samples") or []:
        groups.setdefault(str(sample.get("group")), []).append(sample)
    for group, samples in groups.items():
        body += f"<details><summary>{esc(group)} ({len(samples)})</summary>{_examples(samples)}</details>"
    return body


def _peak_tokens(record: dict[str, Any], limit: int = 3) -> list[str]:
    """The tokens where the top examples peak (their last token: where the value was read)."""
    peaks = []
    for example in (record.get("maxima") or [])[:limit]:
        tokens, index = example.get("tokens") or [], example.get("index")
        start = example.get("context_start")
        at = index - start if isinstance(index, int) and isinstance(start, int) else len(tokens) - 1
        if 0 <= at < len(tokens):
            peaks.append(tokens[at])
    return peaks


def card_page(record: dict[str, Any]) -> str:
    """The file name of a dashboard target's own card page, under the run's folder: `cards/<safe name>.html`.

    Example:
        >>> card_page({"target": "sae=x#3"})
        'cards/sae_x_3-f471d62c.html'
    """
    return f"{CARDS_FOLDER}/{safe_name(str(record['target']))}.html"


def write_dashboard_gallery(directory: str | Path, records: Sequence[dict[str, Any]], title: str) -> Path:
    """Write a dashboard run's gallery: `index.html` holds the index only (one row per target, sortable, its link
    to the target's card) and each target's card is a page of its own (`card_page`), so that 4,096 features
    open at once; returns the index's path.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> _ = write_dashboard_gallery(out, [{"kind": "dashboard", "target": "x:1", "dead": True}], "t")
        >>> sorted(p.name for p in (out / "cards").iterdir()), 'href="cards/x_1-' in (out / "index.html").read_text()
        (['x_1-0b788078.html'], True)
    """
    folder = Path(directory)
    (folder / CARDS_FOLDER).mkdir(parents=True, exist_ok=True)
    style = f"<style>{PAGE_STYLE}{PROMPT_STYLE}{STYLE}</style>"
    for record in records:
        target = str(record["target"])
        head = (f'<h2 title="{esc(target)}">{esc(short_target(target))}</h2><div class="label">model '
                f'{esc(record.get("model", "?"))} · <a href="../index.html">index</a></div>')
        write_atomic(folder / card_page(record),
                     f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(short_target(target))}</title>{style}"
                     f"</head><body>{head}{dashboard_card(record)}</body></html>")
    path = folder / "index.html"
    write_atomic(path, f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>{style}</head>"
                       f"<body><h1>{esc(title)}</h1>{dashboard_index(records, pages=True)}</body></html>")
    return path


def dashboard_index(records: Sequence[dict[str, Any]], pages: bool = False) -> str:
    """A table with one row per dashboard target, sortable by density and max activation; '' when there are none.
    Each row links to the target's card below it on the page, or with `pages` to its own page (`card_page`).

    Example:
        >>> dashboard_index([{"kind": "prompt", "target": "x:1"}])
        ''
    """
    boards = [r for r in records if record_kind(r) == "dashboard"]
    if not boards:
        return ""
    rows = []
    for record in boards:
        target_id = esc(anchor(str(record["target"])))
        statistics = record.get("statistics") or {}
        data = "".join(f' data-score-{name}="{value}"' for name, value in (("density", record.get("density")),
                                                                           ("max", statistics.get("max")))
                       if value is not None)
        href = esc(card_page(record)) if pages else f"#{target_id}"
        link = f'<a href="{href}" title="{esc(record["target"])}">{esc(short_target(str(record["target"])))}</a>'
        peaks = " ".join(esc(repr(t)) for t in _peak_tokens(record))
        rows.append(f'<tr data-target="{target_id}"{data}><td>{link}</td><td>{fmt(record.get("density"))}</td>'
                    f'<td>{fmt(statistics.get("max"))}</td><td>{"dead" if record.get("dead") else ""}</td>'
                    f'<td class="tokens">{peaks}</td></tr>')
    dead = sum(1 for r in boards if r.get("dead"))
    return (f'<div class="findex"><div class="label">{len(boards)} target(s), {dead} dead; click a column head to sort</div>'
            '<table id="findex-table"><tr><th>target</th><th class="sortable" onclick="dreamySort(\'density\')">density</th>'
            '<th class="sortable" onclick="dreamySort(\'max\')">max</th><th></th><th>peak tokens</th></tr>'
            + "".join(rows) + "</table></div>" + SORT_SCRIPT)
