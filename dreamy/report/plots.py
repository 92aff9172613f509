"""PNG plots for gallery cards, drawn with matplotlib's object API (no pyplot, no global state).

- `frontier_png(record)`: a prompt record's activation (y) against prompt cross-entropy (x): every
  evaluated prompt faint (when the record holds `evaluated`), the Pareto frontier as a line, the dataset
  windows of the prompt's own length as diamonds (the yardstick) and longer context windows as faint crosses
  (as in the EPO paper's figures).
- `steps_png(series)`: activation (or objective) per step, one line per dreamed image of a target; drawn small
  (2.4 x 1.6 in, small type) at twice the resolution, to sit beside a dream on its card and stay sharp.
- `evaluated_points(history)`: the compact `(xentropy, activation)` lists a prompt record keeps for the plot.
- `plot_name(spec, what)`: where a target's plot goes in the output folder (`images/`).

Example:
    >>> png = frontier_png({"frontier": [{"xentropy": 3.0, "activation": 1.0}, {"xentropy": 5.0, "activation": 2.0}]})
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import io
import math
import textwrap
from typing import Any, Sequence

from dreamy.core.files import safe_name

MAX_EVALUATED = 1000
SIZE_INCHES = (4.8, 3.2)
DPI = 100
STEPS_SIZE_INCHES = (2.4, 1.6)  # shown at 240 x 160 px beside a dream
STEPS_DPI = 200


def plot_name(spec: str, what: str) -> str:
    """The output-folder path of target `spec`'s plot `what` (`frontier`, `steps`).

    Example:
        >>> plot_name("logits:5", "frontier").startswith("images/logits_5-") and plot_name("logits:5", "frontier").endswith("_frontier.png")
        True
    """
    return f"images/{safe_name(spec)}_{what}.png"


def _round(value: float) -> float:
    return float(f"{value:.5g}")


def evaluated_points(history: Sequence[dict[str, Any]], limit: int = MAX_EVALUATED) -> dict[str, list[float]]:
    """Every evaluated prompt's cross-entropy and activation (5 significant digits, finite only), thinned
    evenly to at most `limit` points.

    Example:
        >>> evaluated_points([{"xentropy": 1.0, "activation": 2.0}, {"xentropy": 3.0, "activation": float("nan")}])
        {'xentropy': [1.0], 'activation': [2.0]}
    """
    rows = [(float(r["xentropy"]), float(r["activation"])) for r in history
            if math.isfinite(float(r["xentropy"])) and math.isfinite(float(r["activation"]))]
    if len(rows) > limit:
        rows = [rows[i * len(rows) // limit] for i in range(limit)]
    return {"xentropy": [_round(x) for x, _ in rows], "activation": [_round(a) for _, a in rows]}


def _png(figure: Any, dpi: int = DPI) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _figure(size: tuple[float, float] = SIZE_INCHES) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.add_subplot()


def frontier_png(record: dict[str, Any]) -> bytes:
    """The frontier plot of a prompt record (see the module docstring) as PNG bytes.

    Example:
        >>> record = {"frontier": [{"xentropy": 4.0, "activation": 1.5}], "maxima": [{"xentropy": 3.0, "activation": 1.0}],
        ...           "evaluated": {"xentropy": [4.0, 6.0], "activation": [1.5, 0.5]}}
        >>> len(frontier_png(record)) > 1000
        True
    """
    figure, axes = _figure()
    evaluated = record.get("evaluated") or {}
    if evaluated.get("xentropy"):
        axes.scatter(evaluated["xentropy"], evaluated["activation"], s=6, color="#888888", alpha=0.4, linewidths=0,
                     label="evaluated prompts")
    frontier = sorted((p["xentropy"], p["activation"]) for p in record.get("frontier") or []
                      if p.get("xentropy") is not None and p.get("activation") is not None)
    if frontier:
        axes.plot([x for x, _ in frontier], [a for _, a in frontier], "-o", color="#d2502a", markersize=4, label="dream frontier")
    def points(items: Any) -> list[tuple[float, float]]:
        return [(m["xentropy"], m["activation"]) for m in items or []
                if isinstance(m.get("xentropy"), (int, float)) and isinstance(m.get("activation"), (int, float))]

    matched, context = points(record.get("maxima_matched")), points(record.get("maxima"))
    if matched:  # the yardstick: windows of the prompt's own length, scored as the prompts are
        axes.scatter([x for x, _ in matched], [a for _, a in matched], marker="D", s=28, color="#286ee6", zorder=3,
                     label=f"windows of the prompt's length ({record.get('maxima_matched_dataset', 'corpus')})")
    if context:
        axes.scatter([x for x, _ in context], [a for _, a in context], marker="x" if matched else "D",
                     s=20 if matched else 28, color="#9aa7bd" if matched else "#286ee6", zorder=2,
                     label=(f"longer context windows ({record.get('maxima_dataset', 'corpus')})" if matched else
                            f"dataset windows ({record.get('maxima_dataset', 'corpus')})"))
    axes.set_xlabel("prompt cross-entropy (nats/token)")
    axes.set_ylabel("activation")
    axes.grid(alpha=0.3)
    if frontier or matched or context or evaluated.get("xentropy"):
        axes.legend(fontsize=7, loc="lower right")
    return _png(figure)


def steps_png(series: Sequence[Sequence[float]], ylabel: str = "objective") -> bytes:
    """Per-step values, one line per series (e.g. each dream of a target), as PNG bytes.

    Example:
        >>> steps_png([[0.1, 0.5, 0.9], [0.2, 0.4, 0.8]])[:4] == b"\\x89PNG"
        True
    """
    figure, axes = _figure(STEPS_SIZE_INCHES)
    for j, values in enumerate(series):
        axes.plot(range(len(values)), list(values), linewidth=1.0, label=f"dream {j}")
    axes.set_xlabel("step", fontsize=7)
    axes.set_ylabel(textwrap.fill(ylabel, 18), fontsize=7)  # two short lines fit the small plot's height
    axes.tick_params(labelsize=6)
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend(fontsize=5)
    return _png(figure, STEPS_DPI)
