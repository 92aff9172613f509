"""Check targets against a model before any optimization: one forward pass on an example input.

Every error that can be known up front is found here, so a run never starts (or records a failure
hours later) for a target that cannot be scored: an unknown site, a unit out of range, a direction
file that is unreadable, of the wrong size or not finite, an SAE that does not fit the site, terms
whose shapes do not combine. Targets that differ only in a neuron or SAE feature index are scored once,
so a range of 100,000 units costs one forward and one cheap index check each, and every feature of an SAE
one read of its file.

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    >>> [spec for spec, error in check_targets(net, ["0:3", "0:8", "2:1"], torch.zeros(2, 3, 8, 8))]
    ['0:8', '2:1']
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from dreamy.targets.dialects import Reading, complete_sites, reading
from dreamy.targets.errors import TargetError
from dreamy.targets.probe import (_output_tensor, _Scorer, capture_raw, features_last, fixed_position_error, resolve_module,
                                  start_tokens_of)
from dreamy.targets.spec import Site, Target
from dreamy.targets.units import Neuron, SAEFeature, _sae_weights, sae_reads_shared


def _site_tensors(model: nn.Module, targets: Sequence[Target], args: tuple, kwargs: dict
                  ) -> tuple[dict[str, Tensor], dict[Site, str], dict[Site, Reading]]:
    """The activation of every site the targets name (by site string), an error for each site that has none, and
    how each site is read (TransformerLens names on Hugging Face modules, see `dreamy.targets.dialects`)."""
    sites = list(dict.fromkeys(site for target in targets for site in target.sites))
    errors: dict[Site, str] = {}
    readings: dict[Site, Reading] = {}
    for site in sites:
        if site.is_logits:
            continue
        try:
            readings[site] = reading(model, site)
            resolve_module(model, readings[site].site.path)
        except TargetError as error:
            errors[site] = str(error).splitlines()[0]
            readings.pop(site, None)
    handles = []
    try:  # what a reading needs set up around the forward (attention patterns) is undone whatever happens
        handles = [r.prepare() for r in readings.values() if r.prepare is not None]
        raw, output = capture_raw(model, list(dict.fromkeys(r.site for r in readings.values())), args, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    rows = _batch_rows(args, kwargs)
    tensors: dict[str, Tensor] = {}
    for site in sites:
        if site in errors:
            continue
        where = readings.get(site, Reading(site))
        value = output if site.is_logits else raw.get(where.site)
        if value is None and not site.is_logits:
            errors[site] = f"site '{site}' never ran in the model's forward pass; is the module used? run `dream sites MODEL`"
            continue
        try:
            tensor = where.finish(_output_tensor(value, where.site))
        except TargetError as error:
            errors[site] = str(error)
            continue
        if rows is not None and (tensor.ndim == 0 or tensor.shape[0] != rows):
            errors[site] = (f"site '{site}' gives shape {tuple(tensor.shape)}, not one row per input ({rows} inputs); "
                            "it is shared across the batch (e.g. a positional table): pick a site inside the layers")
            continue
        tensors[str(site)] = tensor
    return tensors, errors, readings


def _batch_rows(args: tuple, kwargs: dict) -> int | None:
    """The batch size of the example input: the first tensor argument's first dimension."""
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, Tensor) and value.ndim > 0:
            return value.shape[0]
    return None


def _neuron_error(target: Target, tensors: dict[str, Tensor]) -> str | None:
    for term in target.terms:
        if isinstance(term.unit, Neuron):
            size = features_last(tensors[str(term.site)]).shape[-1]
            if not 0 <= term.unit.index < size:
                return (f"unit {term.unit.index} out of range for site '{term.site}' with {size} features; "
                        f"valid units are 0..{size - 1}")
    return None


def _sae_error(target: Target) -> str | None:
    """The error of reading an SAE the target names, or of a feature index out of its range (each SAE is read
    once per `check_targets`, see `sae_reads_shared`)."""
    for term in target.terms:
        if isinstance(term.unit, SAEFeature):
            try:
                d_sae = _sae_weights(term.unit.path).d_sae
            except TargetError as error:
                return str(error).splitlines()[0]
            if not 0 <= term.unit.index < d_sae:
                return (f"SAE feature {term.unit.index} out of range for '{term.unit.path}' with {d_sae} features; "
                        f"valid 0..{d_sae - 1}")
    return None


