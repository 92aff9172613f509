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
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from dreamy.core import stepping

log = logging.getLogger(__name__)

QUANTILES = (0.5, 0.9, 0.99)


@dataclass
class ScanBatch:
    """What `scan`'s `score_batch` returns for one batch of items; every tensor may stay on the model's device.

    `scores [M, n_targets]` compete for the top-k (M may exceed the batch, e.g. one per token; NaN never ranks),
    `indices [M]` the dataset index of each, `summary [B', n_targets]` enters the dataset-wide statistics.
    Optionally `contexts [R, C, n_targets]`: each target's values over the `C` positions of `R` context rows (a
    scanned text chunk), `rows [M]` the context row of each score, and `items [R]` the item of each context row;
    a top-k with `context=C` keeps, for every kept score, its target's values over its row.
    """

    scores: Tensor
    indices: Tensor
    summary: Tensor
    contexts: Tensor | None = None
    rows: Tensor | None = None
    items: Tensor | None = None


class StreamingTopK:
    """The `k` largest scores per target (and the dataset indices they came from) over a stream of batches.

    NaN scores count as -inf (they rank last). `values` / `indices` are `[n_targets, <=k]`, best first, kept on
    the device of the scores (one `torch.topk` per batch for every target, no host copy). With `context=C`,
    `contexts [n_targets, <=k, C]` holds each kept score's target values over its context row (`ScanBatch`).
    """

    def __init__(self, n_targets: int, k: int, context: int = 0) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.context = context
        self.values = torch.empty(n_targets, 0)
        self.indices = torch.empty(n_targets, 0, dtype=torch.long)
        self.contexts = torch.empty(n_targets, 0, context)

    def update(self, scores: Tensor, indices: Tensor, contexts: Tensor | None = None, rows: Tensor | None = None) -> None:
        """Merge a batch: `scores [B, n_targets]`, `indices [B]` (dataset index of each row); with `context`, also
        `contexts [R, C, n_targets]` and `rows [B]` (the context row of each score)."""
        scores = scores.detach().float().t()
        device = scores.device
        scores = torch.where(torch.isnan(scores), torch.full_like(scores, -torch.inf), scores)
        old = self.values.shape[1]
        values = torch.cat([self.values.to(device), scores], dim=1)
        index = torch.cat([self.indices.to(device), indices.to(device).long()[None].expand(len(scores), -1)], dim=1)
        keep = min(self.k, values.shape[1])
        top = values.topk(keep, dim=1)
        if self.context:
            if contexts is None or rows is None:
                raise ValueError(f"this top-k keeps {self.context} context values per score; pass contexts and rows")
            fresh = (top.indices - old).clamp(min=0)  # [T, keep] position among this batch's scores
            row = rows.to(device).long()[fresh]  # [T, keep] context row of each
            per_target = contexts.detach().float().permute(2, 0, 1)  # [T, R, C]
            new_context = per_target.gather(1, row[..., None].expand(-1, -1, self.context))
            kept = self.contexts.to(device)
            if old:
                old_context = kept.gather(1, top.indices.clamp(max=old - 1)[..., None].expand(-1, -1, self.context))
                new_context = torch.where((top.indices < old)[..., None], old_context, new_context)
            self.contexts = new_context
        self.values, self.indices = top.values, index.gather(1, top.indices)

    def state(self) -> dict[str, Tensor]:
        """Tensors to checkpoint (on the host)."""
        return {"top_values": self.values.cpu(), "top_indices": self.indices.cpu(), "top_contexts": self.contexts.cpu()}

    def restore(self, state: dict[str, Tensor]) -> None:
        """Load a `state()`."""
        self.values, self.indices = state["top_values"], state["top_indices"]
        self.contexts = state.get("top_contexts", torch.empty(len(self.values), 0, self.context))


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


class Observer(Protocol):
    """Anything else that watches a scan's batches (e.g. `dreamy.maxima.stats.ActivationStats`) and checkpoints
    with it."""

    def observe(self, batch: ScanBatch) -> None: ...

    def state(self) -> dict[str, Tensor]: ...

    def restore(self, state: dict[str, Tensor]) -> None: ...


def scan(
    score_batch: Callable[[Sequence[int]], "ScanBatch | tuple[Tensor, Tensor, Tensor]"],
    n_items: int,
    *,
    n_targets: int,
    k: int,
    batch_size: int,
    context: int = 0,
    observers: Sequence[Observer] = (),
    checkpoint: Path | None = None,
    checkpoint_seconds: float = 60.0,
    fingerprint: str = "",
    desc: str = "scan",
    progress: bool = True,
) -> tuple[StreamingTopK, Tensor, float]:
    """Stream items `0..n_items-1` in batches once, keeping the top-k per target.

    `score_batch(items)` returns a `ScanBatch` (or its first three fields as a tuple): the scores that compete for
    the top-k, the dataset index of each, and the scores that enter the dataset-wide statistics. The top-k stays
    on the scores' device; the only host copy per batch is the summary scores' (one for all targets). With
    `context`, the top-k keeps each kept score's context values (`StreamingTopK`). Each of `observers` sees every
    batch. With `checkpoint`, the state (top-k, observers) is saved every `checkpoint_seconds` and on interrupt,
    and a later scan with the same `fingerprint` resumes from it. Returns the top-k, all summary scores
    `[N', n_targets]` and the seconds spent.

    Example:
        >>> values = torch.tensor([[1.0, 5.0], [3.0, 0.0], [2.0, 4.0]])
        >>> top, summary, _ = scan(lambda items: (values[items], torch.tensor(items), values[items]), 3, n_targets=2,
        ...                        k=1, batch_size=2, progress=False)
        >>> top.indices.tolist(), tuple(summary.shape)
        ([[1], [0]], (3, 2))
    """
    top = StreamingTopK(n_targets, k, context)
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
            for i, observer in enumerate(observers):
                observer.restore(state[f"observer{i}"])
            summaries, start, spent = [state["summaries"]], int(state["next"]), float(state["seconds"])
            log.info("resuming %s at item %d of %d from %s", desc, start, n_items, checkpoint)

    def save(next_item: int, seconds: float) -> None:
        if checkpoint is None:
            return
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        staging = checkpoint.with_name(checkpoint.name + f".{os.getpid()}.tmp")
        torch.save({**top.state(), "summaries": torch.cat(summaries) if summaries else torch.empty(0, n_targets),
                    **{f"observer{i}": observer.state() for i, observer in enumerate(observers)},
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
                    batch = score_batch(items)
                    if not isinstance(batch, ScanBatch):
                        batch = ScanBatch(*batch)
                    top.update(batch.scores, batch.indices, batch.contexts, batch.rows)
                    for observer in observers:
                        observer.observe(batch)
                summaries.append(batch.summary.detach().float().cpu())
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
