"""The prompt side of the gallery: one feature-dashboard card per prompt target, and the index over them.

A card shows, for one target: its frontier plot (activation against cross-entropy, the matched-length windows
and the context windows as points of their own) when the record has one (`"plot"`), the verdict at matched
length (`maxima.verdict`: does a dream beat the best window of the prompt's own length at or below its
cross-entropy, by how much, and is the winner more than a near copy of a window), the output-side tokens
(VocabProj promoted / suppressed, the top TokenChange tokens, from `"description"`), the token-space labels with
their held-out accuracy (`"labels"`, from `dream prompt --labels`), the steering check (from
`"steering"`: the input score, the output score, the fluency cost and a few steered continuations beside the
unsteered ones, `dream prompt --steer`), the frontier (at most
`FRONTIER_ROWS` rows shown, the rest folded) with each token shaded by its attribution and where its line
started, the matched windows, and the longer context windows, folded and labelled as context (never the
yardstick). The index (`feature_index`) has one row per prompt target; when the records were steered it also
shows the input and output scores, and a click on either column's head sorts the index rows and the cards below
it by that score (highest first; a second click reverses). Targets read from files are named by the
file's name (`sae-l9#3`), the whole spec on hover. Records from older runs (no plot, no description, no matched
windows) render without those parts. All record text is escaped.

Example:
    >>> record = {"target": "m.layers.0:3", "activation": 2.0, "settings": {"n_tokens": 1},
    ...           "frontier": [{"text": "a", "token_ids": [1], "activation": 2.0, "xentropy": 4.0}],
    ...           "maxima_matched": [{"text": "b", "token_ids": [2], "activation": 1.0, "xentropy": 5.0}],
    ...           "description": {"vocab_proj": {"promoted": [["<x>", 1.5]], "suppressed": []}}}
    >>> page = feature_index([record])
    >>> "&lt;x&gt;" in page, "yes (2x" in page
    (True, True)
"""

from __future__ import annotations

from typing import Any, Sequence

from dreamy.core.records import record_kind
from dreamy.maxima.verdict import verdict_of
from dreamy.report.html import anchor, esc, fmt, short_target

INDEX_TOKENS = 5
FRONTIER_ROWS = 12  # frontier rows a card shows before folding the rest
STYLE = """
.card{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start;margin-bottom:8px}
img.plot{width:480px;max-width:100%;border:1px solid #ddd}
.outtok td{font-family:monospace;white-space:pre-wrap} .outtok .up{color:#b03a10} .outtok .down{color:#1f5fc8}
.findex td.tokens{font-family:monospace;white-space:pre-wrap}
.steer td.text{font-family:monospace;white-space:pre-wrap;max-width:520px} th.sortable{cursor:pointer;text-decoration:underline dotted}
"""
# Sorts the index rows and the prompt cards by a numeric column (data-score-NAME on each row; missing sorts last).
SORT_SCRIPT = """<script>
function dreamySort(name){
  var table=document.getElementById('findex-table'); if(!table) return;
  var rows=Array.prototype.slice.call(table.querySelectorAll('tr[data-target]'));
  var down=table.getAttribute('data-sorted')!==name+':down';
  table.setAttribute('data-sorted', name+(down?':down':':up'));
  function v(r){var x=parseFloat(r.getAttribute('data-score-'+name)); return isNaN(x)?-Infinity:x;}
  rows.sort(function(a,b){return down? v(b)-v(a) : v(a)-v(b);});
  var body=rows.length?rows[0].parentNode:null, last=null;
  rows.forEach(function(r){body.appendChild(r);
    var card=document.getElementById(r.getAttribute('data-target'));
    if(card){ if(last){last.parentNode.insertBefore(card,last.nextSibling);} last=card; }});
}
</script>"""


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


def verdict_html(record: dict[str, Any]) -> str:
    """The matched-length verdict of a prompt record in words ('' without matched windows).

    Example:
        >>> verdict_html({"settings": {"n_tokens": 2}, "frontier": [{"token_ids": [1, 2], "activation": 1.0, "xentropy": 3.0}],
        ...               "maxima_matched": [{"token_ids": [1, 2], "activation": 2.0, "xentropy": 4.0}]})[:32]
        '<span class="short">no: no dream'
    """
    verdict = verdict_of(record)
    if verdict is None:
        return ""
    window = verdict["window"]
    yardstick = (f'the best {verdict["n_tokens"]}-token window ({fmt(window["activation"])} at cross-entropy '
                 f'{fmt(window["xentropy"])})')
    if not verdict["beats"]:
        return f'<span class="short">no: no dream beats {yardstick} at or below its cross-entropy</span>'
    winner = verdict["winner"]
    copy = ("a near copy of a window" if winner["near_copy"] else "not a near copy of a window")
    also = "" if not winner["near_copy"] or not verdict["beats_without_copying"] else "; another winner is not"
    ratio = f' ({verdict["ratio"]:.3g}x)' if verdict["ratio"] is not None else ""
    return (f'<span class="beats">yes{ratio}: a dream beats {yardstick}: {fmt(winner["activation"])} at '
            f'{fmt(winner["xentropy"])}, {esc(winner["distance"])} token edit(s) from the nearest window, {copy}{also} '
            f'(near copy: at most {verdict["near_copy_distance"]} edits)</span>')


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


