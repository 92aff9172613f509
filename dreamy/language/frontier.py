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


class FrontierTracker:
    """The running Pareto frontier of a search, to tell whether an iteration moved it (a plateau stop).

    Example:
        >>> front = FrontierTracker()
        >>> front.add([1.0, 2.0], [3.0, 4.0]), front.add([1.5], [5.0]), front.add([3.0], [3.5])
        (True, False, True)
        >>> front.points
        [(3.0, 1.0), (3.5, 3.0)]
    """

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []  # (xentropy, activation), rising in both

    def add(self, activation: Sequence[float], xentropy: Sequence[float]) -> bool:
        """Add evaluated points; True when one of them joined the frontier."""
        import bisect

        moved = False
        for act, xent in zip(activation, xentropy):
            if not (act == act and xent == xent):  # NaN never joins
                continue
            at = bisect.bisect_right(self.points, (xent, float("inf")))
            if at and self.points[at - 1][1] >= act:
                continue  # a point at least as fluent activates at least as much
            start = at - 1 if at and self.points[at - 1][0] == xent else at  # as fluent, less active: replaced
            end = at
            while end < len(self.points) and self.points[end][1] <= act:
                end += 1
            self.points[start:end] = [(xent, act)]
            moved = True
        return moved
