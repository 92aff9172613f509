"""The probe: run a model once, read every target off hooked activations, stop early.

One hook per distinct site is registered for the duration of a call and removed in `finally`, even
when the forward raises. The forward stops as soon as every hooked site has fired, unless a target
reads `logits` or the caller needs the model's output. Every target is scored on every row; with
`row_targets`, row i is also scored by its own target (many targets share one batch).

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> probe = Probe(net, ["0:3", "2:1"])
    >>> result = probe(torch.randn(5, 4))
    >>> tuple(result.scores.shape)
    (5, 2)
"""

from __future__ import annotations

import difflib
import threading
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dreamy.core.frozen import frozen
from dreamy.targets.dialects import complete_sites, reading
from dreamy.targets.errors import TargetError
from dreamy.targets.saelens import SiteInfo
from dreamy.targets.spec import Site, Target, Term, parse
from dreamy.targets.units import Head, UnitGroup, group_units

SITES_HINT = "run `dream sites MODEL` (or dreamy.targets.list_sites) to list sites"


class _StopForward(Exception):
    """Raised inside a hook once every hooked site has fired; caught by the probe."""


@dataclass
class ProbeResult:
    """Scores of one probe call.

    `scores` is `[B, n_targets]` (every target on every row); `terms[j]` is `[B, n_terms_j]`;
    `row_scores` is `[B]` when `row_targets` was given; `output` is the model's output when the
    forward ran to the end; `activations` maps site strings to raw activations when kept.
    """

    scores: Tensor
    terms: list[Tensor]
    row_scores: Tensor | None = None
    output: Any | None = None
    activations: dict[str, Tensor] | None = None


def _output_tensor(value: Any, site: Site) -> Tensor:
    """Pick the tensor a site refers to out of a module's output or input."""
    if site.index is not None:
        if not isinstance(value, (tuple, list)):
            raise TargetError(f"site '{site}' asks for element [{site.index}] but the module gives a {type(value).__name__}, not a tuple")
        if site.index >= len(value):
            raise TargetError(f"site '{site}': the tuple has {len(value)} elements; valid indices are 0..{len(value) - 1}")
        value = value[site.index]
    if hasattr(value, "logits") and isinstance(getattr(value, "logits"), Tensor):
        value = value.logits
    while isinstance(value, (tuple, list)) and value:
        value = value[0]
    if not isinstance(value, Tensor):
        raise TargetError(f"site '{site}' gives a {type(value).__name__}, not a tensor; pick a tuple element with '[k]'")
    return value


def features_last(activation: Tensor) -> Tensor:
    """Move the feature dimension last: dim 1 of conv maps (`ndim >= 4`), else the last dim.

    Example:
        >>> tuple(features_last(torch.zeros(2, 8, 5, 5)).shape)
        (2, 5, 5, 8)
    """
    if activation.ndim >= 4:
        return activation.movedim(1, -1)
    return activation


def _reduce(values: Tensor, reduce: str | None, sequence_reduce: str, site: Site, patch_tokens: int | None = None) -> Tensor:
    """Reduce `[B, *positions]` to `[B]` (see `_reduce_positions`)."""
    return _reduce_positions(values.unsqueeze(-1), reduce, sequence_reduce, site, patch_tokens)[..., 0]


SELECTING = ("cls", "center")  # with `pos=N` and `tokens=N`: reductions that read one position


def _effective(reduce: str | None, sequence_reduce: str, n_positions: int) -> str | None:
    """The reduction a term applies to a map with `n_positions` position dimensions (None: no positions)."""
    if n_positions == 0:
        return None
    if reduce is None:
        return sequence_reduce if n_positions == 1 else "mean"
    return reduce


def _selects(reduce: str | None) -> bool:
    """True when `reduce` reads one position (so a unit may be read at that position alone)."""
    return reduce is not None and (reduce in SELECTING or reduce.startswith(("pos=", "tokens=")))


