"""Streaming top-k per target, dataset-wide activation statistics, and a resumable scan loop.

Example:
    >>> top = StreamingTopK(n_targets=2, k=2)
    >>> top.update(torch.tensor([[1.0, 5.0], [3.0, 0.0], [2.0, 4.0]]), torch.tensor([10, 11, 12]))
    >>> top.indices.tolist()
    [[11, 12], [10, 12]]
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from dreamy.core import stepping

log = logging.getLogger(__name__)

QUANTILES = (0.5, 0.9, 0.99)


class StreamingTopK:
    """The `k` largest scores per target (and the dataset indices they came from) over a stream of batches.

    NaN scores count as -inf (they rank last). `values` / `indices` are `[n_targets, <=k]`, best first.
    """

    def __init__(self, n_targets: int, k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.values = torch.empty(n_targets, 0)
        self.indices = torch.empty(n_targets, 0, dtype=torch.long)

    def update(self, scores: Tensor, indices: Tensor) -> None:
        """Merge a batch: `scores [B, n_targets]`, `indices [B]` (dataset index of each row)."""
        scores = scores.detach().float().cpu().t()
        scores = torch.where(torch.isnan(scores), torch.full_like(scores, -torch.inf), scores)
        values = torch.cat([self.values, scores], dim=1)
        index = torch.cat([self.indices, indices.cpu().long()[None].expand(len(scores), -1)], dim=1)
        keep = min(self.k, values.shape[1])
        top = values.topk(keep, dim=1)
        self.values, self.indices = top.values, index.gather(1, top.indices)

    def state(self) -> dict[str, Tensor]:
        """Tensors to checkpoint."""
        return {"top_values": self.values, "top_indices": self.indices}

    def restore(self, state: dict[str, Tensor]) -> None:
        """Load a `state()`."""
        self.values, self.indices = state["top_values"], state["top_indices"]


def summarize(values: Tensor) -> dict[str, float]:
    """Count, mean, std, min, max and quantiles of a 1-D tensor of scores (NaN ignored).

    Example:
        >>> summarize(torch.tensor([1.0, 2.0, 3.0]))["median"]
        2.0
    """
    values = values.float()
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        return {"count": 0}
    summary = {"count": int(values.numel()), "mean": float(values.mean()), "std": float(values.std()) if values.numel() > 1 else 0.0,
               "min": float(values.min()), "max": float(values.max())}
    for q in QUANTILES:
        summary["median" if q == 0.5 else f"p{round(q * 100)}"] = float(values.quantile(q))
    return summary


def scan(
    score_batch: Callable[[Sequence[int]], tuple[Tensor, Tensor, Tensor]],
    n_items: int,
    *,
    n_targets: int,
    k: int,
    batch_size: int,
    checkpoint: Path | None = None,
    checkpoint_seconds: float = 60.0,
    fingerprint: str = "",
    desc: str = "scan",
    progress: bool = True,
) -> tuple[StreamingTopK, Tensor, float]:
    """Stream items `0..n_items-1` in batches once, keeping the top-k per target.

    `score_batch(items)` returns `(scores [M, n_targets], indices [M], summary_scores [B', n_targets])`:
    the scores that compete for the top-k (M may exceed the batch, e.g. one per token), the dataset
    index of each, and the scores that enter the dataset-wide statistics. With `checkpoint`, the state
    is saved every `checkpoint_seconds` and on interrupt, and a later scan with the same `fingerprint`
    resumes from it. Returns the top-k, all summary scores `[N', n_targets]` and the seconds spent.
    """
    top = StreamingTopK(n_targets, k)
    summaries: list[Tensor] = []
    start, spent = 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        try:
            state = torch.load(checkpoint, weights_only=True)
            if not isinstance(state, dict):
                raise ValueError(f"holds a {type(state).__name__}, not a scan state")
        except Exception as error:  # a damaged checkpoint (a kill mid-write, another program's file): start over
            log.warning("ignoring the unreadable scan checkpoint %s (%s: %s); scanning from the start", checkpoint,
                        type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            state = {}
        if state.get("fingerprint") == fingerprint:
            top.restore(state)
            summaries, start, spent = [state["summaries"]], int(state["next"]), float(state["seconds"])
            log.info("resuming %s at item %d of %d from %s", desc, start, n_items, checkpoint)

    def save(next_item: int, seconds: float) -> None:
        if checkpoint is None:
            return
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        staging = checkpoint.with_name(checkpoint.name + f".{os.getpid()}.tmp")
        torch.save({**top.state(), "summaries": torch.cat(summaries) if summaries else torch.empty(0, n_targets),
                    "next": next_item, "seconds": seconds, "fingerprint": fingerprint}, staging)
        os.replace(staging, checkpoint)

    began, last_save = time.perf_counter(), time.perf_counter()
    item = start
    with stepping.progress(n_items, desc, enabled=progress) as bar:
        bar.update(start)
        try:
            while item < n_items:
                items = list(range(item, min(n_items, item + batch_size)))
                with torch.no_grad():
                    scores, indices, summary = score_batch(items)
                top.update(scores, indices)
                summaries.append(summary.detach().float().cpu())
                item = items[-1] + 1
                bar.update(len(items))
                if checkpoint is not None and time.perf_counter() - last_save > checkpoint_seconds:
                    save(item, spent + time.perf_counter() - began)
                    last_save = time.perf_counter()
        except KeyboardInterrupt:
            save(item, spent + time.perf_counter() - began)
            log.warning("scan interrupted at item %d of %d; %s", item, n_items,
                        f"progress saved to {checkpoint}, run again to resume" if checkpoint else "nothing saved (no cache)")
            raise
    if checkpoint is not None and checkpoint.exists():
        checkpoint.unlink()
    all_summaries = torch.cat(summaries) if summaries else torch.empty(0, n_targets)
    return top, all_summaries, spent + time.perf_counter() - began