def _token_labels(record: dict[str, Any]) -> str:
    """The token-space labels of a record (`dream prompt --labels`), each with the judge's held-out accuracy, and
    the baseline rule ('' without labels).

    Example:
        >>> entry = {"labels": [{"token": " cat", "heldout_accuracy": 0.875}], "best": {"token": " cat"},
        ...          "baseline": {"token": " the", "heldout_accuracy": 0.5}, "counts": {"heldout": 16}}
        >>> "0.875" in _token_labels({"labels": entry}) and "baseline" in _token_labels({"labels": entry})
        True
    """
    if record.get("labels_error"):
        return f'<div class="label error">no token labels: {esc(record["labels_error"])}</div>'
    entry = record.get("labels")
    if not entry:
        return ""
    best = (entry.get("best") or {}).get("token")
    shown = " ".join(f'<span{" class=up" if label.get("token") == best else ""} title="held-out accuracy">'
                     f'{esc(repr(label.get("token")))} {fmt(label.get("heldout_accuracy", ""))}</span>'
                     for label in entry.get("labels", []))
    baseline = entry.get("baseline")
    rule = (f'; baseline "holds {esc(repr(baseline.get("token")))}" {fmt(baseline.get("heldout_accuracy", ""))}'
            if baseline else "")
    held = (entry.get("counts") or {}).get("heldout", "?")
    return ('<div><div class="label">input side: token labels, with the judge\'s accuracy on '
            f'{esc(held)} held-out windows (chance 0.5){rule}</div><div class="outtok">{shown}</div></div>')


def steering_html(record: dict[str, Any]) -> str:
    """The steering check of a prompt record: scores and steered vs unsteered continuations ('' without one).

    Example:
        >>> html = steering_html({"steering": {"alpha": 2.0, "alpha_source": "alpha", "input_score": 0.5,
        ...     "n_windows": 4, "output_score": 0.25, "output_score_unsteered": 0.01, "promoted_rise": 0.1,
        ...     "fluency_cost": 1.5, "continuations": [{"prompt": "I", "steered": "<b>", "unsteered": "ok"}]}})
        >>> "input score 0.5" in html, "&lt;b&gt;" in html
        (True, True)
    """
    if record.get("steering_error"):
        return f'<div class="label error">no steering check: {esc(record["steering_error"])}</div>'
    steering = record.get("steering")
    if not steering:
        return ""
    score = steering.get("input_score")
    inputs = (f'input score {fmt(score)} (of {esc(steering.get("n_windows", "?"))} top windows, the share whose top '
              'token is a promoted token)' if score is not None else 'no input score (add --maxima for the windows)')
    head = (f'<div class="label">steering check (Arad et al. 2025) at alpha {fmt(steering["alpha"])} '
            f'({esc(steering.get("alpha_source", ""))}): {inputs}; output score {fmt(steering["output_score"])} '
            f'(unsteered {fmt(steering.get("output_score_unsteered"))}); promoted tokens\' probability '
            f'{"+" if steering.get("promoted_rise", 0) >= 0 else ""}{fmt(steering.get("promoted_rise"))} per generated '
            f'token; fluency cost {fmt(steering.get("fluency_cost"))} nats/token</div>')
    rows = "".join(f'<tr><td class="text">{esc(c["prompt"])}</td><td class="text">{esc(c["steered"])}</td>'
                   f'<td class="text">{esc(c["unsteered"])}</td></tr>' for c in steering.get("continuations", []))
    return (f'<div class="steer">{head}<table><tr><th>neutral prompt</th><th>steered continuation</th>'
            f'<th>unsteered</th></tr>{rows}</table></div>')


def _spread(n: int, limit: int) -> set[int]:
    """At most `limit` of `n` rows, spread evenly and keeping both ends.

    Example:
        >>> sorted(_spread(10, 4)), len(_spread(3, 12))
        ([0, 3, 6, 9], 3)
    """
    if n <= limit:
        return set(range(n))
    return {round(i * (n - 1) / (limit - 1)) for i in range(limit)}


