"""The Pareto frontier of prompts: highest activation for every level of cross-entropy.

Example:
    >>> pareto_indices([1.0, 2.0, 1.5], [3.0, 4.0, 5.0])
    [0, 1]
"""

from __future__ import annotations

from typing import Sequence


def pareto_indices(activation: Sequence[float], xentropy: Sequence[float]) -> list[int]:
    """Indices of the non-dominated points (maximize activation, minimize cross-entropy), by rising cross-entropy.

    A point is dominated when another has activation >= and cross-entropy <=, one of them strictly.
    Exact duplicates keep their first occurrence.
    """
    if len(activation) != len(xentropy):
        raise ValueError(f"activation and xentropy differ in length ({len(activation)} vs {len(xentropy)})")
    order = sorted(range(len(activation)), key=lambda i: (xentropy[i], -activation[i], i))
    frontier: list[int] = []
    best = float("-inf")
    for i in order:
        if activation[i] > best:
            frontier.append(i)
            best = activation[i]
    return frontier


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when point a = (activation, xentropy) dominates b.

    Example:
        >>> dominates((2.0, 1.0), (1.0, 1.0)), dominates((1.0, 1.0), (1.0, 1.0))
        (True, False)
    """
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])
