"""Work that must fit in memory: run a batch in chunks, halving the chunk on out-of-memory and retrying; and
what a device has free, for the up-front memory estimates (`dream image` batches, `dream sae-train`).

Example:
    >>> run_chunked(lambda rows: list(range(5))[rows], 5, 2)
    [[0, 1], [2, 3], [4]]
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)


def available_bytes(device: str | torch.device) -> int | None:
    """Bytes free on `device` now: a CUDA device's free memory, or the host's available memory (Linux
    `/proc/meminfo`) for the CPU; None when it cannot be known.

    Example:
        >>> free = available_bytes("cpu")
        >>> free is None or free > 0
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def is_oom(error: BaseException) -> bool:
    """Whether `error` is an out-of-memory error of any device.

    Example:
        >>> is_oom(RuntimeError("CUDA out of memory")), is_oom(ValueError("bad"))
        (True, False)
    """
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def run_chunked(fn: Callable[[slice], Any], n: int, chunk_size: int) -> list[Any]:
    """Call `fn(slice)` over `range(n)` in chunks, halving the chunk size on out-of-memory errors.

    Example:
        >>> run_chunked(lambda s: list(range(10))[s], 10, 4)
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """
    results = []
    start = 0
    size = max(1, chunk_size)
    while start < n:
        try:
            results.append(fn(slice(start, min(n, start + size))))
            start += size
        except (RuntimeError, torch.OutOfMemoryError) as error:
            if not is_oom(error) or size == 1:
                raise
            size = max(1, size // 2)
            log.warning("out of memory; retrying with chunks of %d", size)
    return results
