"""Dataset maxima as records, and their on-disk cache (what the gallery reads).

Layout: `CACHE/<model>/<dataset>/<target>/` holds `maxima.json` (the record; written last, so its
presence means the entry is complete), `arrays.npz` (images `[k, H, W, 3]` uint8 and per-position
score maps `[k, h, w]`, when the target has them) and, for image sets, `example_00.png`, ... Each path
part is a readable slug plus a short hash of the exact name, so distinct specs never collide. Every
file is written to a temporary name and renamed into place.

Example:
    >>> import tempfile
    >>> record = Maxima("tiny:cnn", "conv2:1", "photos", "image", [Example(0, 3, 2.5, "skimage cat full")], {}, {})
    >>> folder = tempfile.mkdtemp()
    >>> _ = save_maxima(record, folder)
    >>> load_cached_maxima(folder, "tiny:cnn", "conv2:1").best_activation
    2.5
"""

from __future__ import annotations

import io
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from torch import Tensor

from dreamy.core.png import png_bytes
from dreamy.core.files import safe_name, write_atomic
from dreamy.targets import parse

log = logging.getLogger(__name__)


@dataclass
class Example:
    """One dataset example: `index` is the image index, or for text the corpus position of the window's last token.

    Text examples found by a scan also carry their scanned context, as SAEDashboard shows it: `context_start`, the
    corpus position of the first token of the scanned chunk that holds `index`, and `context_activations`, the
    target's value at each token of that chunk in the scan. `group` names the sample an example was drawn for
    (`random`, or a quantile band of the firing values such as `q0.50-0.75`); None for the top-k.
    """

    rank: int
    index: int
    activation: float
    source: str
    text: str | None = None
    tokens: list[str] | None = None
    token_ids: list[int] | None = None
    token_activations: list[float] | None = None
    xentropy: float | None = None
    context_start: int | None = None
    context_activations: list[float] | None = None
    group: str | None = None


@dataclass
class Maxima:
    """The top-k dataset examples of one target, with dataset-wide statistics.

    `stats["activation"]` summarizes the target over the whole data set (every image, or every
    non-overlapping text window); text adds `stats["xentropy"]`, the cross-entropy distribution of
    random corpus windows, and `frontier`, the windows no other re-scored window beats in both
    activation and cross-entropy. `images` `[k, H, W, 3]` uint8 and `maps` `[k, *positions]` are arrays.
    A text scan adds `stats["tokens"]` (`dreamy.maxima.stats`: density, histogram of the firing values) and
    `samples`, examples drawn from quantile bands of the firing values and random windows (`Example.group`).
    """

    model_name: str
    target: str
    dataset: str
    kind: Literal["image", "text"]
    examples: list[Example]
    stats: dict[str, Any]
    settings: dict[str, Any]
    images: np.ndarray | None = None
    maps: np.ndarray | None = None
    frontier: list[Example] = field(default_factory=list)
    path: Path | None = None
    samples: list[Example] = field(default_factory=list)

    @property
    def best_activation(self) -> float | None:
        """The top example's activation (None when there are no examples)."""
        return self.examples[0].activation if self.examples else None

    def best_below(self, xentropy: float) -> Example | None:
        """The most activating text window with cross-entropy <= `xentropy` (among examples and frontier).

        Example:
            >>> m = Maxima("m", "t", "d", "text", [Example(0, 9, 5.0, "", xentropy=4.0), Example(1, 7, 3.0, "", xentropy=2.0)], {}, {})
            >>> m.best_below(3.0).activation
            3.0
        """
        eligible = [e for e in self.examples + self.frontier if e.xentropy is not None and e.xentropy <= xentropy]
        return max(eligible, key=lambda e: e.activation, default=None)

    def image_tensor(self) -> Tensor:
        """The example images as `[k, 3, H, W]` floats in [0, 1] (e.g. for `dreamy.vision.facet_starts`)."""
        if self.images is None:
            raise ValueError(f"maxima of '{self.target}' on '{self.dataset}' hold no images (kind {self.kind})")
        return torch.from_numpy(self.images).permute(0, 3, 1, 2).float() / 255.0

    def gallery_items(self) -> list[dict[str, Any]]:
        """The examples as the gallery's `record["maxima"]` entries: `label` (the source), `activation`, and
        `image` (the cached PNG's absolute path, once saved) or `text`, `tokens`, `token_activations`, `xentropy`.

        Example:
            >>> Maxima("m", "t", "d", "text", [Example(0, 5, 1.5, "corpus", text="hi", tokens=["hi"])], {}, {}).gallery_items()[0]["tokens"]
            ['hi']
        """
        items = []
        for example in self.examples:
            item: dict[str, Any] = {"label": example.source, "activation": example.activation, "rank": example.rank}
            if self.kind == "image":
                if self.path is not None:
                    item["image"] = str((self.path / f"example_{example.rank:02d}.png").resolve())
            else:
                item.update(text=example.text, tokens=example.tokens, token_ids=example.token_ids,
                            token_activations=example.token_activations, xentropy=example.xentropy)
            items.append(item)
        return items

    def to_record(self) -> dict[str, Any]:
        """A JSON-able record (without the arrays)."""
        return {"model": self.model_name, "target": self.target, "dataset": self.dataset, "kind": self.kind,
                "best_activation": self.best_activation, "examples": [asdict(e) for e in self.examples],
                "frontier": [asdict(e) for e in self.frontier], "samples": [asdict(e) for e in self.samples],
                "stats": self.stats, "settings": self.settings}

    @classmethod
    def from_record(cls, record: dict[str, Any], arrays: dict[str, np.ndarray] | None = None, path: Path | None = None) -> "Maxima":
        """Rebuild from `to_record()` output (and the arrays of `arrays.npz`)."""
        arrays = arrays or {}
        return cls(record["model"], record["target"], record["dataset"], record["kind"],
                   [Example(**e) for e in record["examples"]], record.get("stats", {}), record.get("settings", {}),
                   arrays.get("images"), arrays.get("maps"), [Example(**e) for e in record.get("frontier", [])], path,
                   [Example(**e) for e in record.get("samples", [])])


