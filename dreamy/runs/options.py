"""A run's own settings, beside the method's config: where it writes, how it packs and where it runs.

`RunOptions` holds what `runs.local.prepare` needs besides the model, the targets and the method's config (a
`DreamConfig`, `EPOConfig` or `GCGConfig`): the output folder and what to do with an earlier run there
(`resume`, `overwrite`), the targets per packed batch (`batch_targets`, a number or "auto"), Ray, the
output-side descriptions, the progress bars, a hook called after each batch, and, for a prompt search seeded
from dataset windows (`init` "maxima" or "mixed"), the corpus scan that finds them (`MaximaScan`). Both are
frozen configs, checked when built: a bad value is one `ConfigError` naming it, before any model work.

Example:
    >>> RunOptions(batch_targets="auto", maxima=MaximaScan("fortunes", k=8)).maxima.k
    8
    >>> RunOptions.build(batch_target=4)
    Traceback (most recent call last):
    ...
    dreamy.core.config.ConfigError: unknown RunOptions setting 'batch_target'; did you mean 'batch_targets'? (RunOptions settings: out_dir, resume, overwrite, batch_targets, describe, describe_later, use_ray, ray_address, workers, progress, on_batch, maxima)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dreamy.core.config import Config, ConfigError, check_bool, check_int
from dreamy.maxima.text import text_maxima

_SCAN_DEFAULTS = inspect.signature(text_maxima).parameters  # the scan's defaults are text_maxima's own


@dataclass(frozen=True)
class MaximaScan(Config):
    """The corpus scan that finds the matched-length windows a seeded prompt search starts from: `corpus` (a
    name or path for `datasets.open_text`, or a `TextCorpus`) and the `text_maxima` settings it runs with
    (their defaults are `text_maxima`'s).

    Example:
        >>> MaximaScan("fortunes").scan()["k"] == text_maxima.__kwdefaults__["k"]
        True
    """

    corpus: Any
    k: int = _SCAN_DEFAULTS["k"].default
    window: int = _SCAN_DEFAULTS["window"].default
    max_words: int | None = _SCAN_DEFAULTS["max_words"].default
    xent_windows: int = _SCAN_DEFAULTS["xent_windows"].default
    cache_dir: str | Path | None = _SCAN_DEFAULTS["cache_dir"].default

    def check(self) -> None:
        """Refuse an empty corpus name and counts out of range."""
        if self.corpus is None or (isinstance(self.corpus, str) and not self.corpus.strip()):
            raise ConfigError(f"MaximaScan.corpus must name a text corpus (e.g. 'fortunes'), got {self.corpus!r}")
        check_int(self, "k", minimum=1)
        check_int(self, "window", minimum=2)
        check_int(self, "max_words", minimum=1, optional=True)
        check_int(self, "xent_windows", minimum=1)

    def scan(self) -> dict[str, Any]:
        """The keyword arguments `text_maxima` takes from this scan (all but the corpus)."""
        return {name: getattr(self, name) for name in ("k", "window", "max_words", "xent_windows", "cache_dir")}


@dataclass(frozen=True)
class RunOptions(Config):
    """How a run of many targets is run (see the module docstring). `out_dir=None` writes nothing; a non-empty
    `out_dir` needs `resume` (the same run only) or `overwrite`. `batch_targets` targets share one packed
    optimization ("auto": as many as the device's free memory holds, `runs.sizing.auto_pack`). `use_ray` (or a
    `ray_address`) shards the batches over `workers` Ray actors (None: one per GPU on CUDA, else 2).
    `describe=False` skips the output-side descriptions of prompt records; `describe_later` leaves them to the
    `runs.enrich.enrich` pass that follows the run (it describes every finished prompt record that has none, over
    the maxima windows it attaches), so a run with `--maxima` describes each record once. `on_batch(runner, k)` is called after
    batch k is written (tests, monitoring). `maxima` is the corpus scan a seeded prompt search needs.

    Example:
        >>> RunOptions(workers=0)
        Traceback (most recent call last):
        ...
        dreamy.core.config.ConfigError: RunOptions.workers must be >= 1, got 0
    """

    out_dir: str | Path | None = None
    resume: bool = False
    overwrite: bool = False
    batch_targets: int | str = 8
    describe: bool = True
    describe_later: bool = False
    use_ray: bool = False
    ray_address: str | None = None
    workers: int | None = None
    progress: bool = True
    on_batch: Callable[[Any, int], None] | None = None
    maxima: MaximaScan | None = None

    def check(self) -> None:
        """Refuse values out of range: an empty folder name, packs below 1 or neither a number nor "auto",
        workers below 1, flags that are not booleans, a hook that cannot be called, a scan that is not a
        `MaximaScan`."""
        if self.out_dir is not None and str(self.out_dir).strip() == "":
            raise ConfigError("--out is empty (out_dir=''); name an output folder, e.g. --out dreams/")
        for name in ("resume", "overwrite", "describe", "describe_later", "use_ray", "progress"):
            check_bool(self, name)
        if self.batch_targets != "auto":
            if not isinstance(self.batch_targets, int) or isinstance(self.batch_targets, bool):
                raise ConfigError(f"batch_targets must be a number of targets or 'auto', got {self.batch_targets!r}")
            check_int(self, "batch_targets", minimum=1)
        check_int(self, "workers", minimum=1, optional=True)
        if self.on_batch is not None and not callable(self.on_batch):
            raise ConfigError(f"RunOptions.on_batch must be callable (runner, k) or None, got {self.on_batch!r}")
        if self.maxima is not None and not isinstance(self.maxima, MaximaScan):
            raise ConfigError(f"RunOptions.maxima must be a MaximaScan, e.g. MaximaScan('fortunes'), got "
                              f"{self.maxima!r}")

    @property
    def describe_now(self) -> bool:
        """Whether the batches describe their prompt records themselves (`describe`, and not `describe_later`).

        Example:
            >>> RunOptions().describe_now, RunOptions(describe_later=True).describe_now
            (True, False)
        """
        return self.describe and not self.describe_later

    @property
    def on_ray(self) -> bool:
        """Whether the batches run on Ray (`use_ray`, or a `ray_address` given).

        Example:
            >>> RunOptions(ray_address="auto").on_ray, RunOptions().on_ray
            (True, False)
        """
        return self.use_ray or bool(self.ray_address)


def run_options(options: RunOptions | None = None, /, **settings: Any) -> RunOptions:
    """`options` (default: all defaults) with `settings` by name, as `dream_targets` takes them: `maxima` may be a
    corpus (name, path or `TextCorpus`) and `maxima_scan` the `text_maxima` settings of its scan, which together
    make the `MaximaScan`; any other name is a `RunOptions` field (a typo is one `ConfigError` naming it).

    Example:
        >>> run_options(out_dir="dreams", maxima="fortunes", maxima_scan={"k": 4}).maxima
        MaximaScan(corpus='fortunes', k=4, window=64, max_words=None, xent_windows=128, cache_dir='default')
    """
    scan = settings.pop("maxima_scan", None)
    corpus = settings["maxima"] if "maxima" in settings else (options.maxima if options else None)
    if scan and corpus is None:
        raise ConfigError(f"maxima_scan={scan!r} without a corpus; give maxima='fortunes' (--maxima fortunes) too")
    if corpus is not None and not isinstance(corpus, MaximaScan):
        settings["maxima"] = MaximaScan.build(corpus=corpus, **(scan or {}))
    elif scan:
        settings["maxima"] = MaximaScan.build(corpus, **scan)
    return RunOptions.build(options, **settings)


__all__ = ["MaximaScan", "RunOptions", "run_options"]
