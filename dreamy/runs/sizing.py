"""Size a run's packs to the device (`batch_targets="auto"`, `--batch-targets auto`): measure what one more
target costs in memory, and fit as many as the device has free.

The footprint is measured, not guessed: the run's own method runs one step (one image step, one EPO/GCG
iteration) on a pack of 1 target and on a pack of `PROBE_PACK` targets, and the peak memory of each is read:
on CUDA `torch.cuda.max_memory_allocated` above what was allocated before (exact, the caching allocator's
own count); on the CPU the growth of the process's peak resident memory (Linux `VmHWM`, reset first through
`/proc/self/clear_refs`), which counts what the step made the process hold (it can undercount memory the C
allocator reused from before, so the pack keeps a margin, `HEADROOM`, and out-of-memory still halves it, see
`runs.batch`). The per-target footprint is the slope between the two packs, the rest is the pack's fixed cost
(the model's activations shared by every target, workspaces); the pack is the most targets whose fixed cost
plus footprints fit in `HEADROOM` of the free memory (`core.memory.available_bytes`), at most `MAX_PACK`.

Example:
    >>> from dreamy.models import load
    >>> from dreamy.vision import DreamConfig
    >>> choice = auto_pack(load("tiny:cnn"), ["head:0", "head:1", "head:2"], DreamConfig(steps=2), free=2**40)
    >>> choice.pack, choice.per_target > 0
    (3, True)
"""

from __future__ import annotations

import dataclasses
import gc
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from dreamy.core.config import Config
from dreamy.core.frozen import frozen
from dreamy.core.memory import available_bytes, is_oom
from dreamy.models import LoadedModel

PROBE_PACK = 4  # the second pack measured: the slope from 1 to it is a target's footprint
HEADROOM = 0.8  # the share of the free memory a pack may fill
MAX_PACK = 512  # the largest pack "auto" makes (the layer sweep's largest; kernels are long full by then)


@dataclass(frozen=True)
class PackChoice:
    """The pack `auto_pack` chose and why: bytes per target and fixed, the free bytes, how they were measured.

    Example:
        >>> PackChoice(8, 2**20, 2**22, 2**30, "cuda peak").summary()
        'auto: packs of 8 targets (1.0 MiB per target + 4.0 MiB fixed, measured by cuda peak; 1024.0 MiB free)'
    """

    pack: int
    per_target: int
    fixed: int
    free: int | None
    how: str

    def summary(self) -> str:
        """One line for the progress output."""
        free = "free memory unknown" if self.free is None else f"{self.free / 2**20:.1f} MiB free"
        return (f"auto: packs of {self.pack} targets ({self.per_target / 2**20:.1f} MiB per target + "
                f"{self.fixed / 2**20:.1f} MiB fixed, measured by {self.how}; {free})")

    def to_dict(self) -> dict[str, Any]:
        """The choice as a JSON-ready dict."""
        return dataclasses.asdict(self)


