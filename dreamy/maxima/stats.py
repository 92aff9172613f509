"""Dashboard statistics of every target, gathered in the same streamed pass as the maxima (as SAEDashboard and
Neuronpedia show them): how often each target fires, how its firing values spread, examples sampled across those
values, a few random windows, and which targets never fire.

`ActivationStats` watches a `dreamy.maxima.topk.scan` (an observer); each batch's `ScanBatch.contexts`
`[R, C, n_targets]` holds every target's value at every token (NaN where a target has no per-token value: a
target read as a whole window counts its window score once per window). Per batch, for all targets at once and
on the values' device:
- counts: tokens seen, tokens where the value is > 0 ("fires"), the sum and the max of the firing values;
- histogram: exact counts of the firing values in fixed log-spaced bins, `BINS_PER_DECADE` per factor of ten
  from `10**LOG10_LOW` to `10**LOG10_HIGH` (values outside land in the end bins), one `index_add_` per batch; the
  result keeps the span of non-empty bins, so no first pass is needed to decide the range;
- samples: a uniform sample without replacement of `samples` firing tokens per target (each firing token gets a
  random key and the largest keys are kept: one `topk` merge per batch, with each kept token's scanned context);
  at the end the sample is sorted by value and `per_band` examples are taken from each quantile band
  (`QUANTILE_BANDS`) of the firing values;
- random windows: `random_windows` chunks picked up front (seeded), each kept with every target's values.

Example:
    >>> import torch
    >>> from dreamy.maxima.topk import ScanBatch
    >>> stats = ActivationStats(2, 3, n_items=1, samples=4)
    >>> values = torch.tensor([[[0.5, 0.0], [0.0, 0.0], [2.0, 0.0]]])  # one chunk of 3 tokens, 2 targets
    >>> stats.observe(ScanBatch(values.flatten(0, 1), torch.arange(3), values[:, -1], values, torch.zeros(3), torch.tensor([0])))
    >>> [(round(r.summary["density"], 3), r.summary["fired"]) for r in stats.results()]
    [(0.667, 2), (0.0, 0)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dreamy.core.stepping import make_generator
from dreamy.maxima.topk import ScanBatch, StreamingTopK

LOG10_LOW, LOG10_HIGH, BINS_PER_DECADE = -6, 6, 20
N_BINS = (LOG10_HIGH - LOG10_LOW) * BINS_PER_DECADE
QUANTILE_BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 0.9), (0.9, 1.0))


def histogram_bins(values: Tensor) -> Tensor:
    """The log-spaced bin (`0..N_BINS-1`) of each positive value (see the module docstring).

    Example:
        >>> histogram_bins(torch.tensor([1e-9, 1.0, 1e9])).tolist()
        [0, 120, 239]
    """
    scaled = (values.float().clamp(min=1e-30).log10() - LOG10_LOW) * BINS_PER_DECADE
    return scaled.floor().clamp(0, N_BINS - 1).long()


def bin_edges(first: int, last: int) -> list[float]:
    """The log10 edges of bins `first..last` (`last - first + 2` numbers).

    Example:
        >>> bin_edges(120, 120)
        [0.0, 0.05]
    """
    return [round(LOG10_LOW + b / BINS_PER_DECADE, 6) for b in range(first, last + 2)]


@dataclass
class TargetStats:
    """One target's statistics: `summary` (JSON-able: `tokens`, `fired`, `density`, `mean`, `max`, `histogram`)
    and `samples` `{group: [(token index, value, context values [C])]}` (quantile bands, `random`)."""

    summary: dict[str, Any]
    samples: dict[str, list[tuple[int, float, Tensor]]] = field(default_factory=dict)


class ActivationStats:
    """Streaming dashboard statistics for `n_targets` targets over chunks of `context` tokens; see the module
    docstring. `n_items` is the number of chunks the scan will see (random windows are picked among them)."""

    def __init__(self, n_targets: int, context: int, *, n_items: int, samples: int = 64, per_band: int = 4,
                 random_windows: int = 4, seed: int = 0, device: str | torch.device = "cpu") -> None:
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.n_targets, self.context, self.per_band = n_targets, context, per_band
        self.device = torch.device(device)
        self.tokens = torch.zeros(n_targets, dtype=torch.long, device=self.device)
        self.fired = torch.zeros(n_targets, dtype=torch.long, device=self.device)
        self.total = torch.zeros(n_targets, dtype=torch.float64, device=self.device)
        self.max = torch.full((n_targets,), -torch.inf, device=self.device)
        self.histogram = torch.zeros(n_targets, N_BINS, dtype=torch.long, device=self.device)
        self.sample = StreamingTopK(n_targets, samples, context)
        picks = torch.randperm(max(n_items, 0), generator=make_generator(seed))[:random_windows].sort().values
        self.random_items = picks.tolist()
        self.random = torch.full((len(self.random_items), context, n_targets), float("nan"), device=self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._bin_offsets = torch.arange(n_targets, device=self.device) * N_BINS

    def observe(self, batch: ScanBatch) -> None:
        """Count one batch (its `contexts` and `items`)."""
        if batch.contexts is None or batch.items is None:
            raise ValueError("ActivationStats reads each batch's per-token contexts; the scan gave none")
        values = batch.contexts.detach().float().to(self.device)
        flat = values.reshape(-1, self.n_targets)
        fired = flat > 0  # NaN is never > 0
        self.tokens += (~torch.isnan(flat)).sum(dim=0)
        self.fired += fired.sum(dim=0)
        firing = torch.where(fired, flat, torch.zeros_like(flat))
        self.total += firing.double().sum(dim=0)
        self.max = torch.maximum(self.max, torch.where(fired, flat, torch.full_like(flat, -torch.inf)).amax(dim=0))
        where = histogram_bins(flat) + self._bin_offsets  # no boolean indexing or bincount: neither waits for the device
        self.histogram.view(-1).index_add_(0, where.flatten(), fired.flatten().long())
        keys = torch.rand(flat.shape, generator=self.generator, device=self.device)
        items = batch.items.to(self.device).long()
        positions = (items[:, None] * self.context + torch.arange(self.context, device=self.device)).flatten()
        rows = torch.arange(len(items), device=self.device).repeat_interleave(self.context)
        self.sample.update(torch.where(fired, keys, torch.full_like(keys, -torch.inf)), positions, values, rows)
        for slot, item in enumerate(self.random_items):
            hit = items == item
            self.random[slot] = torch.where(hit.any(), values[hit.int().argmax()], self.random[slot])

    def state(self) -> dict[str, Tensor]:
        """Tensors to checkpoint (on the host)."""
        return {"tokens": self.tokens.cpu(), "fired": self.fired.cpu(), "total": self.total.cpu(), "max": self.max.cpu(),
                "histogram": self.histogram.cpu(), "random": self.random.cpu(), "generator": self.generator.get_state(),
                **{f"sample_{name}": value for name, value in self.sample.state().items()}}

    def restore(self, state: dict[str, Tensor]) -> None:
        """Load a `state()`."""
        for name in ("tokens", "fired", "total", "max", "histogram", "random"):
            setattr(self, name, state[name].to(self.device))
        self.generator.set_state(state["generator"])
        self.sample.restore({name.removeprefix("sample_"): value for name, value in state.items() if name.startswith("sample_")})

    def results(self) -> list[TargetStats]:
        """Every target's statistics (one host copy of each tensor, then plain Python per target)."""
        tokens, fired, total, top = self.tokens.tolist(), self.fired.tolist(), self.total.tolist(), self.max.tolist()
        histogram = self.histogram.cpu()
        nonzero = histogram > 0
        first = torch.where(nonzero.any(dim=1), nonzero.int().argmax(dim=1), -1).tolist()
        last = torch.where(nonzero.any(dim=1), N_BINS - 1 - nonzero.flip(1).int().argmax(dim=1), -1).tolist()
        keys, indices, contexts = self.sample.values.tolist(), self.sample.indices.tolist(), self.sample.contexts.cpu()
        random = self.random.cpu()
        random_last = random[:, -1].tolist()
        results = []
        for j in range(self.n_targets):
            summary: dict[str, Any] = {
                "tokens": tokens[j], "fired": fired[j], "density": fired[j] / tokens[j] if tokens[j] else 0.0,
                "mean": total[j] / fired[j] if fired[j] else None, "max": top[j] if fired[j] else None,
                "histogram": {"log10_edges": bin_edges(first[j], last[j]) if fired[j] else [],
                              "counts": histogram[j, first[j]:last[j] + 1].tolist() if fired[j] else []}}
            samples: dict[str, list[tuple[int, float, Tensor]]] = {}
            slots = [slot for slot, key in enumerate(keys[j]) if math.isfinite(key)]
            rows = contexts[j].tolist()
            drawn = [(indices[j][slot], rows[slot][indices[j][slot] % self.context], contexts[j, slot]) for slot in slots]
            by_value = sorted(range(len(drawn)), key=lambda d: drawn[d][1])  # drawn is in random (key) order
            for low, high in QUANTILE_BANDS:
                band = by_value[int(low * len(drawn)):math.ceil(high * len(drawn))]
                chosen = sorted(sorted(band)[:self.per_band], key=lambda d: -drawn[d][1])  # the first draws, best first
                if chosen:
                    samples[f"q{low:.2f}-{high:.2f}"] = [drawn[d] for d in chosen]
            samples["random"] = [(item * self.context + self.context - 1, random_last[slot][j], random[slot, :, j])
                                 for slot, item in enumerate(self.random_items)]
            results.append(TargetStats(summary, samples))
        return results