def _unit_kind(unit: object) -> object:
    """What of a unit decides how it scores: a neuron's index and an SAE feature's index do not (checked apart)."""
    if isinstance(unit, Neuron):
        return "neuron"
    if isinstance(unit, SAEFeature):
        return ("sae", unit.path)
    return unit


def _shape_key(target: Target) -> tuple:
    """Targets with equal keys score alike up to the neuron or SAE feature index (checked apart)."""
    return tuple((term.site, term.reduce, _unit_kind(term.unit)) for term in target.terms)


def check_targets(model: nn.Module, targets: Sequence[str | Target], *args: Any, sequence_reduce: str = "mean",
                  patch_tokens: int | None = None, **kwargs: Any) -> list[tuple[str, str]]:
    """Score every target on one example forward of `model(*args, **kwargs)`; return `(spec, error)` for
    each target that cannot be scored (an empty list when all are fine), in the order given.

    The example input should have the shape the run will use (e.g. the prompt's full length, so a
    `/pos=N` reduction is checked against the real sequence) and at least two rows (a site whose
    output does not follow the batch is refused). Scores must be finite on the example. `sequence_reduce`
    and `patch_tokens` are the run's probe options (see `Probe`).
    """
    parsed: list[tuple[str, Target | None, str | None]] = []
    for spec in targets:
        try:
            parsed.append((str(spec), complete_sites(spec), None))  # `sae=DIR#i`: the site its cfg names
        except TargetError as error:
            parsed.append((str(spec), None, str(error).splitlines()[0]))
    with sae_reads_shared():  # N features of one SAE read it once
        return _check(model, parsed, args, kwargs, sequence_reduce, patch_tokens)


def _check(model: nn.Module, parsed: list[tuple[str, Target | None, str | None]], args: tuple, kwargs: dict,
           sequence_reduce: str, patch_tokens: int | None) -> list[tuple[str, str]]:
    good = [target for _, target, _ in parsed if target is not None]
    tensors, site_errors, readings = _site_tensors(model, good, args, kwargs) if good else ({}, {}, {})
    info = {str(site): r.info for site, r in readings.items()}
    shape_errors: dict[tuple, str | None] = {}
    failures = []
    for spec, target, error in parsed:
        if error is None:
            bad_sites = [site_errors[site] for site in target.sites if site in site_errors]
            error = bad_sites[0] if bad_sites else _neuron_error(target, tensors) or _sae_error(target)
        if error is None:
            key = _shape_key(target)
            if key not in shape_errors:
                shape_errors[key] = _score_error(target, tensors, sequence_reduce, patch_tokens, info, start_tokens_of(model))
            error = shape_errors[key]
        if error is not None:
            failures.append((spec, error))
    return failures


def _score_error(target: Target, tensors: dict[str, Tensor], sequence_reduce: str,
                 patch_tokens: int | None = None, info: dict | None = None, start_tokens: int = 0) -> str | None:
    try:
        scores, _ = _Scorer([target], sequence_reduce, patch_tokens, info, start_tokens).score(tensors)
    except TargetError as error:
        return str(error).splitlines()[0]
    except (RuntimeError, ValueError, IndexError) as error:  # shapes that do not combine, odd activations
        return f"target '{target}' cannot be scored on this model: {type(error).__name__}: {str(error).splitlines()[0]}"
    if not bool(torch.isfinite(scores).all()):
        return f"target '{target}' scores {scores.flatten()[0].item()} on an example input; is a direction or SAE file broken?"
    return None


def fixed_position_errors(targets: Sequence[str | Target], fixed: int, length: int,
                          sequence_reduce: str = "pos=-1") -> list[tuple[str, str]]:
    """`(spec, error)` for each target of a prompt search that would score every prompt the same: it reads one
    of the first `fixed` positions (start token, prefix) of prompts of `length` positions, which no prompt
    changes (see `probe.fixed_position_error`), in the order given.

    Example:
        >>> [spec for spec, _ in fixed_position_errors(["logits:5/cls", "logits:5/pos=0", "logits:5", "logits:5/mean"], 1, 6)]
        ['logits:5/cls', 'logits:5/pos=0']
    """
    found = [(str(spec), fixed_position_error(spec, fixed, length, sequence_reduce)) for spec in targets]
    return [(spec, error) for spec, error in found if error is not None]