def _cpu_peak_reset() -> int | None:
    """Reset the process's peak resident memory to its current one and return it (bytes); None off Linux."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return _status_bytes("VmRSS")
    except OSError:
        return None


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            found = re.search(rf"^{key}:\s+(\d+)\s+kB", handle.read(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


def peak_bytes(fn: Callable[[], Any], device: str | torch.device) -> tuple[int | None, str]:
    """Run `fn()` and return the peak memory it added on `device` (bytes, None when it cannot be measured) and
    how it was measured ("cuda peak": `torch.cuda.max_memory_allocated`; "cpu peak rss": the growth of the
    process's peak resident memory).

    Example:
        >>> used, how = peak_bytes(lambda: torch.ones(2**22).sum(), "cpu")
        >>> how, used is None or used >= 0
        ('cpu peak rss', True)
    """
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base, "cuda peak"
    if device.type != "cpu":
        fn()
        return None, f"nothing ({device.type} peaks are not measured)"
    base = _cpu_peak_reset()
    fn()
    peak = _status_bytes("VmHWM")
    return (None if base is None or peak is None else max(0, peak - base)), "cpu peak rss"


def one_step(config: Config) -> Config:
    """`config` cut to one step (images) or one iteration (prompts), with no time budget or plateau and a
    random start, for measuring a pack's footprint.

    Example:
        >>> from dreamy.language import EPOConfig
        >>> one_step(EPOConfig(iters=300, minutes=5)).iters, one_step(EPOConfig(minutes=5)).minutes
        (1, None)
    """
    changes: dict[str, Any] = {"steps": 1} if config.kind == "image" else {"iters": 1}
    for name, value in (("minutes", None), ("plateau", None)):
        if hasattr(config, name):
            changes[name] = value
    if getattr(config, "init", None) not in (None, "random"):
        changes["init"] = None
    return dataclasses.replace(config, **changes)


def measure_footprint(loaded: LoadedModel, specs: Sequence[str], config: Config) -> tuple[int, int, str]:
    """`(per_target, fixed, how)`: the bytes one more target of `config`'s run adds to a pack on `loaded`'s
    device, and the pack's fixed bytes, measured on one step of packs of 1 and `PROBE_PACK` of `specs` (after
    one unmeasured step, so lazy workspaces and caches are not counted as a target's). A probe pack that runs
    out of memory charges each target the whole of a one-target step. Raises `ValueError` where the device's
    peaks cannot be measured, or one target alone does not fit.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.vision import DreamConfig
        >>> per_target, fixed, how = measure_footprint(load("tiny:cnn"), ["head:0", "head:1"], DreamConfig())
        >>> per_target > 0 and fixed >= 0, how
        (True, 'cpu peak rss')
    """
    from dreamy.runs.batch import _method_function

    specs = list(specs)
    if not specs:
        raise ValueError("measuring a pack's footprint needs at least one target")
    step = one_step(config)
    dream = _method_function(step)
    probe = specs[:PROBE_PACK]

    def run(part: list[str]) -> None:
        dream(loaded, part, config=step, progress=False)

    with frozen(loaded.model):
        try:
            run(probe[:1])  # warm-up: allocator pools, kernels, graphs
            one, how = peak_bytes(lambda: run(probe[:1]), loaded.device)
        except Exception as error:
            if not is_oom(error):
                raise
            raise ValueError(f"one target of this run does not fit in {loaded.device}'s free memory; lower the "
                             "run's size (tokens, children, population, image size) or use a bigger device") from None
        try:
            many, _ = peak_bytes(lambda: run(probe), loaded.device) if len(probe) > 1 else (one, how)
        except Exception as error:
            if not is_oom(error):
                raise
            return max(1, one or 1), 0, how  # a pack of PROBE_PACK is already too big: charge a target all of one
    if one is None or many is None:
        raise ValueError(f"cannot measure memory peaks on {loaded.device}: give batch_targets a number "
                         "(--batch-targets N) instead of auto")
    slope = (many - one) / (len(probe) - 1) if len(probe) > 1 else 0
    per_target = int(slope) if slope > 0 else max(1, many // len(probe))  # no growth seen: charge the average
    return per_target, max(0, one - per_target), how


def auto_pack(loaded: LoadedModel, specs: Sequence[str], config: Config, *, free: int | None = None) -> PackChoice:
    """The pack of targets for a run of `config` on `loaded` over `specs` (expanded, usable targets): as many
    as fit in `HEADROOM` of the device's free memory (`free` bytes, by default `available_bytes`) at the
    measured footprint (`measure_footprint`), at least 1 and at most `MAX_PACK` and the number of targets.

    Example:
        >>> from dreamy.models import load
        >>> from dreamy.language import GCGConfig
        >>> auto_pack(load("tiny:lm"), ["logits:1", "logits:2"], GCGConfig(n_tokens=3, children=4), free=2**40).pack
        2
    """
    per_target, fixed, how = measure_footprint(loaded, specs, config)
    free = available_bytes(loaded.device) if free is None else free
    if free is None:
        fits = MAX_PACK
    else:
        fits = int((free * HEADROOM - fixed) // per_target)
    return PackChoice(max(1, min(fits, MAX_PACK, len(specs))), per_target, fixed, free, how)


__all__ = ["HEADROOM", "MAX_PACK", "PROBE_PACK", "PackChoice", "auto_pack", "measure_footprint", "one_step",
           "peak_bytes"]
