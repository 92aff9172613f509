"""The token-gradient pass replayed as a CUDA graph: one launch instead of thousands.

On a GPU, a small model's EPO or GCG iteration is bound by kernel launches, not FLOPs (a random-init
Llama of SmolLM2-135M's shape issues ~5.8k launches per EPO iteration, each costing host time). The
gradient pass - forward, relaxed cross-entropy, backward to the one-hot rows, top-k token tables and the
parent states kept for scoring - has the same shapes every time for a given number of rows, so it is
captured once per row bucket (rows padded up to a power of two) and replayed: inputs are copied into
static buffers, outputs read out, and the kept states cloned (the next replay overwrites them). If the
capture fails (an operation that cannot be captured), the search goes on with the eager pass and says so.

Example:
    >>> bucket_rows(3), bucket_rows(8), bucket_rows(9, limit=8)
    (4, 8, None)
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor

from dreamy.language.states import ParentStates

log = logging.getLogger(__name__)

GradientPass = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]


def bucket_rows(n: int, limit: int = 32) -> int | None:
    """The padded row count a graph is captured for: the next power of two >= n (None above `limit`)."""
    size = 1
    while size < n:
        size *= 2
    return size if size <= limit else None


class GradientGraph:
    """A captured gradient pass for `rows` rows. `run(spans, fluency_weights, owners)` must return
    `(top [rows, L, k], kv [layers, 2, rows, heads, T, d], token_xent [rows, L], logprobs [rows, L, V])`."""

    def __init__(self, run: GradientPass, rows: int, length: int, device: torch.device) -> None:
        self.run, self.rows = run, rows
        self.spans = torch.zeros(rows, length, dtype=torch.long, device=device)
        self.fluency_weights = torch.zeros(rows, device=device)
        self.owners = torch.zeros(rows, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        self.failed = False

    def _load(self, spans: Tensor, fluency_weights: Tensor, owners: Tensor) -> None:
        n = spans.shape[0]
        self.spans[:n].copy_(spans)
        self.spans[n:].copy_(spans[:1].expand(self.rows - n, -1))  # padding rows repeat row 0
        self.fluency_weights[:n].copy_(fluency_weights)
        self.fluency_weights[n:].copy_(fluency_weights[:1].expand(self.rows - n))
        self.owners[:n].copy_(owners)
        self.owners[n:].copy_(owners[:1].expand(self.rows - n))

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capturing stream (library handles, workspaces)
            for _ in range(2):
                self.run(self.spans, self.fluency_weights, self.owners)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self.run(self.spans, self.fluency_weights, self.owners)
        self.graph = graph

    def __call__(self, spans: Tensor, fluency_weights: Tensor, owners: Tensor) -> tuple[Tensor, ParentStates] | None:
        """Top tables `[n, L, k]` and the rows' `ParentStates` for `spans [n, L]` (n <= rows), or None when
        this graph cannot serve (too many rows, or its capture failed: the caller runs the eager pass)."""
        n = spans.shape[0]
        if self.failed or n > self.rows:
            return None
        self._load(spans, fluency_weights.to(self.fluency_weights), owners.to(self.owners))
        if self.graph is None:
            try:
                self._capture()
            except Exception as error:  # noqa: BLE001 - any capture failure means: run eagerly
                self.failed = True
                log.warning("CUDA-graph capture of the gradient pass failed (%s: %s); running it eagerly",
                            type(error).__name__, str(error).splitlines()[0] if str(error) else "")
                return None
        self.graph.replay()
        top, kv, token_xent, logprobs = self.outputs  # type: ignore[misc]
        kv = kv[:, :, :n].clone()
        states = ParentStates([(kv[i, 0], kv[i, 1]) for i in range(kv.shape[0])], token_xent[:n].clone(),
                              logprobs[:n].clone())
        return top[:n].clone(), states