def _window_table(windows: Sequence[dict[str, Any]]) -> str:
    return ("<table><tr><th>cross-entropy</th><th>activation</th><th>window</th></tr>"
            + "".join(f"<tr><td>{fmt(m.get('xentropy', ''))}</td><td>{fmt(m['activation'])}</td>"
                      f"<td>{_shaded_tokens(m.get('tokens') or [m.get('text', '')], m.get('token_activations', []))}</td></tr>"
                      for m in windows) + "</table>")


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
    labels = _token_labels(record)
    if labels:
        top.append(labels)
    frontier = sorted(record.get("frontier", []), key=lambda p: p["xentropy"])
    rows = [f"<tr><td>{fmt(point['xentropy'])}</td><td>{fmt(point['activation'])}</td><td>{esc(point.get('origin', ''))}</td>"
            f"<td>{_shaded_tokens(point.get('tokens') or [point.get('text', '')], point.get('token_attribution', []))}</td></tr>"
            for point in frontier]
    shown = _spread(len(rows), FRONTIER_ROWS)
    head = "<tr><th>cross-entropy</th><th>activation</th><th>started from</th><th>prompt (shaded by attribution)</th></tr>"
    verdict = verdict_html(record)
    body = (f'<div class="label">{verdict}</div>' if verdict else "") + steering_html(record)
    body += (f'<div class="label">dream frontier ({len(rows)} prompt(s), {len(shown)} shown)</div>'
             f"<table>{head}{''.join(rows[i] for i in shown)}</table>")
    if len(shown) < len(rows):
        body += (f"<details><summary>the other {len(rows) - len(shown)} frontier prompts</summary><table>{head}"
                 f"{''.join(row for i, row in enumerate(rows) if i not in shown)}</table></details>")
    matched = record.get("maxima_matched") or []
    if matched:
        body += (f'<div class="label">dataset windows of the prompt\'s length, the yardstick '
                 f'({esc(record.get("maxima_matched_dataset", "corpus"))})</div>' + _window_table(matched))
    maxima = record.get("maxima") or []
    if maxima:
        table = _window_table(maxima)
        label = f'dataset maxima ({esc(record.get("maxima_dataset", "corpus"))})'
        body += (f"<details><summary>{label}: longer context windows, not comparable with the prompts</summary>{table}</details>"
                 if matched else f'<div class="label">{label}</div>{table}')
    return (f'<div class="card">{"".join(top)}</div>' if top else "") + body


def feature_index(records: Sequence[dict[str, Any]]) -> str:
    """A table with one row per prompt target (see the module docstring); '' when there are none.

    Example:
        >>> feature_index([{"kind": "image", "target": "conv1:0"}])
        ''
    """
    prompts = [r for r in records if record_kind(r) == "prompt"]
    if not prompts:
        return ""
    labelled = any(r.get("labels") for r in prompts)
    steered = any(r.get("steering") for r in prompts)
    rows = []
    for record in prompts:
        target_id = esc(anchor(str(record["target"])))
        steering = record.get("steering") or {}
        data = "".join(f' data-score-{name}="{steering[key]}"' for name, key in (("input", "input_score"),
                                                                               ("output", "output_score"))
                       if steering.get(key) is not None)
        open_row = f'<tr data-target="{target_id}"{data}>'
        link = (f'<a href="#{target_id}" title="{esc(record["target"])}">'
                f'{esc(short_target(str(record["target"])))}</a>')
        scores = (f'<td>{fmt(steering.get("input_score")) if steering.get("input_score") is not None else "–"}</td>'
                  f'<td>{fmt(steering["output_score"]) if "output_score" in steering else "–"}</td>') if steered else ""
        if "error" in record:
            rows.append(f'{open_row}<td>{link}</td><td colspan="{4 + 2 * steered + labelled}" class="error">failed</td></tr>')
            continue
        verdict = verdict_of(record)
        promoted = ((record.get("description") or {}).get("vocab_proj") or {}).get("promoted", [])
        if verdict is None:
            window, says = "–", "–"
        else:
            window = f'{fmt(verdict["window"]["activation"])} @ {fmt(verdict["window"]["xentropy"])}'
            if verdict["beats"]:
                ratio = f' ({verdict["ratio"]:.3g}x)' if verdict["ratio"] is not None else ""
                copy = "not a copy" if verdict["beats_without_copying"] else "near copy only"
                says = f'<span class="beats">yes{ratio}, {copy}</span>'
            else:
                says = '<span class="short">no</span>'
        best = (record.get("labels") or {}).get("best")
        label = (f'<td class="tokens">{esc(repr(best["token"]))} {fmt(best["heldout_accuracy"])}</td>' if best else
                 "<td>–</td>") if labelled else ""
        rows.append(f"{open_row}<td>{link}</td><td>{fmt(record.get('activation'))}</td><td>{window}</td><td>{says}</td>"
                    f'<td class="tokens">{_tokens(promoted, INDEX_TOKENS)}</td>{label}{scores}</tr>')
    length = next((v["n_tokens"] for v in map(verdict_of, prompts) if v), None)
    what = f"{length}-token windows, the prompts' length" if length else "windows of the prompts' length"
    return ('<div class="target findex"><h2>index <small>one row per prompt target; click a target for its card; '
            f'dreams are compared with dataset {what}</small></h2>'
            '<table id="findex-table"><tr><th>target</th><th>best dream activation</th><th>best window (activation @ cross-entropy)</th>'
            "<th>a dream beats it at ≤ its cross-entropy</th><th>top promoted tokens (VocabProj)</th>"
            + ("<th>token label (held-out accuracy)</th>" if labelled else "")
            + ('<th class="sortable" onclick="dreamySort(\'input\')" title="sort the index and the cards by it">input '
               'score</th><th class="sortable" onclick="dreamySort(\'output\')" title="sort the index and the cards '
               'by it">output score</th>' if steered else "")
            + "</tr>" + "".join(rows) + "</table></div>" + (SORT_SCRIPT if steered else ""))
