"""What every gallery page shares: the style sheet, escaping, number formatting, section anchors, image figures.

All text from records (dreamed prompts above all) goes through `esc` before it reaches a page.

Example:
    >>> esc("<b>"), fmt(3.14159), anchor("conv3:1")
    ('&lt;b&gt;', '3.142', 't-conv3:1')
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;background:#fafafa;color:#222}
h1{font-size:22px} h2{font-size:16px;margin:0 0 4px 0;font-family:monospace} h2 small{font-family:system-ui;font-weight:normal;color:#555}
.target{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px;margin:12px 0;overflow-x:auto}
.row{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start} .groups{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0;text-align:center;font-size:12px;width:160px} figure img{width:160px;height:160px;border:1px solid #ccc}
.class figure{width:224px} .class figure img{width:224px;height:224px}
.row figure.steps{width:240px} .row figure.steps img.plot{width:240px;height:160px;max-width:none}
.sheet .grid{display:flex;flex-wrap:wrap;gap:4px} .sheet figure{width:96px} .sheet figure img{width:96px;height:96px}
.sheet figure a.to{color:#555;text-decoration:none;font-family:monospace}
.maxima figure{width:88px} .maxima figure img{width:88px;height:88px}
figcaption b{font-weight:600} figcaption span{display:block;color:#777;font-size:10px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.label{color:#666;font-size:12px;margin:4px 0 4px 0} .error{color:#b00020;font-family:monospace}
.beats{color:#0a7d32;font-weight:600} .short{color:#b00020;font-weight:600}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
.tok{font-family:monospace;white-space:pre-wrap;overflow-wrap:anywhere;border-radius:2px}
.top5{color:#777;font-size:11px}
"""


def esc(value: Any) -> str:
    """`value` as HTML text (quotes too).

    Example:
        >>> esc('"x" & y')
        '&quot;x&quot; &amp; y'
    """
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A number to 4 significant digits, anything else escaped.

    Example:
        >>> fmt(1234567.0), fmt("<x>")
        ('1.235e+06', '&lt;x&gt;')
    """
    return f"{value:.4g}" if isinstance(value, (int, float)) else esc(value)


def figure(src: str, value: Any, note: str = "") -> str:
    """An image that opens at full resolution on click, its value in bold and an optional note under it.

    Example:
        >>> '<img src="a.png"' in figure("a.png", 1.5, "note")
        True
    """
    caption = f"<b>{fmt(value)}</b>" + (f'<span title="{esc(note)}">{esc(note)}</span>' if note else "")
    return (f'<figure><a href="{esc(src)}" target="_blank" title="open at full resolution"><img src="{esc(src)}" '
            f'alt="{esc(note or value)}" loading="lazy"></a><figcaption>{caption}</figcaption></figure>')


def anchor(target: str) -> str:
    """The HTML id of a target's section.

    Example:
        >>> anchor("0.5*a:1 + b:2")
        't-0.5_a:1___b:2'
    """
    return "t-" + re.sub(r"[^A-Za-z0-9_.:-]", "_", target)




def short_target(spec: str) -> str:
    """A target's name for a page: a direction or SAE file by its file name (`sae-l9#3`), not its whole path.

    Example:
        >>> short_target("model.layers.9:sae=/home/me/runs/sae-l9#3"), short_target("logits:5")
        ('sae-l9#3', 'logits:5')
    """
    from dreamy.targets import Direction, SAEFeature, TargetError, parse

    try:
        target = parse(spec)
    except TargetError:
        return spec
    if len(target.terms) != 1 or not isinstance(target.terms[0].unit, (Direction, SAEFeature)):
        return spec
    unit = target.terms[0].unit
    name = Path(unit.path.rstrip("/")).name or unit.path
    key = unit.index if isinstance(unit, SAEFeature) else unit.key
    reduce = f"/{target.terms[0].reduce}" if target.terms[0].reduce else ""
    return f"{name}#{key}{reduce}" if key is not None else f"{name}{reduce}"