def start_tokens_of(model: nn.Module) -> int:
    """How many positions before a sequence proper `mean`, `sum` and `max` leave out of a `[B, T, D]` site of
    `model`: 1 for a language model (token embeddings: every dreamy prompt, corpus window and example text
    begins with the start token, whose activations no text changes), else 0.

    Example:
        >>> start_tokens_of(nn.Linear(4, 4)), start_tokens_of(nn.Sequential(nn.Embedding(10, 4)))
        (0, 0)
        >>> from dreamy.models import load
        >>> start_tokens_of(load("tiny:lm").model)
        1
    """
    embeddings = getattr(model, "get_input_embeddings", None)
    return int(callable(embeddings) and isinstance(embeddings(), nn.Embedding))


def reduce_features(values: Tensor, reduce: str, start_tokens: int = 0) -> Tensor:
    """`[B, *positions, D]` features-last values -> `[B, D]` by `reduce`, as a target's reduction reads them
    (the one rule the targets and `dreamy.directions` share): `mean`, `sum` and `max` over a token sequence
    `[B, T, D]` leave out its first `start_tokens` positions (a language model's start token), `pos=N` indexes
    every position. `[B, D]` passes unchanged.

    Example:
        >>> values = torch.arange(12.0).view(1, 3, 4)
        >>> reduce_features(values, "mean", start_tokens=1).tolist(), reduce_features(values, "pos=0").tolist()
        ([[6.0, 7.0, 8.0, 9.0]], [[0.0, 1.0, 2.0, 3.0]])
    """
    return _reduce_positions(values, reduce, reduce, Site("values"), start_tokens=start_tokens)


