"""Units: what a target reads off the feature dimension of a site's activation.

A unit turns an activation whose features sit on the last dimension (`[..., D]`) into one value per
position (`[...]`):

- `Neuron(i)`: feature `i` (a neuron, or a channel of a conv map).
- `Direction(path, key)`: the dot product with a vector stored in a file (a probe, a concept vector,
  a steering direction). `.pt`, `.npy`, `.npz` and `.safetensors` files work.
- `SAEFeature(path, index)`: the activation of one feature of a sparse autoencoder's encoder:
  `act((x - b_dec) @ W_enc[:, i] + b_enc[i])`. `path` is one tensor file or a folder in the SAELens
  layout (`cfg.json` + `sae_weights.safetensors`, see `dreamy.targets.saelens`); the value is what the SAE's
  encode gives (a TopK feature is 0 outside its position's top k), the gradient its pre-activation's.
- `Head(h, part)`: attention head `h` of a per-head site (`blocks.L.attn.hook_z`, an attention output
  projection's input): `part` a unit of the head's own `d_head` features (`Neuron`, `Direction`), its `"norm"`,
  or None (their mean); on `blocks.L.attn.hook_pattern` with `key=J`: the weight from each query to key position J
  (negative counts from the end).
- no unit (`None`): the mean over all features.

Units are frozen dataclasses that hold only names; `load_unit` reads the file once and returns a
`ResolvedUnit` that does the arithmetic. `group_units` resolves many units of one site into `UnitGroup`s that
read them together: neurons by one gather, directions by one matmul, the features of one SAE by one encode.

Example:
    >>> import torch
    >>> resolved = load_unit(Neuron(2))
    >>> resolved.project(torch.arange(8.0).reshape(2, 4), site="fc").tolist()
    [2.0, 6.0]
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence, Union

import torch
from torch import Tensor

from dreamy.targets.errors import TargetError
from dreamy.targets.saelens import (FeatureEncoder, SAEWeights, SiteInfo, features_encoder, is_sae_folder, placed_like,
                                    read_sae_folder)

_SAFE_PATH = re.compile(r"^[\w./~]+$")
_REDUCE_SUFFIX = re.compile(r"/(mean|max|sum|center|pos=-?\d+)$")


def _format_path(path: str) -> str:
    """Quote a file path unless it can be read back unquoted."""
    if _SAFE_PATH.match(path) and not _REDUCE_SUFFIX.search(path):
        return path
    if "'" not in path:
        return f"'{path}'"
    return f'"{path}"'


@dataclass(frozen=True)
class Neuron:
    """One feature (neuron or channel) by index.

    Example:
        >>> str(Neuron(87))
        '87'
    """

    index: int

    def __str__(self) -> str:
        return str(self.index)


@dataclass(frozen=True)
class Direction:
    """A direction stored in a file; the score is the dot product with it.

    `key` selects an entry of a dict-like file (`.pt` dict, `.npz`, `.safetensors`) or, when the file
    holds one 2-D tensor, a row index.

    Example:
        >>> str(Direction("probes/cat.pt", "w"))
        'dir=probes/cat.pt#w'
    """

    path: str
    key: str | None = None

    def __str__(self) -> str:
        tail = f"#{self.key}" if self.key is not None else ""
        return f"dir={_format_path(self.path)}{tail}"


@dataclass(frozen=True)
class SAEFeature:
    """Feature `index` of a sparse autoencoder stored in a file.

    The file holds `W_enc` (`[D, F]` or `[F, D]`), `b_enc` (`[F]`), and optionally `b_dec` (`[D]`,
    subtracted before encoding) and `threshold` (`[F]`, JumpReLU). Keys may also be spelled
    `encoder.weight` / `encoder.bias` / `decoder.bias`.

    Example:
        >>> str(SAEFeature("sae/layer5.safetensors", 1234))
        'sae=sae/layer5.safetensors#1234'
    """

    path: str
    index: int

    def __str__(self) -> str:
        return f"sae={_format_path(self.path)}#{self.index}"


@dataclass(frozen=True)
class Head:
    """Attention head `index` of a per-head site; `part` is what of it (see the module docstring), `key` the key
    position of an attention-pattern entry.

    Example:
        >>> str(Head(2, "norm")), str(Head(0, Neuron(5))), str(Head(3, key=-1))
        ('head=2,norm', 'head=0,5', 'head=3,key=-1')
    """

    index: int
    part: "Neuron | Direction | str | None" = None
    key: int | None = None

    def __str__(self) -> str:
        if self.key is not None:
            return f"head={self.index},key={self.key}"
        return f"head={self.index}" + ("" if self.part is None else f",{self.part}")


Unit = Union[Neuron, Direction, SAEFeature, Head]
PER_HEAD_SITES = "blocks.L.attn.hook_z, blocks.L.attn.hook_pattern (key=J) or an attention output projection's input"


def _read_tensors(path: str) -> dict[str, Tensor] | Tensor:
    file = Path(path).expanduser()
    if not file.exists():
        raise TargetError(f"direction file '{path}' does not exist; give a path to a .pt, .npy, .npz or .safetensors file")
    if not file.is_file():
        raise TargetError(f"direction file '{path}' is not a file")
    suffix = file.suffix.lower()
    if suffix not in (".pt", ".pth", ".bin", ".npy", ".npz", ".safetensors"):
        raise TargetError(f"unsupported file type '{suffix}' for '{path}'; use .pt, .npy, .npz or .safetensors")
    try:
        data = _read_file(file, suffix)
    except TargetError:
        raise
    except Exception as error:  # torch/numpy/safetensors each raise their own types for a broken file
        why = str(error).splitlines()[0] if str(error).strip() else "the file is empty or truncated"
        raise TargetError(f"cannot read '{path}' as a {suffix} file ({type(error).__name__}: {why}); "
                          "save tensors with torch.save, numpy.save or safetensors") from error
    if isinstance(data, dict) and not data:
        raise TargetError(f"'{path}' holds no tensors; save a tensor or a dict of tensors")
    return data


def _read_file(file: Path, suffix: str) -> dict[str, Tensor] | Tensor:
    if suffix in (".pt", ".pth", ".bin"):
        data = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(data, Tensor):
            return data
        if isinstance(data, dict):
            return {str(k): v for k, v in data.items() if isinstance(v, Tensor)}
        raise TargetError(f"'{file}' holds a {type(data).__name__}; expected a tensor or a dict of tensors")
    if suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(file, allow_pickle=False))
    if suffix == ".npz":
        import numpy as np

        with np.load(file, allow_pickle=False) as archive:
            return {k: torch.from_numpy(archive[k]) for k in archive.files}
    from safetensors.torch import load_file

    return load_file(str(file))


def _finite(tensor: Tensor, what: str) -> Tensor:
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise TargetError(f"{what} has {bad} non-finite value(s) (NaN or inf); fix the file")
    return tensor


def _pick(data: dict[str, Tensor] | Tensor, key: str | None, path: str) -> Tensor:
    if isinstance(data, Tensor):
        if key is None:
            return data
        if data.ndim == 2 and key.lstrip("-").isdigit():
            row = int(key)
            if not -data.shape[0] <= row < data.shape[0]:
                raise TargetError(f"row {row} out of range for '{path}' with {data.shape[0]} rows (0..{data.shape[0] - 1})")
            return data[row]
        raise TargetError(f"'{path}' holds a single tensor; key '#{key}' only works as a row index of a 2-D tensor")
    if key is None:
        if len(data) == 1:
            return next(iter(data.values()))
        raise TargetError(f"'{path}' holds several tensors {sorted(data)}; pick one with '#KEY'")
    if key not in data:
        raise TargetError(f"no key '{key}' in '{path}'; keys are {sorted(data)}")
    return data[key]


def _first(data: dict[str, Tensor], names: tuple[str, ...]) -> Tensor | None:
    for name in names:
        if name in data:
            return data[name]
    return None


def _pattern_error(unit: Unit | None, site: str, info: SiteInfo | None) -> str | None:
    """Why `unit` cannot read the attention-pattern site `site` (None when it can, or `site` is no pattern): only
    `head=H,key=J` names one weight; a bare feature index reads the flattened heads and keys (`:5` is head 0, key 5)
    and the mean of every weight is 1/positions whatever the input."""
    if info is None or info.basis != "pattern" or isinstance(unit, Head):
        return None
    what = "no unit (the mean of every weight, 1/positions whatever the input)" if unit is None else f"unit {unit}"
    return (f"{what} does not fit site '{site}': it holds {info.heads} heads' attention weights, flattened; "
            "use head=H,key=J (the weight from each query to key position J)")


@dataclass
class ResolvedUnit:
    """A unit with its file contents loaded: maps `[..., D]` activations to `[...]` values."""

    unit: Unit | None
    vector: Tensor | None = None
    encoder: FeatureEncoder | None = None
    part: "ResolvedUnit | None" = None  # a head's unit of its own features

    def project(self, features_last: Tensor, site: str, info: SiteInfo | None = None) -> Tensor:
        """Read the unit off `features_last` (`[..., D]`); `site` names the site in errors, `info` is what the
        model says about it (per-head layout, normalization; see `dreamy.targets.dialects`)."""
        size = features_last.shape[-1]
        unit = self.unit
        refused = _pattern_error(unit, site, info)
        if refused:
            raise TargetError(refused)
        if unit is None:
            return features_last.mean(dim=-1)
        if isinstance(unit, Neuron):
            if not 0 <= unit.index < size:
                raise TargetError(f"unit {unit.index} out of range for site '{site}' with {size} features; valid units are 0..{size - 1}")
            return features_last[..., unit.index]
        if isinstance(unit, Direction):
            vec = self.vector.to(features_last)
            if vec.numel() != size:
                raise TargetError(f"direction {unit} has {vec.numel()} values but site '{site}' has {size} features")
            return features_last @ vec.reshape(-1)
        if isinstance(unit, Head):
            return self._head(features_last, site, info)
        return self.encoder(features_last, site, info)[..., 0]

    def _head(self, features_last: Tensor, site: str, info: SiteInfo | None) -> Tensor:
        unit, size = self.unit, features_last.shape[-1]
        heads = info.heads if info is not None else None
        if not heads or size % heads:
            raise TargetError(f"unit {unit} reads one attention head, but site '{site}' is not a per-head site; use "
                              f"{PER_HEAD_SITES}")
        if not 0 <= unit.index < heads:
            raise TargetError(f"head {unit.index} out of range for site '{site}' with {heads} heads (0..{heads - 1})")
        pattern = info.basis == "pattern"
        if pattern != (unit.key is not None):
            fix = "head=H,key=J" if pattern else "head=H,I, head=H,norm or head=H,dir=FILE (key=J reads blocks.L.attn.hook_pattern)"
            raise TargetError(f"unit {unit} does not fit site '{site}'; use {fix}")
        width = size // heads
        one = features_last[..., unit.index * width:(unit.index + 1) * width]
        if pattern:
            if not -width <= unit.key < width:
                raise TargetError(f"key position {unit.key} out of range for site '{site}' with {width} positions "
                                  f"({-width}..{width - 1})")
            return one[..., unit.key]
        if unit.part == "norm":
            return torch.linalg.vector_norm(one, dim=-1)
        return self.part.project(one, f"{site} head {unit.index}")


_shared_reads: list[dict[str, "SAEWeights | TargetError"]] = []  # one cache per open `sae_reads_shared` block


@contextmanager
def sae_reads_shared() -> Iterator[None]:
    """Within the block, each SAE path is read once, whatever number of features of it are resolved (a read that
    fails fails alike each time, unread); `targets.check_targets` checks a whole SAE's features this way.

    Example:
        >>> import tempfile
        >>> file = str(Path(tempfile.mkdtemp()) / "sae.pt")
        >>> torch.save({"W_enc": torch.eye(4), "b_enc": torch.zeros(4)}, file)
        >>> _sae_weights(file) is _sae_weights(file)
        False
        >>> with sae_reads_shared():
        ...     _sae_weights(file) is _sae_weights(file)
        True
    """
    _shared_reads.append({})
    try:
        yield
    finally:
        _shared_reads.pop()


def _sae_weights(path: str) -> SAEWeights:
    """The SAE at `path` (see `_read_sae`), read once per `sae_reads_shared` block."""
    if not _shared_reads:
        return _read_sae(path)
    cache = _shared_reads[-1]
    if path not in cache:
        try:
            cache[path] = _read_sae(path)
        except TargetError as error:
            cache[path] = error
    found = cache[path]
    if isinstance(found, TargetError):
        raise TargetError(str(found))
    return found


def _read_sae(path: str) -> SAEWeights:
    """The encoder of the SAE at `path`: a folder in the SAELens layout (see `dreamy.targets.saelens`), or one
    tensor file holding `W_enc`/`b_enc` (and `b_dec`, `threshold`: a JumpReLU), read as an SAE with no decoder.
    The weights file inside an SAELens folder is read as its folder (its cfg.json says how)."""
    if is_sae_folder(path):
        return read_sae_folder(path)
    if not Path(path).expanduser().exists():
        raise TargetError(f"SAE '{path}' does not exist; give a folder in the SAELens layout "
                          "(cfg.json + sae_weights.safetensors) or a .pt/.safetensors file")
    data = _read_tensors(path)
    if isinstance(data, Tensor):
        raise TargetError(f"SAE file '{path}' must hold named tensors W_enc and b_enc")
    w_enc = _first(data, ("W_enc", "w_enc", "encoder.weight"))
    b_enc = _first(data, ("b_enc", "encoder.bias"))
    if w_enc is None or b_enc is None:
        raise TargetError(f"SAE file '{path}' lacks W_enc/b_enc; keys are {sorted(data)}")
    w_enc = _finite(w_enc, f"SAE {path} W_enc").float()
    b_enc = _finite(b_enc, f"SAE {path} b_enc").float()
    if w_enc.ndim != 2 or b_enc.ndim != 1 or b_enc.shape[0] not in w_enc.shape:
        raise TargetError(f"SAE {path}: W_enc {tuple(w_enc.shape)} and b_enc {tuple(b_enc.shape)} do not fit; "
                          "expected W_enc [d_in, d_sae] and b_enc [d_sae]")
    if w_enc.shape[1] != b_enc.shape[0]:  # stored as [F, D] (nn.Linear layout)
        w_enc = w_enc.T
    b_dec = _first(data, ("b_dec", "decoder.bias"))
    threshold = _first(data, ("threshold",))
    return SAEWeights("relu" if threshold is None else "jumprelu", W_enc=w_enc.contiguous(), b_enc=b_enc,
                      W_dec=torch.zeros(0), b_dec=torch.zeros(w_enc.shape[0]) if b_dec is None else b_dec.float(),
                      threshold=None if threshold is None else threshold.float(), apply_b_dec_to_input=b_dec is not None)


def load_unit(unit: Unit | None) -> ResolvedUnit:
    """Load the file behind `unit` (if any) and return a `ResolvedUnit`.

    Example:
        >>> load_unit(None).unit is None
        True
    """
    if unit is None or isinstance(unit, Neuron):
        return ResolvedUnit(unit)
    if isinstance(unit, Head):
        part = unit.part if isinstance(unit.part, (Neuron, Direction)) else None
        return ResolvedUnit(unit, part=load_unit(part))
    if isinstance(unit, SAEFeature):
        return ResolvedUnit(unit, encoder=features_encoder(_sae_weights(unit.path), [unit.index], unit.path))
    data = _read_tensors(unit.path)
    vector = _finite(_pick(data, unit.key, unit.path), f"direction {unit}").float()
    if vector.ndim != 1:
        raise TargetError(f"direction {unit} has shape {tuple(vector.shape)}; expected a vector (pick a row with '#N')")
    return ResolvedUnit(unit, vector=vector)


class UnitGroup:
    """Units read off one site's features in one operation: `project([..., D]) -> [..., n]`, column j for
    `units[j]`. Made by `group_units`; tensors are placed on a device once, at first use there."""

    def __init__(self, units: Sequence[Unit | None], kind: str, *, columns: Tensor | None = None,
                 matrix: Tensor | None = None, encoder: FeatureEncoder | None = None,
                 each: Sequence[ResolvedUnit] = ()) -> None:
        self.units, self.kind = tuple(units), kind
        self.encoder, self.each = encoder, list(each)
        self._tensors = {"columns": columns, "matrix": matrix}
        indices = [u.index for u in self.units] if kind == "neurons" else [0]
        self._extremes = (self.units[indices.index(min(indices))], self.units[indices.index(max(indices))])
        self._placed: dict[tuple, dict[str, Tensor | None]] = {}
        self._plans: dict[tuple, tuple] = {}

    def _on(self, x: Tensor) -> dict[str, Tensor | None]:
        return placed_like(x, self._tensors, self._placed)

    def project(self, features_last: Tensor, site: str, info: SiteInfo | None = None) -> Tensor:
        """The group's units read off `features_last` (`[..., D]`), `[..., n]`; `site` names the site in errors."""
        size = features_last.shape[-1]
        refused = None if self.kind == "heads" else _pattern_error(self.units[0], site, info)
        if refused:
            raise TargetError(refused)
        if self.kind == "mean":
            return features_last.mean(dim=-1, keepdim=True)
        if self.kind == "neurons":
            bad = [u for u in self._extremes if not 0 <= u.index < size]
            if bad:
                raise TargetError(f"unit {bad[0].index} out of range for site '{site}' with {size} features; "
                                  f"valid units are 0..{size - 1}")
            return features_last.index_select(-1, self._on(features_last)["columns"])
        if self.kind == "directions":
            matrix = self._on(features_last)["matrix"]
            if matrix.shape[0] != size:
                raise TargetError(f"direction {self.units[0]} has {matrix.shape[0]} values but site '{site}' has {size} features")
            return features_last @ matrix
        if self.kind == "sae":
            return self.encoder(features_last, site, info)
        return self._heads(features_last, site, info)

    def _heads(self, features_last: Tensor, site: str, info: SiteInfo | None) -> Tensor:
        """Attention-head units: entries (a head's feature I, a pattern's key J) by one gather, norms and means of
        every head once, directions by one product over the heads they read; then put in the units' order."""
        size = features_last.shape[-1]
        key = (size, info, features_last.device, features_last.dtype)
        if key not in self._plans:  # check every unit once per layout (the errors of `ResolvedUnit.project`)
            one = features_last.detach().reshape(-1, size)[:1]
            for unit in self.each:
                unit.project(one, site, info)
            self._plans[key] = self._head_plan(size // info.heads, features_last)
        gather, norms, means, directions, order, vectors = self._plans[key]
        heads = features_last.unflatten(-1, (info.heads, size // info.heads))
        parts = []
        if gather is not None:
            parts.append(features_last.index_select(-1, gather))
        if norms is not None:
            parts.append(torch.linalg.vector_norm(heads, dim=-1).index_select(-1, norms))
        if means is not None:
            parts.append(heads.mean(dim=-1).index_select(-1, means))
        if directions is not None:
            parts.append((heads.index_select(-2, directions) * vectors).sum(dim=-1))
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return out if order is None else out.index_select(-1, order)

    def _head_plan(self, width: int, like: Tensor) -> tuple:
        """For heads of `width` features: index tensors of each way of reading (None: unused), the permutation
        back to the units' order (None: already in it) and the directions' vectors `[n, width]`, on `like`'s
        device (vectors in its dtype)."""
        gather, norms, means, directions, vectors = [], [], [], [], []
        for j, one in enumerate(self.each):
            unit = one.unit
            if unit.key is not None:
                gather.append((j, unit.index * width + unit.key % width))
            elif isinstance(unit.part, Neuron):
                gather.append((j, unit.index * width + unit.part.index))
            elif unit.part == "norm":
                norms.append((j, unit.index))
            elif unit.part is None:
                means.append((j, unit.index))
            else:
                directions.append((j, unit.index))
                vectors.append(one.part.vector.float().reshape(-1))
        placed = [j for kind in (gather, norms, means, directions) for j, _ in kind]
        with torch.inference_mode(False):
            index = [torch.tensor([i for _, i in kind], dtype=torch.long, device=like.device) if kind else None
                     for kind in (gather, norms, means, directions)]
            order = None if placed == list(range(len(placed))) else torch.tensor(placed, device=like.device).argsort()
            return (*index, order, torch.stack(vectors).to(like) if vectors else None)


def group_units(units: Sequence[Unit | None]) -> list[UnitGroup]:
    """Resolve the distinct `units` of one site into groups read together: every neuron by one gather, the
    directions of one length by one matmul, the features of one SAE by one encode, the mean once, the units of
    attention heads by one gather, norm, mean and product each. Each file is read once.

    Example:
        >>> groups = group_units([Neuron(2), Neuron(0), None])
        >>> [(g.kind, [str(u) for u in g.units]) for g in groups]
        [('neurons', ['2', '0']), ('mean', ['None'])]
        >>> groups[0].project(torch.arange(8.0).reshape(2, 4), site="fc").tolist()
        [[2.0, 0.0], [6.0, 4.0]]
    """
    distinct = list(dict.fromkeys(units))
    neurons = [u for u in distinct if isinstance(u, Neuron)]
    groups = [UnitGroup(neurons, "neurons", columns=torch.tensor([u.index for u in neurons], dtype=torch.long))] if neurons else []
    directions: dict[int, list[tuple[Direction, Tensor]]] = {}
    files: dict[str, dict[str, Tensor] | Tensor] = {}
    for unit in distinct:
        if isinstance(unit, Direction):
            if unit.path not in files:
                files[unit.path] = _read_tensors(unit.path)
            vector = _finite(_pick(files[unit.path], unit.key, unit.path), f"direction {unit}").float()
            if vector.ndim != 1:
                raise TargetError(f"direction {unit} has shape {tuple(vector.shape)}; expected a vector (pick a row with '#N')")
            directions.setdefault(vector.numel(), []).append((unit, vector))
    for pairs in directions.values():
        groups.append(UnitGroup([u for u, _ in pairs], "directions", matrix=torch.stack([v for _, v in pairs], dim=1)))
    saes: dict[str, list[SAEFeature]] = {}
    for unit in distinct:
        if isinstance(unit, SAEFeature):
            saes.setdefault(unit.path, []).append(unit)
    for path, features in saes.items():
        encoder = features_encoder(_sae_weights(path), [u.index for u in features], path)
        groups.append(UnitGroup(features, "sae", encoder=encoder))
    if None in distinct:
        groups.append(UnitGroup([None], "mean"))
    heads = [u for u in distinct if isinstance(u, Head)]
    if heads:
        groups.append(UnitGroup(heads, "heads", each=[load_unit(u) for u in heads]))
    return groups
