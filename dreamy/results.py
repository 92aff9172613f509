"""Results on disk: atomic writes and a results.json of one record per target, safe to resume.

Every write goes to a temporary file in the same folder and is renamed over the old one, so a kill
at any moment leaves either the old or the new file, never half of one.

Example:
    >>> import tempfile
    >>> store = ResultsStore(tempfile.mkdtemp())
    >>> store.add({"target": "conv2:3", "activation": 1.5})
    >>> store.done()
    {'conv2:3'}
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write `data` to `path` atomically (temporary file + rename).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"; write_atomic(p, "hi"); p.read_text()
        'hi'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.json"; write_json_atomic(p, {"a": 1}); json.loads(p.read_text())
        {'a': 1}
    """
    write_atomic(path, json.dumps(obj, indent=1, allow_nan=True))


def safe_name(spec: str) -> str:
    """A file-name-safe version of a target spec.

    Example:
        >>> safe_name("0.5*layer3:1-layer4:2")
        '0.5_layer3_1-layer4_2'
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_")
    return name[:120] or "target"


class ResultsStore:
    """`DIR/results.json`: a list of records keyed by their `target`; re-adding a target replaces it."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "results.json"
        self.records: list[dict[str, Any]] = []
        if self.path.exists():
            try:
                self.records = json.loads(self.path.read_text())["records"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{self.path} is not a dreamy results file ({error}); choose another --out") from error

    def done(self, include_errors: bool = False) -> set[str]:
        """Targets with a finished record (failed ones only with `include_errors`)."""
        return {r["target"] for r in self.records if include_errors or "error" not in r}

    def add(self, record: dict[str, Any]) -> None:
        """Add (or replace) one target's record and rewrite the file atomically."""
        self.add_many([record])

    def add_many(self, records: Iterable[dict[str, Any]]) -> None:
        """Add several records with one atomic rewrite."""
        new = list(records)
        replaced = {r["target"] for r in new}
        self.records = [r for r in self.records if r["target"] not in replaced] + new
        write_json_atomic(self.path, {"records": self.records})