def _reduce_positions(values: Tensor, reduce: str | None, sequence_reduce: str, site: Site,
                      patch_tokens: int | None = None, start_tokens: int = 0) -> Tensor:
    """Reduce `[B, *positions, C]` to `[B, C]`, every column alike (`[B, C]` is returned as it is).

    With `patch_tokens` (a vision transformer's patch count), a `[B, T, C]` token map with T > patch_tokens
    holds T - patch_tokens prefix tokens (class, registers) first: `mean`/`max`/`sum` (and the default)
    read only the patch tokens, `tokens=i` is patch token i, `cls` is token 0; `pos=N` indexes all T.
    With `start_tokens` (a language model's start token, see `start_tokens_of`), `mean`/`max`/`sum` of a
    `[B, T, C]` map with T > start_tokens leave its first `start_tokens` positions out alike.

    Example:
        >>> _reduce_positions(torch.arange(12.0).reshape(1, 3, 4), "pos=-1", "mean", Site("x")).tolist()
        [[8.0, 9.0, 10.0, 11.0]]
    """
    reduce = _effective(reduce, sequence_reduce, values.ndim - 2)
    if reduce is None:
        return values
    positions = tuple(values.shape[1:-1])
    if reduce == "cls" or reduce.startswith("tokens="):
        if len(positions) != 1:
            raise TargetError(f"reduction {reduce} reads a token site [B, tokens, D]; site '{site}' has positions "
                              f"{positions}; use mean, max or center")
    prefix = values.shape[1] - patch_tokens if len(positions) == 1 and patch_tokens and values.shape[1] > patch_tokens else 0
    if not prefix and start_tokens and len(positions) == 1 and values.shape[1] > start_tokens:
        prefix = start_tokens
    if reduce == "cls":
        if patch_tokens is not None and prefix == 0:
            raise TargetError(f"site '{site}' has no class token: its {values.shape[1]} tokens are all patch tokens; "
                              "use mean or tokens=N")
        return values[:, 0]
    if reduce.startswith("tokens="):
        index, patches = int(reduce[7:]), values[:, prefix:]
        if not -patches.shape[1] <= index < patches.shape[1]:
            raise TargetError(f"reduction {reduce} out of range for site '{site}' with {patches.shape[1]} patch tokens")
        return patches[:, index]
    if reduce in ("mean", "sum", "max"):
        values = values[:, prefix:]
    flat = values.flatten(1, -2)
    if reduce == "mean":
        return flat.mean(dim=1)
    if reduce == "sum":
        return flat.sum(dim=1)
    if reduce == "max":
        return flat.max(dim=1).values
    if reduce == "center":
        index = tuple(size // 2 for size in positions)
        return values[(slice(None),) + index]
    if reduce.startswith("pos="):
        pos = int(reduce[4:])
        if not -flat.shape[1] <= pos < flat.shape[1]:
            raise TargetError(f"reduction pos={pos} out of range for site '{site}' with {flat.shape[1]} positions")
        return flat[:, pos]
    raise TargetError(f"unknown reduction '{reduce}'")


def fixed_position_error(target: "str | Target", fixed: int, length: int, sequence_reduce: str = "pos=-1") -> str | None:
    """Why `target` scores every prompt the same (None when it does not): a term reads one position among the
    first `fixed` of a `length`-position sequence (a prompt search's start token and prefix, which no prompt
    changes in a causal model: `/cls`, `/pos=0`, the query position of an attention-pattern entry).

    Example:
        >>> fixed_position_error("logits:5/pos=-1", 1, 6) is None
        True
        >>> fixed_position_error("logits:5/cls", 1, 6)
        "target 'logits:5/cls' reads position 0 (cls), the start token, which no prompt changes, so every prompt would score the same; read a position in or after the searched span (positions 1..5), e.g. /pos=-1 or /mean"
    """
    target = parse(target)
    for term in target.terms:
        reduce = term.reduce or sequence_reduce
        position = None
        if reduce == "cls":
            position = 0
        elif reduce == "center":
            position = length // 2
        elif reduce.startswith("pos="):
            position = int(reduce[4:]) % length if -length <= int(reduce[4:]) < length else None
        if position is not None and position < fixed:
            where = "the start token" if position == 0 else f"a position of the prefix (0..{fixed - 1})"
            return (f"target '{target}' reads position {position} ({reduce}), {where}, which no prompt changes, so every "
                    f"prompt would score the same; read a position in or after the searched span (positions "
                    f"{fixed}..{length - 1}), e.g. /pos=-1 or /mean")
    return None


class _Combination:
    """Targets as weighted sums of columns: `apply([..., n_columns]) -> [..., n_targets]`, where target j is
    `sum_k coefs[j][k] * values[..., columns[j][k]]`. One gather per term slot (a target's first term, second, ...),
    not one operation per target; index and coefficient tensors are placed on a device once."""

    def __init__(self, columns: Sequence[Sequence[int]], coefs: Sequence[Sequence[float]], n_columns: int) -> None:
        first = [c[0] for c in columns]
        self.identity = first == list(range(n_columns)) and all(len(c) == 1 for c in columns)
        self.unit_coefs = all(k == 1.0 for row in coefs for k in row[:1])
        self._slots: list[tuple[list[int] | None, list[int], list[float]]] = [(None, first, [row[0] for row in coefs])]
        for k in range(1, max(len(c) for c in columns)):
            rows = [j for j, c in enumerate(columns) if len(c) > k]
            self._slots.append((rows, [columns[j][k] for j in rows], [coefs[j][k] for j in rows]))
        self._placed: dict[tuple, list[tuple[Tensor | None, Tensor, Tensor]]] = {}

    def _on(self, values: Tensor) -> list[tuple[Tensor | None, Tensor, Tensor]]:
        key = (values.device, values.dtype)
        if key not in self._placed:
            with torch.inference_mode(False):  # normal tensors: gradient passes may save them for backward
                self._placed[key] = [(None if rows is None else torch.tensor(rows, device=values.device),
                                      torch.tensor(columns, device=values.device),
                                      torch.tensor(coefs, dtype=values.dtype, device=values.device))
                                     for rows, columns, coefs in self._slots]
        return self._placed[key]

    def apply(self, values: Tensor) -> Tensor:
        slots = self._on(values)
        _, columns, coefs = slots[0]
        total = values if self.identity else values.index_select(-1, columns)
        if not self.unit_coefs:
            total = total * coefs
        for rows, columns, coefs in slots[1:]:
            total = total.index_add(-1, rows, values.index_select(-1, columns) * coefs)
        return total


class _Scorer:
    """Targets with their units resolved; turns captured activations into scores.

    The units of one site are read together (`dreamy.targets.units.group_units`): each group once per call for
    every target that reads it (neurons by one gather, directions by one matmul, an SAE by one encode), then
    reduced once per distinct reduction; targets combine their terms by one gather per term slot. Every loop at
    call time runs over sites, groups and reductions, never over targets.
    """

    def __init__(self, targets: Sequence[Target], sequence_reduce: str, patch_tokens: int | None = None,
                 info: dict[str, SiteInfo] | None = None, start_tokens: int = 0) -> None:
        self.targets = list(targets)
        self.sequence_reduce = sequence_reduce
        self.patch_tokens = patch_tokens
        self.start_tokens = start_tokens
        self.info = info or {}  # what the model says about each site (per-head layout, ...), by site string
        terms = [term for target in self.targets for term in target.terms]
        self.sites: list[Site] = list(dict.fromkeys(term.site for term in terms))
        # per site: its unit groups; a (site, unit) pair is column `column` of group `g` of that site
        self.groups: dict[Site, list[UnitGroup]] = {}
        where: dict[tuple[Site, Any], tuple[int, int]] = {}
        for site in self.sites:
            self.groups[site] = group_units([term.unit for term in terms if term.site == site])
            for g, group in enumerate(self.groups[site]):
                where.update({(site, unit): (g, column) for column, unit in enumerate(group.units)})
        self._where = where
        # readings (site, unit, reduce), contiguous per (site, group, reduce) block; blocks[site][g]: (reduce, columns)
        reads = list(dict.fromkeys((term.site, term.unit, term.reduce) for term in terms))
        self.blocks: dict[Site, list[list[tuple[str | None, list[int]]]]] = {site: [[] for _ in self.groups[site]] for site in self.sites}
        order: dict[tuple, int] = {}
        for site in self.sites:
            for g, group in enumerate(self.groups[site]):
                reduces = list(dict.fromkeys(r for s, u, r in reads if s == site and where[(s, u)][0] == g))
                for reduce in reduces:
                    members = [(s, u, r) for s, u, r in reads if s == site and r == reduce and where[(s, u)][0] == g]
                    self.blocks[site][g].append((reduce, [where[(s, u)][1] for s, u, _ in members]))
                    order.update({read: len(order) + i for i, read in enumerate(members)})
        self._block_columns: dict[tuple[Site, int, int], Tensor] = {}
        self.n_readings = len(order)
        term_columns = [[order[(t.site, t.unit, t.reduce)] for t in target.terms] for target in self.targets]
        coefs = [[t.coef for t in target.terms] for target in self.targets]
        self._combination = _Combination(term_columns, coefs, self.n_readings)
        self._term_order = torch.tensor([c for row in term_columns for c in row], dtype=torch.long)
        self._term_sizes = [len(row) for row in term_columns]
        self._placed: dict[Any, Tensor] = {}
        # maps: each (site, unit) once; a target's terms are map columns of the sites' groups laid side by side
        self._map_offsets = {site: [0] for site in self.sites}
        for site in self.sites:
            for group in self.groups[site][:-1]:
                self._map_offsets[site].append(self._map_offsets[site][-1] + len(group.units))
        self._map_plans: dict[tuple, Any] = {}

    @staticmethod
    def activation(term: Term, activations: dict[str, Tensor]) -> Tensor:
        """The site's captured tensor; `TargetError` for one no target can score (integers, e.g. token ids)."""
        return _Scorer._activation(term.site, activations)

    @staticmethod
    def _activation(site: Site, activations: dict[str, Tensor]) -> Tensor:
        activation = activations[str(site)]
        if not (activation.is_floating_point() or activation.is_complex()):
            raise TargetError(f"site '{site}' gives {str(activation.dtype).removeprefix('torch.')} values (token "
                              "ids?), not activations a target can score; pick a float site, e.g. a module's output "
                              "instead of its @in")
        return activation

    def _columns(self, site: Site, g: int, b: int, device: torch.device) -> Tensor:
        key = (site, g, b, device)
        if key not in self._block_columns:
            with torch.inference_mode(False):
                self._block_columns[key] = torch.tensor(self.blocks[site][g][b][1], dtype=torch.long, device=device)
        return self._block_columns[key]

    def readings(self, activations: dict[str, Tensor]) -> Tensor:
        """Every distinct (site, unit, reduction) reduced, `[B, n_readings]`, in block order."""
        out: list[Tensor] = []
        for site in self.sites:
            features = features_last(self._activation(site, activations))
            info, name = self.info.get(str(site)), str(site)
            full = None
            for g, group in enumerate(self.groups[site]):
                blocks = self.blocks[site][g]
                reduce = _effective(blocks[0][0], self.sequence_reduce, features.ndim - 2)
                if len(blocks) == 1 and _selects(reduce):
                    # one position read: read the units there alone (a `logprobs` site: its log-softmax there)
                    one = _reduce_positions(features, reduce, self.sequence_reduce, site, self.patch_tokens, self.start_tokens)
                    values = group.project(one.log_softmax(dim=-1) if site.is_logprobs else one, name, info)
                    out.append(self._pick(values, site, g, 0, len(group.units)))
                    continue
                if full is None:
                    full = features.log_softmax(dim=-1) if site.is_logprobs else features
                mapped = group.project(full, name, info)
                for b, (reduce, _) in enumerate(blocks):
                    picked = self._pick(mapped, site, g, b, len(group.units))
                    out.append(_reduce_positions(picked, reduce, self.sequence_reduce, site, self.patch_tokens, self.start_tokens))
        return out[0] if len(out) == 1 else torch.cat(out, dim=-1)

    def _pick(self, values: Tensor, site: Site, g: int, b: int, width: int) -> Tensor:
        """Block b's columns of group g's values (all of them, in order: the values themselves)."""
        columns = self.blocks[site][g][b][1]
        if len(columns) == width and columns == list(range(width)):
            return values
        return values.index_select(-1, self._columns(site, g, b, values.device))

    def score(self, activations: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        readings = self.readings(activations)
        scores = self._combination.apply(readings)
        key = ("terms", readings.device)
        if key not in self._placed:
            with torch.inference_mode(False):  # a copy: `.to` of a tensor made under inference_mode returns it as is
                self._placed[key] = self._term_order.to(readings.device, copy=True)
        in_order = readings.index_select(1, self._placed[key])
        return scores, list(in_order.split(self._term_sizes, dim=1))

    def _group_maps(self, activations: dict[str, Tensor]) -> dict[Site, Tensor]:
        """Per site, every unit's per-position map side by side, `[B, *positions, n_units]`."""
        maps = {}
        for site in self.sites:
            features = features_last(self._activation(site, activations))
            if site.is_logprobs:
                features = features.log_softmax(dim=-1)
            info, name = self.info.get(str(site)), str(site)
            parts = [group.project(features, name, info) for group in self.groups[site]]
            maps[site] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return maps

    def _map_plan(self, shapes: dict[Site, tuple[int, ...]]) -> list[tuple[list[Site], list[int], _Combination]]:
        """Buckets of sites with one position shape: their sites, the targets read off them, and how to combine."""
        key = tuple(shapes[site] for site in self.sites)
        if key in self._map_plans:
            return self._map_plans[key]
        buckets: dict[tuple[int, ...], list[Site]] = {}
        for site in self.sites:
            buckets.setdefault(shapes[site], []).append(site)
        plan = []
        for shape, sites in buckets.items():
            offset, start = 0, {}
            for site in sites:
                start[site] = offset
                offset += sum(len(group.units) for group in self.groups[site])
            columns, coefs, members = [], [], []
            for j, target in enumerate(self.targets):
                inside = [t for t in target.terms if shapes[t.site] == shape]
                if not inside:
                    continue
                if len(inside) != len(target.terms):
                    other = next(shapes[t.site] for t in target.terms if shapes[t.site] != shape)
                    raise TargetError(f"terms of '{target}' have different position shapes {shape} and {other}")
                members.append(j)
                columns.append([start[t.site] + self._map_column(t) for t in target.terms])
                coefs.append([t.coef for t in target.terms])
            plan.append((sites, members, _Combination(columns, coefs, offset)))
        self._map_plans[key] = plan
        return plan

    def _map_column(self, term: Term) -> int:
        g, column = self._where[(term.site, term.unit)]
        return self._map_offsets[term.site][g] + column

    def _bucket_maps(self, activations: dict[str, Tensor]) -> list[tuple[list[int], Tensor]]:
        maps = self._group_maps(activations)
        plan = self._map_plan({site: tuple(value.shape[:-1]) for site, value in maps.items()})
        out = []
        for sites, members, combination in plan:
            side = maps[sites[0]] if len(sites) == 1 else torch.cat([maps[site] for site in sites], dim=-1)
            out.append((members, combination.apply(side)))
        return out

    def maps(self, activations: dict[str, Tensor]) -> list[Tensor]:
        result: list[Tensor] = [None] * len(self.targets)  # type: ignore[list-item]
        for members, stacked in self._bucket_maps(activations):
            for j, one in zip(members, stacked.unbind(dim=-1)):
                result[j] = one
        return result

    def stacked_maps(self, activations: dict[str, Tensor]) -> Tensor:
        buckets = self._bucket_maps(activations)
        if len(buckets) != 1:
            shapes = [tuple(stacked.shape[1:-1]) for _, stacked in buckets]
            raise TargetError(f"targets read sites with different position shapes {shapes}; stack the maps of targets "
                              "of one shape (several probes) or use Probe.maps")
        return buckets[0][1]


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """Find the module at dotted `path`, or raise `TargetError` naming the closest paths.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> type(resolve_module(net, "0")).__name__
        'Linear'
    """
    modules = dict(model.named_modules())
    if path in modules and path != "":
        return modules[path]
    names = [name for name in modules if name]
    close = difflib.get_close_matches(path, names, n=3, cutoff=0.5)
    suggestion = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise TargetError(f"unknown site '{path}'{suggestion} {SITES_HINT}")


class Probe:
    """Scores targets on a model's activations; see the module docstring.

    `sequence_reduce` is the default reduction for `[B, T, D]` activations (`"mean"`; the language
    side uses `"pos=-1"`, the activation at the last token). `patch_tokens`: a vision transformer's
    number of patch tokens; `[B, T, D]` sites with more tokens than that hold prefix tokens (class,
    registers) first, which `mean`, `max`, `sum` and `tokens=i` skip and `cls` reads (see `_reduce`). On a
    language model `mean`, `max` and `sum` leave out the start token (`start_tokens_of`, `reduce_features`).

    Threads: a call's hooks act only on forwards run by the thread that made the call, so several threads may
    probe one model at once (each call captures, and stops early, only its own forward). A forward that runs
    the hooked modules in other threads (e.g. `nn.DataParallel`) is therefore not seen: probe its module instead.
    """

    def __init__(self, model: nn.Module, targets: Sequence["str | Target"], *, sequence_reduce: str = "mean",
                 patch_tokens: int | None = None) -> None:
        if isinstance(targets, (str, Target)):
            targets = [targets]
        self.model = model
        self.targets = [complete_sites(t) for t in targets]  # `sae=DIR#i` without a site: the SAE's own
        if not self.targets:
            raise TargetError("a probe needs at least one target")
        self.sequence_reduce = sequence_reduce
        _reduce(torch.zeros(1, 2), sequence_reduce, sequence_reduce, Site("check"))  # validate early
        self.sites: list[Site] = list(dict.fromkeys(site for t in self.targets for site in t.sites))
        self.readings = {site: reading(model, site) for site in self.sites}  # TransformerLens names -> modules
        self.modules: dict[Site, nn.Module] = {
            site: (model if site.is_logits else resolve_module(model, self.readings[site].site.path)) for site in self.sites
        }
        self.reads_logits = any(site.is_logits for site in self.sites)
        self._scorer = _Scorer(self.targets, sequence_reduce, patch_tokens,
                               {str(site): r.info for site, r in self.readings.items()}, start_tokens_of(model))

    def __repr__(self) -> str:
        return f"Probe({[str(t) for t in self.targets]})"

    def _register(self, captured: dict[str, Tensor], stop_early: bool, handles: list[Any]) -> None:
        """Hook every site, appending each handle to `handles` as soon as it exists (so a caller's `finally`
        removes every hook even if registration itself is interrupted)."""
        remaining = set(self.sites)
        caller = threading.get_ident()

        def make_hook(site: Site):
            where = self.readings[site]

            def on_fire(value: Any) -> None:
                if threading.get_ident() != caller:
                    return  # another thread's forward of the same model: not this call's (see `Probe`)
                key = str(site)
                if key in captured:
                    return  # a module called twice keeps its first activation
                captured[key] = where.finish(_output_tensor(value, where.site))  # `logprobs` keeps the logits; see _Scorer
                remaining.discard(site)
                if stop_early and not remaining:
                    raise _StopForward()

            if where.site.input:
                def pre_hook(module, args, kwargs):
                    on_fire(args if args else tuple(kwargs.values()))
                return pre_hook

            def hook(module, args, output):
                on_fire(output)
            return hook

        for site, module in self.modules.items():
            if self.readings[site].prepare is not None:
                handles.append(self.readings[site].prepare())
            if self.readings[site].site.input:
                handles.append(module.register_forward_pre_hook(make_hook(site), with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(make_hook(site)))

    def __call__(
        self,
        *args: Any,
        row_targets: "Sequence[int] | Tensor | None" = None,
        need_output: bool = False,
        keep_activations: bool = False,
        **kwargs: Any,
    ) -> ProbeResult:
        """Run `model(*args, **kwargs)` and score every target; see `ProbeResult`."""
        captured: dict[str, Tensor] = {}
        stop_early = not (need_output or self.reads_logits)
        output = None
        handles: list[Any] = []
        try:  # registration inside: a Ctrl-C or SIGTERM while hooking must not leave hooks on the model
            self._register(captured, stop_early, handles)
            output = self.model(*args, **kwargs)
        except _StopForward:
            output = None
        finally:
            for handle in handles:
                handle.remove()
        if not need_output:
            output = None
        missing = [str(site) for site in self.sites if str(site) not in captured]
        if missing:
            raise TargetError(f"sites {missing} never ran in this forward pass; is the module used by the model's forward? {SITES_HINT}")
        scores, terms = self._scorer.score(captured)
        row_scores = None
        if row_targets is not None:
            index = torch.as_tensor(row_targets, dtype=torch.long, device=scores.device)
            if index.shape != (scores.shape[0],):
                raise TargetError(f"row_targets has shape {tuple(index.shape)}; expected one target index per row ({scores.shape[0]},)")
            if index.min() < 0 or index.max() >= len(self.targets):
                raise TargetError(f"row_targets values must be in 0..{len(self.targets) - 1}")
            row_scores = scores.gather(1, index[:, None]).squeeze(1)
        return ProbeResult(scores, terms, row_scores, output, captured if keep_activations else None)

    def maps(self, activations: dict[str, Tensor]) -> list[Tensor]:
        """Per-position score maps (`[B, *positions]`) of each target from kept activations."""
        return self._scorer.maps(activations)

    def stacked_maps(self, activations: dict[str, Tensor]) -> Tensor:
        """Every target's per-position score map as one tensor, `[B, *positions, n_targets]` (column j: target j,
        equal to `maps(activations)[j]`), from kept activations; the units of one site are read together (one
        gather, matmul or SAE encode for all of them). `TargetError` when the targets' sites have different
        position shapes (use `maps`).

        Example:
            >>> net = nn.Sequential(nn.Linear(4, 6))
            >>> probe = Probe(net, ["0:1", "0:4", "2*0:1-0:0"])
            >>> kept = probe(torch.randn(2, 5, 4), keep_activations=True).activations
            >>> tuple(probe.stacked_maps(kept).shape)
            (2, 5, 3)
        """
        return self._scorer.stacked_maps(activations)

    def refuse_fixed_positions(self, fixed: int, length: int) -> None:
        """Raise `TargetError` (one line) for the first target that reads only positions no prompt changes: one of
        the first `fixed` (start token and prefix) of a prompt of `length` positions (see `fixed_position_error`).

        Example:
            >>> Probe(nn.Linear(4, 4), ["logits:1/pos=0"], sequence_reduce="pos=-1").refuse_fixed_positions(1, 5)
            Traceback (most recent call last):
            ...
            dreamy.targets.errors.TargetError: target 'logits:1/pos=0' reads position 0 (pos=0), the start token, which no prompt changes, so every prompt would score the same; read a position in or after the searched span (positions 1..4), e.g. /pos=-1 or /mean
        """
        for target in self.targets:
            error = fixed_position_error(target, fixed, length, self.sequence_reduce)
            if error is not None:
                raise TargetError(error)

    def reads_last_position_only(self, j: int | None = None) -> bool:
        """True when target `j` (every target when `None`) reads a sequence only at its last position
        (`pos=-1`, given or the probe's default), so earlier positions' outputs are never needed (an attention
        pattern's key position is an earlier one).

        Example:
            >>> probe = Probe(nn.Linear(4, 4), ["logits:1", "logits:2/mean"], sequence_reduce="pos=-1")
            >>> probe.reads_last_position_only(0), probe.reads_last_position_only()
            (True, False)
        """
        targets = self.targets if j is None else [self.targets[j]]
        # an attention-pattern entry (`head=H,key=J`) also reads every key before the query: not last-position only
        return all((term.reduce or self.sequence_reduce) == "pos=-1" and not (isinstance(term.unit, Head) and term.unit.key is not None)
                   for target in targets for term in target.terms)  # a direction's `key` is a file entry, not a position


def score_map(target: "str | Target", activations: dict[str, Tensor]) -> Tensor:
    """The unreduced per-position score of `target` (`[B, *positions]`, e.g. `[B, T]` or `[B, H, W]`).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
        >>> result = Probe(net, ["0:1"])(torch.randn(1, 3, 8, 8), keep_activations=True)
        >>> tuple(score_map("0:1", result.activations).shape)
        (1, 6, 6)
    """
    return _Scorer([parse(target)], "mean").maps(activations)[0]


def capture_raw(model: nn.Module, sites: Sequence[Site], args: tuple, kwargs: dict) -> tuple[dict[Site, Any], Any]:
    """Run `model(*args, **kwargs)` once without gradients, in eval mode (`core.frozen`: the model's modes are
    restored afterwards), and keep the raw output (or input, for `@in` sites) of each site's module, the first
    time it runs; return them with the model's output. Hooks are removed even if the forward raises.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        >>> raw, out = capture_raw(net, [Site("0"), Site("1", input=True)], (torch.zeros(2, 4),), {})
        >>> tuple(raw[Site("0")].shape), type(raw[Site("1", input=True)]).__name__
        ((2, 3), 'tuple')
    """
    raw: dict[Site, Any] = {}
    handles = []
    caller = threading.get_ident()
    try:  # registration inside, as in `Probe.__call__`
        for site in sites:
            module = resolve_module(model, site.path)
            if site.input:
                def pre_hook(module, hook_args, hook_kwargs, site=site):
                    if threading.get_ident() == caller:  # this call's forward only, as in `Probe`
                        raw.setdefault(site, hook_args if hook_args else tuple(hook_kwargs.values()))
                handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            else:
                def hook(module, hook_args, output, site=site):
                    if threading.get_ident() == caller:
                        raw.setdefault(site, output)
                handles.append(module.register_forward_hook(hook))
        with torch.no_grad(), frozen(model):
            output = model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return raw, output


def list_sites(model: nn.Module, *args: Any, **kwargs: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Run `model(*args, **kwargs)` once and list every module path with its output shape.

    Modules whose output is not a tensor (or tuple starting with one) are listed with shape `()`;
    the model's output is listed last as the pseudo-sites `logits` and `logprobs` (its log-softmax).
    Hooks are removed even if the forward raises.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        >>> list_sites(net, torch.zeros(2, 4))
        [('0', (2, 3)), ('1', (2, 3)), ('logits', (2, 3)), ('logprobs', (2, 3))]
    """
    sites = [Site(name) for name, _ in model.named_modules() if name]
    raw, output = capture_raw(model, sites, args, kwargs)
    shapes: dict[str, tuple[int, ...]] = {}
    for site, value in raw.items():
        try:
            shapes[site.path] = tuple(_output_tensor(value, site).shape)
        except TargetError:
            shapes[site.path] = ()
    order = [name for name, _ in model.named_modules() if name in shapes]
    listed = [(name, shapes[name]) for name in order]
    try:
        shape = tuple(_output_tensor(output, Site("logits")).shape)
        listed += [("logits", shape), ("logprobs", shape)]
    except TargetError:
        pass
    return listed
