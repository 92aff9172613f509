"""Files every part of dreamy writes: atomic writes, standard JSON, and collision-free names.

Every write goes to a temporary file in the same folder and is renamed over the old one, so a kill
at any moment leaves either the old or the new file, never half of one. Files get the usual
permissions (0666 less the umask), and JSON never holds a bare NaN or Infinity (they become null).

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> write_json_atomic(path, {"a": float("nan")}); json.loads(path.read_text())
    {'a': None}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any


def umask() -> int:
    """The process umask (read without changing it for longer than a call).

    Example:
        >>> 0 <= umask() <= 0o777
        True
    """
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; a served gallery must be readable
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, +-inf) replaced by None, so the JSON is standard.

    Example:
        >>> json_safe({"a": [1.0, float("nan")], "b": float("inf")})
        {'a': [1.0, None], 'b': None}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(value) for value in obj]
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented standard JSON (non-finite floats become null), atomically.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.json"; write_json_atomic(p, {"a": 1}); json.loads(p.read_text())
        {'a': 1}
    """
    write_atomic(path, json.dumps(json_safe(obj), indent=1, allow_nan=False))


def short_hash(text: str, length: int = 8) -> str:
    """The first `length` hex digits of the SHA-256 of `text`.

    Example:
        >>> short_hash("conv3:1")
        '74bf4bd9'
    """
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def safe_name(spec: str) -> str:
    """A file-name-safe, collision-free name for a target spec: a readable slug plus a short hash of
    the whole spec (specs that differ only in characters the slug drops, or after its first 80
    characters, still get different names).

    Example:
        >>> safe_name("0.5*layer3:1-layer4:2")
        '0.5_layer3_1-layer4_2-ee9085d2'
    """
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", spec).strip("_.")[:80] or "target"
    return f"{slug}-{short_hash(spec)}"


def fingerprint(obj: Any) -> str:
    """A stable 16-hex-digit hash of a JSON-able `obj` (key order does not matter): what a resumed run or scan
    must match.

    Example:
        >>> fingerprint({"b": 1, "a": [2]}) == fingerprint({"a": [2], "b": 1}), len(fingerprint({}))
        (True, 16)
    """
    return short_hash(json.dumps(obj, sort_keys=True, default=str), 16)
