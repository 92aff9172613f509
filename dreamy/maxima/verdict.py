"""Does a dreamed prompt beat the dataset? The verdict at matched length, on one yardstick.

A prompt of n tokens is compared with the corpus windows of the same n tokens (ending at their peak token and
scored exactly as the prompt is: `text_maxima(..., lengths=[n])`), never with longer context windows, whose
per-token cross-entropy is lower by nature. A dream beats the dataset when a frontier prompt activates more
than the best matched window at or below that window's cross-entropy. A winning prompt is a near copy of the
corpus when it is within `near_copy_distance(n)` token edits (Levenshtein over token ids) of a matched window.

Example:
    >>> record = {"settings": {"n_tokens": 3},
    ...           "frontier": [{"token_ids": [1, 2, 3], "activation": 5.0, "xentropy": 4.0}],
    ...           "maxima_matched": [{"token_ids": [7, 8, 9], "activation": 4.0, "xentropy": 4.5}]}
    >>> v = verdict_of(record)
    >>> v["beats"], v["ratio"], v["winner"]["near_copy"]
    (True, 1.25, False)
"""

from __future__ import annotations

from typing import Any, Sequence


def token_edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
    """The Levenshtein distance between two token-id sequences (insertions, deletions, substitutions).

    Example:
        >>> token_edit_distance([1, 2, 3], [1, 9, 3]), token_edit_distance([1, 2, 3], [2, 3])
        (1, 1)
    """
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def near_copy_distance(n_tokens: int) -> int:
    """The most token edits at which a prompt still counts as a near copy of a window: a quarter of its length
    (at least one).

    Example:
        >>> near_copy_distance(12), near_copy_distance(3)
        (3, 1)
    """
    return max(1, n_tokens // 4)


def _numbers(point: dict[str, Any]) -> bool:
    return all(isinstance(point.get(key), (int, float)) for key in ("activation", "xentropy"))


def verdict_of(record: dict[str, Any]) -> dict[str, Any] | None:
    """The matched-length verdict of a prompt record (None without matched windows): `n_tokens`, the best
    `window` (highest activation), whether a frontier prompt `beats` it at or below its cross-entropy, the best
    such `winner` (with its `distance` to the nearest window and whether it is a `near_copy`), their `ratio`, and
    whether a winner that is not a near copy exists (`beats_without_copying`)."""
    windows = [w for w in record.get("maxima_matched") or [] if _numbers(w)]
    if not windows:
        return None
    n_tokens = (record.get("settings") or {}).get("n_tokens") or len(windows[0].get("token_ids") or [])
    best = max(windows, key=lambda w: w["activation"])
    window_ids = [w["token_ids"] for w in windows if w.get("token_ids")]
    limit = near_copy_distance(int(n_tokens))
    winners = []
    for point in record.get("frontier") or []:
        if not _numbers(point) or point["activation"] <= best["activation"] or point["xentropy"] > best["xentropy"]:
            continue
        ids = point.get("token_ids") or []
        distance = min((token_edit_distance(ids, w) for w in window_ids), default=None) if ids else None
        winners.append({"text": point.get("text", ""), "activation": point["activation"], "xentropy": point["xentropy"],
                        "origin": point.get("origin", ""), "distance": distance,
                        "near_copy": distance is not None and distance <= limit})
    winner = max(winners, key=lambda w: w["activation"], default=None)
    ratio = winner["activation"] / best["activation"] if winner and best["activation"] > 0 else None
    return {"n_tokens": int(n_tokens), "window": {key: best.get(key) for key in ("text", "activation", "xentropy")},
            "beats": winner is not None, "winner": winner, "ratio": round(ratio, 4) if ratio is not None else None,
            "beats_without_copying": any(not w["near_copy"] for w in winners), "near_copy_distance": limit}


__all__ = ["near_copy_distance", "token_edit_distance", "verdict_of"]
