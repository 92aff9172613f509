"""A learned direction on disk: a tensor file the target grammar reads (`SITE:dir=FILE#METHOD`) and a sidecar
JSON of how it was made.

`write_direction(directions, sidecar, path)` writes one vector per key to `path` (`.pt` or `.safetensors`) and
the sidecar dict to `path` + `.json` beside it, both atomically; `DirectionResult.save` (learn.py) fills the
sidecar: the model, site, reduction, example sources and counts, the config, each method's threshold and
accuracies, the cosines, and the spec of each direction.

Example:
    >>> import tempfile
    >>> tensors, sidecar = write_direction({"w": torch.ones(3)}, {"site": "fc"}, Path(tempfile.mkdtemp(), "concept.pt"))
    >>> sidecar.name, read_sidecar(tensors)["site"], torch.load(tensors)["w"].tolist()
    ('concept.pt.json', 'fc', [1.0, 1.0, 1.0])
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dreamy import __version__
from dreamy.core.files import json_safe, write_atomic, write_json_atomic

SUFFIXES = (".pt", ".safetensors")


def sidecar_path(path: "str | Path") -> Path:
    """The sidecar JSON of the direction file `path`: the same name with `.json` appended.

    Example:
        >>> sidecar_path("probes/sentiment.pt").as_posix()
        'probes/sentiment.pt.json'
    """
    path = Path(path)
    return path.with_name(path.name + ".json")


def write_direction(directions: dict[str, Tensor], sidecar: dict[str, Any], path: "str | Path") -> tuple[Path, Path]:
    """Write `directions` (one vector per key) to `path` (.pt or .safetensors) and `sidecar` to `path` + `.json`,
    both atomically; returns both paths.

    Example:
        >>> write_direction({"w": torch.ones(3)}, {}, "x.npy")
        Traceback (most recent call last):
        ...
        ValueError: direction file 'x.npy' must end in .pt or .safetensors (the target grammar reads both)
    """
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"direction file '{path}' must end in .pt or .safetensors (the target grammar reads both)")
    if not directions:
        raise ValueError("no directions to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: vector.detach().float().cpu().reshape(-1).contiguous() for key, vector in directions.items()}
    if path.suffix.lower() == ".pt":
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        write_atomic(path, buffer.getvalue())
    else:
        from safetensors.torch import save

        write_atomic(path, save(tensors))
    side = sidecar_path(path)
    write_json_atomic(side, json_safe({"dreamy_version": __version__, "file": path.name, **sidecar}))
    return path, side


def read_sidecar(path: "str | Path") -> dict[str, Any]:
    """The sidecar JSON of the direction file `path` (`ValueError` naming the file when it is missing or not a
    JSON object).

    Example:
        >>> read_sidecar("/no/such/direction.pt")
        Traceback (most recent call last):
        ...
        ValueError: no sidecar '/no/such/direction.pt.json' beside the direction file; it is written by save_direction (or dream direction)
    """
    side = sidecar_path(Path(path).expanduser())
    if not side.is_file():
        raise ValueError(f"no sidecar '{side}' beside the direction file; it is written by save_direction (or dream direction)")
    try:
        sidecar = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"sidecar '{side}' cannot be read as JSON ({str(error).splitlines()[0]}); repair it, or write "
                         "it again with save_direction (or dream direction --overwrite)") from error
    if not isinstance(sidecar, dict):
        raise ValueError(f"sidecar '{side}' is not a JSON object; write it again with save_direction (or dream "
                         "direction --overwrite)")
    return sidecar


__all__ = ["SUFFIXES", "read_sidecar", "sidecar_path", "write_direction"]
