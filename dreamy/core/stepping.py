"""What every step loop shares (image dreaming, prompt search, SAE training, dataset scans): seeded
generators, progress bars, snapshot steps and plateau stopping. The loops themselves live with their
optimizers; this module holds only what they have in common.

Nothing here knows about images or tokens; the vision and language loops call these helpers so that
seeds, progress output and early stopping behave the same on both sides.

Example:
    >>> gen = make_generator(0)
    >>> plateau = Plateau(patience=2, rel_tol=0.0)
    >>> [plateau.update(v) for v in (1.0, 2.0, 2.0, 2.0)]
    [False, False, False, True]
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from tqdm.auto import tqdm


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """Return a fresh `torch.Generator` seeded with `seed` on `device`.

    Every random draw in dreamy takes an explicit generator, so the same seed gives the same result
    on CPU no matter what else ran before in the process.

    Example:
        >>> a = torch.rand(3, generator=make_generator(7))
        >>> b = torch.rand(3, generator=make_generator(7))
        >>> bool(torch.equal(a, b))
        True
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


class Plateau:
    """Stops a loop once the objective has not improved for `patience` updates.

    An update counts as an improvement when it beats the best value so far by more than
    `rel_tol * max(1, |best|)`.

    Example:
        >>> p = Plateau(patience=3)
        >>> any(p.update(1.0) for _ in range(3))
        False
        >>> p.update(1.0)
        True
    """

    def __init__(self, patience: int = 50, rel_tol: float = 1e-3) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if rel_tol < 0:
            raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")
        self.patience = patience
        self.rel_tol = rel_tol
        self.best = -math.inf
        self.since_best = 0

    def update(self, value: float) -> bool:
        """Record `value`; return True when the loop should stop."""
        value = float(value)
        margin = self.rel_tol * max(1.0, abs(self.best)) if math.isfinite(self.best) else 0.0
        if value > self.best + margin:
            self.best = value
            self.since_best = 0
        else:
            self.since_best += 1
        return self.since_best >= self.patience


def progress(total: int, desc: str, enabled: bool = True) -> tqdm:
    """A tqdm progress bar over `total` steps; `enabled=False` gives a silent one.

    Example:
        >>> bar = progress(3, "dreaming", enabled=False)
        >>> bar.update(3); bar.close()
    """
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def should_snapshot(step: int, snapshot_steps: Sequence[int]) -> bool:
    """True when `step` (1-based count of finished steps) is one of `snapshot_steps`.

    Example:
        >>> should_snapshot(10, (10, 100))
        True
    """
    return step in snapshot_steps
