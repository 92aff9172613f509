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
from dreamy.targets.units import ResolvedUnit, load_unit

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
    """Reduce `[B, *positions]` to `[B]`.

    With `patch_tokens` (a vision transformer's patch count), a `[B, T]` token map with T > patch_tokens
    holds T - patch_tokens prefix tokens (class, registers) first: `mean`/`max`/`sum` (and the default)
    read only the patch tokens, `tokens=i` is patch token i, `cls` is token 0; `pos=N` indexes all T.
    """
    if values.ndim == 1:
        return values
    if reduce is None:
        reduce = sequence_reduce if values.ndim == 2 else "mean"
    if reduce == "cls" or reduce.startswith("tokens="):
        if values.ndim != 2:
            raise TargetError(f"reduction {reduce} reads a token site [B, tokens, D]; site '{site}' has positions "
                              f"{tuple(values.shape[1:])}; use mean, max or center")
    prefix = values.shape[1] - patch_tokens if values.ndim == 2 and patch_tokens and values.shape[1] > patch_tokens else 0
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
    flat = values.flatten(1)
    if reduce == "mean":
        return flat.mean(dim=1)
    if reduce == "sum":
        return flat.sum(dim=1)
    if reduce == "max":
        return flat.max(dim=1).values
    if reduce == "center":
        index = tuple(size // 2 for size in values.shape[1:])
        return values[(slice(None),) + index]
    if reduce.startswith("pos="):
        pos = int(reduce[4:])
        if not -flat.shape[1] <= pos < flat.shape[1]:
            raise TargetError(f"reduction pos={pos} out of range for site '{site}' with {flat.shape[1]} positions")
        return flat[:, pos]
    raise TargetError(f"unknown reduction '{reduce}'")


class _Scorer:
    """Targets with their units resolved; turns captured activations into scores."""

    def __init__(self, targets: Sequence[Target], sequence_reduce: str, patch_tokens: int | None = None,
                 info: dict[str, SiteInfo] | None = None) -> None:
        self.targets = list(targets)
        self.sequence_reduce = sequence_reduce
        self.patch_tokens = patch_tokens
        self.info = info or {}  # what the model says about each site (per-head layout, ...), by site string
        self.units: dict[Term, ResolvedUnit] = {}
        self._coef_cache: dict[tuple, Tensor] = {}
        for target in self.targets:
            for term in target.terms:
                if term not in self.units:
                    self.units[term] = load_unit(term.unit)

    @staticmethod
    def activation(term: Term, activations: dict[str, Tensor]) -> Tensor:
        """The site's captured tensor; `TargetError` for one no target can score (integers, e.g. token ids)."""
        activation = activations[str(term.site)]
        if not (activation.is_floating_point() or activation.is_complex()):
            raise TargetError(f"site '{term.site}' gives {str(activation.dtype).removeprefix('torch.')} values (token "
                              "ids?), not activations a target can score; pick a float site, e.g. a module's output "
                              "instead of its @in")
        return activation

    def term_map(self, term: Term, activations: dict[str, Tensor]) -> Tensor:
        activation = self.activation(term, activations)
        if term.site.is_logprobs:
            activation = activation.log_softmax(dim=-1)
        return self.units[term].project(features_last(activation), str(term.site), self.info.get(str(term.site)))

    def reduced_term(self, term: Term, activations: dict[str, Tensor]) -> Tensor:
        """`term` reduced to `[B]`. A `logprobs` term read at one position of a sequence is sliced before the
        log-softmax, which then costs one position instead of the whole `[B, T, vocab]` output."""
        reduce = term.reduce or self.sequence_reduce
        activation = self.activation(term, activations)
        if term.site.is_logprobs and activation.ndim == 3 and reduce.startswith("pos="):
            pos = int(reduce[4:])
            if not -activation.shape[1] <= pos < activation.shape[1]:
                raise TargetError(f"reduction pos={pos} out of range for site '{term.site}' with {activation.shape[1]} positions")
            one = activation[:, pos].log_softmax(dim=-1)
            return self.units[term].project(one, str(term.site), self.info.get(str(term.site)))
        return _reduce(self.term_map(term, activations), term.reduce, self.sequence_reduce, term.site, self.patch_tokens)

    def score(self, activations: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        cache: dict[Term, Tensor] = {}
        per_target: list[Tensor] = []
        for target in self.targets:
            values = []
            for term in target.terms:
                if term not in cache:
                    cache[term] = self.reduced_term(term, activations)
                values.append(cache[term])
            per_target.append(torch.stack(values, dim=1))
        scores = torch.stack([(values * self._coefs(j, values)).sum(dim=1) for j, values in enumerate(per_target)], dim=1)
        return scores, per_target

    def _coefs(self, j: int, values: Tensor) -> Tensor:
        """Target j's term coefficients on `values`' device and dtype, made once (a host-to-device copy per call
        would also break CUDA-graph capture)."""
        key = (j, values.dtype, values.device)
        if key not in self._coef_cache:
            with torch.inference_mode(False):  # a normal tensor: gradient passes may save it for backward
                self._coef_cache[key] = torch.tensor([t.coef for t in self.targets[j].terms], dtype=values.dtype,
                                                     device=values.device)
        return self._coef_cache[key]

    def maps(self, activations: dict[str, Tensor]) -> list[Tensor]:
        result = []
        for target in self.targets:
            total = None
            for term in target.terms:
                mapped = term.coef * self.term_map(term, activations)
                if total is not None and total.shape != mapped.shape:
                    raise TargetError(f"terms of '{target}' have different position shapes {tuple(total.shape)} and {tuple(mapped.shape)}")
                total = mapped if total is None else total + mapped
            result.append(total)
        return result


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
    registers) first, which `mean`, `max`, `sum` and `tokens=i` skip and `cls` reads (see `_reduce`).

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
                               {str(site): r.info for site, r in self.readings.items()})

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
        return all((term.reduce or self.sequence_reduce) == "pos=-1" and getattr(term.unit, "key", None) is None
                   for target in targets for term in target.terms)


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