class MaximaResults(dict):
    """The maxima of several targets, `{canonical target spec: Maxima}`.

    Example:
        >>> MaximaResults({"t": Maxima("m", "t", "d", "text", [], {}, {})}).to_records()[0]["target"]
        't'
    """

    lengths: dict[int, "MaximaResults"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lengths = {}

    def to_records(self) -> list[dict[str, Any]]:
        """One JSON-able record per target (every method's results give their records the same way)."""
        return [maxima.to_record() for maxima in self.values()]

    @property
    def dead(self) -> list[str]:
        """The targets that never fired (a value > 0) at any scanned token (`stats["tokens"]["fired"] == 0`).

        Example:
            >>> MaximaResults({"t": Maxima("m", "t", "d", "text", [], {"tokens": {"fired": 0}}, {})}).dead
            ['t']
        """
        return [target for target, maxima in self.items() if maxima.stats.get("tokens", {}).get("fired", 1) == 0]

    def at(self, n_tokens: int) -> "MaximaResults":
        """The maxima of windows of `n_tokens` tokens found in the same search (`text_maxima(..., lengths=...)`).

        Example:
            >>> MaximaResults().at(12)
            Traceback (most recent call last):
            ...
            KeyError: 'no maxima of 12-token windows in this search; ask text_maxima for lengths=[12]'
        """
        if n_tokens not in self.lengths:
            raise KeyError(f"no maxima of {n_tokens}-token windows in this search; ask text_maxima for lengths=[{n_tokens}]")
        return self.lengths[n_tokens]


def default_cache_dir() -> Path:
    """`<dreamy cache>/maxima` (see `dreamy.models.cache_dir`; `$DREAMY_CACHE` moves it).

    Example:
        >>> default_cache_dir().name
        'maxima'
    """
    from dreamy.models import cache_dir

    return cache_dir() / "maxima"


def canonical_target(target: str) -> str:
    """The canonical spec of a target (so `conv2 : 1` and `conv2:1` share a cache entry)."""
    return str(parse(target))


def entry_dir(cache_dir: str | os.PathLike, model_name: str, dataset: str, target: str) -> Path:
    """The folder of one cache entry."""
    return Path(cache_dir) / safe_name(model_name) / safe_name(dataset) / safe_name(canonical_target(target))


def save_maxima(maxima: Maxima, cache_dir: str | os.PathLike) -> Path:
    """Write one entry (arrays and PNGs first, `maxima.json` last); returns its folder."""
    folder = entry_dir(cache_dir, maxima.model_name, maxima.dataset, maxima.target)
    arrays = {name: value for name, value in (("images", maxima.images), ("maps", maxima.maps)) if value is not None}
    if arrays:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_atomic(folder / "arrays.npz", buffer.getvalue())
    if maxima.images is not None:
        for rank, image in enumerate(maxima.images):
            write_atomic(folder / f"example_{rank:02d}.png", png_bytes(image))
    write_atomic(folder / "maxima.json", json.dumps(maxima.to_record(), indent=1).encode())
    maxima.path = folder
    return folder


def _read_entry(folder: Path) -> Maxima | None:
    """The entry in `folder`, or None when it is missing or unreadable (a damaged entry is logged and found anew)."""
    record_path = folder / "maxima.json"
    if not record_path.exists():
        return None
    try:
        record = json.loads(record_path.read_text())
        arrays: dict[str, np.ndarray] = {}
        if (folder / "arrays.npz").exists():
            with np.load(folder / "arrays.npz") as data:
                arrays = {name: data[name] for name in data.files}
        return Maxima.from_record(record, arrays, folder)
    except Exception as error:  # a damaged cache must never cost a run: rescan instead
        log.warning("ignoring the damaged maxima cache entry %s (%s: %s); it will be found again", folder,
                    type(error).__name__, error)
        return None


def load_cached_maxima(cache_dir: str | os.PathLike, model_name: str, target: str, dataset: str | None = None, *,
                       matching: Callable[[Maxima], bool] | None = None) -> Maxima | None:
    """The cached maxima of `target` on `model_name` (from `dataset`, else the most recent of any data set that
    `matching` accepts), or None.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> _ = save_maxima(Maxima("m", "t:1", "corpus@12tok", "text", [], {}, {"window": 12}), folder)
        >>> load_cached_maxima(folder, "m", "t:1", matching=lambda m: m.settings.get("window") == 64) is None
        True
    """
    if dataset is not None:
        return _read_entry(entry_dir(cache_dir, model_name, dataset, target))
    model_dir = Path(cache_dir) / safe_name(model_name)
    records = sorted(model_dir.glob(f"*/{safe_name(canonical_target(target))}/maxima.json"), key=lambda p: p.stat().st_mtime)
    for path in reversed(records):
        entry = _read_entry(path.parent)
        if entry is not None and (matching is None or matching(entry)):
            return entry
    return None


def list_cached_maxima(cache_dir: str | os.PathLike, model_name: str | None = None) -> list[Maxima]:
    """Every complete cache entry (of one model, or all), most recent last.

    Example:
        >>> list_cached_maxima("/nonexistent")
        []
    """
    root = Path(cache_dir)
    pattern = f"{safe_name(model_name)}/*/*/maxima.json" if model_name else "*/*/*/maxima.json"
    found = [_read_entry(p.parent) for p in sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)]
    return [m for m in found if m is not None]
